"""Where one training step's time goes: torch.profiler's table for the loop's step on a real base.

    python benchmarks/profile_train_step.py --base smollm2-135m                # bf16 autocast, 4 x 1,024 tokens
    python benchmarks/profile_train_step.py --base smollm2-135m --fp32 --top 10
    python benchmarks/profile_train_step.py --base smollm2-135m --bf16-weights   # pure bf16, no autocast

The step is the loop's own (`causal_lm_loss` under bf16 autocast, backward, fused AdamW) on random tokens;
the table lists the operators by their own CPU time, and the summary groups them into matrix products,
attention, dtype copies and the rest. It explains `bench_train.py`'s ratios (what a faster matmul cannot
speed up); it is not itself a speed measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GROUPS = {  # operator name fragments -> group
    "matrix products": ("aten::mm", "aten::bmm", "aten::addmm"),
    "attention": ("scaled_dot_product",),
    "dtype copies": ("aten::copy_", "aten::_to_copy"),
    "optimizer": ("adamw",),
}


def profile_step(base: str, *, batch: int, seq_len: int, bf16: bool, threads: int | None, bf16_weights: bool = False):
    import torch
    from torch.profiler import ProfilerActivity, profile

    from codellama.bases import resolve_base
    from codellama.checkpoint import load_model
    from codellama.train.loss import causal_lm_loss

    if threads:
        torch.set_num_threads(threads)
    model = load_model(resolve_base(base))
    model.train()
    model.config.use_cache = False
    if bf16_weights:  # weights, activations and optimizer state in bf16 (torchtune's default): no casts at all
        model.to(torch.bfloat16)
        bf16 = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    tokens = torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    # as the loop does (codellama.train.loop): bf16 autocast, or nothing
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    dtype = torch.bfloat16 if bf16 or bf16_weights else torch.float32

    def step():
        loss = causal_lm_loss(model, tokens, tokens, autocast=autocast, compute_dtype=dtype) / tokens.numel()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocations, kernels chosen
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages(), seconds, tokens.numel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--base", default="smollm2-135m", help="named base or checkpoint directory")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--fp32", action="store_true", help="no autocast (the plain fp32 loop's precision)")
    parser.add_argument(
        "--bf16-weights",
        action="store_true",
        help="the model itself in bf16, no autocast (is a cast-free step faster?)",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--top", type=int, default=15, help="operators shown")
    args = parser.parse_args(argv)
    try:
        table, seconds, n = profile_step(
            args.base,
            batch=args.batch,
            seq_len=args.seq_len,
            bf16=not args.fp32,
            threads=args.threads,
            bf16_weights=args.bf16_weights,
        )
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table.table(sort_by="self_cpu_time_total", row_limit=args.top))
    total = sum(e.self_cpu_time_total for e in table)
    shares = {name: 0.0 for name in GROUPS}
    for e in table:
        group = next((g for g, keys in GROUPS.items() if any(k in e.key for k in keys)), None)
        if group:
            shares[group] += e.self_cpu_time_total
    print(f"step (unprofiled): {seconds:.2f} s, {n / seconds:,.0f} tokens/s")
    print(
        "  ".join(f"{g} {100 * t / total:.1f}%" for g, t in shares.items()),
        f"  other {100 * (1 - sum(shares.values()) / total):.1f}%",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
