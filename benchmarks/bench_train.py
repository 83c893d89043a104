"""Training throughput and MFU of the training loop, against numbers measured in the same run.

    python benchmarks/bench_train.py                       # tiny + small on this CPU
    python benchmarks/bench_train.py --compile             # the loop with `--set compile=true`
    python benchmarks/bench_train.py --preset 1b --device cuda --steps 20 --seq-len 4096 --micro 4
    python benchmarks/bench_train.py --loss-memory 16384   # peak memory: transformers' loss vs the loop's
    python benchmarks/bench_train.py --loss-parts          # the output layer's cost per token, by part
    python benchmarks/bench_train.py --base smollm2-135m --seq-len 1024 --micro 4 --plain-fp32   # real weights

For each preset: tokens/s of `codellama.train.train` (the real loop: shards, schedule, clipping,
metrics) and of a plain reference loop (forward/backward/AdamW step over the same
LlamaForCausalLM, same batches, same autocast), printed as a ratio; and model FLOPs utilisation,
MFU = (6 N + 12 L d s) * tokens/s / (matmul rate), where N counts the weights used in matrix
products (all parameters but the input embedding, which is a lookup; the output layer is
included), the second term is attention's score and value products
(PaLM's convention), and the matmul rate is a torch matrix product measured here in the same
dtype. Runs alternate (loop, reference, loop, ...) and the best of each is kept, so a busy
machine hurts both sides alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from codellama.data.shards import ShardWriter
from codellama.io import read_jsonl
from codellama.model import build_model
from codellama.presets import get_preset
from codellama.train import resolve_config, train
from codellama.train.loop import build_optimizer
from codellama.train.precision import PRECISIONS, use_bf16


def matmul_tflops(dtype: torch.dtype, device: str, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(3):
        for _ in range(2):
            a @ b
        _sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 * reps / best / 1e12


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def flops_per_token(preset, seq_len: int) -> float:
    model = build_model(preset, device="meta")
    n = sum(p.numel() for p in model.parameters())  # a tied output layer is counted once, as the output layer
    if not preset.tie_embeddings:
        n -= model.get_input_embeddings().weight.numel()
    return 6 * n + 12 * preset.n_layers * preset.dim * seq_len


def subject(name: str) -> tuple[object, str]:
    """(shape preset, what the loop's `base` gets) for a preset name, a checkpoint directory or a named base."""
    from codellama.presets import PRESETS

    if name in PRESETS:
        return get_preset(name), name
    from codellama.bases import resolve_base
    from codellama.checkpoint import load_config
    from codellama.model import preset_from_config

    path = resolve_base(name)
    return preset_from_config(load_config(path)), str(path)


def reference_model(base: str, preset):
    """Fresh weights of the preset, or the checkpoint's own weights (fp32 masters, as the loop keeps)."""
    from codellama.presets import PRESETS

    if base in PRESETS:
        return build_model(preset, seed=0)
    from codellama.checkpoint import load_model

    return load_model(base, dtype=torch.float32)


def write_random_shards(path: Path, vocab: int, seq_len: int, n: int) -> None:
    rng = np.random.default_rng(0)
    writer = ShardWriter(path, seq_len, vocab, sequences_per_shard=4096)
    for _ in range(n):
        writer.add(rng.integers(3, vocab, seq_len))
    writer.finish()


def run_loop(base: str, shards: Path, out: Path, args) -> float:
    config = resolve_config(
        "code",
        "tiny",
        [
            f"seq_len={args.seq_len}",
            f"batch_tokens={args.seq_len * args.micro * args.accum}",
            f"micro_batch_size={args.micro}",
            f"max_steps={args.steps}",
            "checkpoint_every=0",
            f"precision={args.precision}",
            f"device={args.device}",
            "schedule.warmup_steps=2",
            f"compile={str(args.compile).lower()}",
        ],
        base=base,
        data=str(shards),
        out=str(out),
    )
    train(config, progress=False)
    records = read_jsonl(out / "metrics.jsonl")[args.warmup :]
    return sum(r["tokens"] - p["tokens"] for p, r in zip(records, records[1:])) / sum(
        r["step_time_s"] for r in records[1:]
    )


def run_reference(base: str, preset, shards_tokens: np.ndarray, args, precision: str | None = None) -> float:
    """The plainest correct loop over the same model: what the real loop must not be slower than.
    `precision` "fp32": the loop as a transformers user writes it without autocast."""
    device = torch.device(args.device)
    precision = precision or args.precision
    config = resolve_config("code", "tiny", [f"precision={precision}"])
    model = reference_model(base, preset).to(device)
    model.config.use_cache = False
    model.train()
    optimizer = build_optimizer(model, config)
    bf16 = use_bf16(precision, device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    times = []
    per_step = args.micro * args.accum
    for step in range(args.steps):
        _sync(args.device)
        t = time.perf_counter()
        batch = torch.from_numpy(shards_tokens[step * per_step : (step + 1) * per_step].astype(np.int64))
        for micro in range(args.accum):
            x = batch[micro * args.micro : (micro + 1) * args.micro].to(device)
            with autocast():
                loss = model(input_ids=x, labels=x).loss / args.accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(args.device)
        times.append(time.perf_counter() - t)
    return per_step * args.seq_len * (args.steps - args.warmup - 1) / sum(times[args.warmup + 1 :])


def bench(name: str, args) -> dict:
    preset, base = subject(name)
    bf16 = use_bf16(args.precision, torch.device(args.device))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = args.steps * args.micro * args.accum
        write_random_shards(tmp / "shards", preset.vocab_size, args.seq_len, n)
        from codellama.data.shards import TokenShards

        shards = TokenShards(tmp / "shards")
        # The loop shuffles; the reference reads in order: the same token statistics, same shapes.
        tokens = np.stack([shards[i] for i in range(len(shards))])
        loop_rates, ref_rates, fp32_rates, mm = [], [], [], []
        for r in range(args.rounds):
            mm.append(matmul_tflops(torch.bfloat16 if bf16 else torch.float32, args.device))
            loop_rates.append(run_loop(base, tmp / "shards", tmp / f"run{r}", args))
            ref_rates.append(run_reference(base, preset, tokens, args))
            if args.plain_fp32:
                fp32_rates.append(run_reference(base, preset, tokens, args, precision="fp32"))
    fpt = flops_per_token(preset, args.seq_len)
    loop, ref, peak = max(loop_rates), max(ref_rates), max(mm)
    return {
        "preset": name,
        "device": args.device,
        "precision": args.precision if args.precision == "bf16-weights" else ("bf16" if bf16 else "fp32"),
        "compile": args.compile,
        "threads": torch.get_num_threads(),
        "seq_len": args.seq_len,
        "tokens_per_step": args.seq_len * args.micro * args.accum,
        "loop_tokens_per_s": loop,
        "reference_tokens_per_s": ref,
        "loop_vs_reference": loop / ref,
        "gflop_per_token": fpt / 1e9,
        "matmul_tflops": peak,
        "mfu_loop": fpt * loop / (peak * 1e12),
        "mfu_reference": fpt * ref / (peak * 1e12),
        "plain_fp32_tokens_per_s": max(fp32_rates) if fp32_rates else None,
        "loop_vs_plain_fp32": loop / max(fp32_rates) if fp32_rates else None,
        "all_loop": loop_rates,
        "all_reference": ref_rates,
        "all_matmul": mm,
    }


def _loss_memory_child(path: str, seq_len: int, queue) -> None:
    """One forward + backward of one sequence through the tiny model; peak RSS growth in GiB."""
    import resource

    from codellama.train.loss import causal_lm_loss

    model = build_model(get_preset("tiny"), seed=0)
    model.config.use_cache = False
    x = torch.randint(3, model.config.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[:, 0] = -100
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if path == "transformers":
        with autocast():
            loss = model(input_ids=x, labels=y).loss
    else:
        loss = causal_lm_loss(model, x, y, autocast=autocast, compute_dtype=torch.bfloat16) / (seq_len - 1)
    loss.backward()
    queue.put((loss.item(), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20))


def loss_memory(seq_len: int) -> None:
    """Each loss path in a fresh process, so each peak is its own."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    for path in ("transformers", "chunked"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_loss_memory_child, args=(path, seq_len, queue))
        proc.start()
        loss, gib = queue.get()
        proc.join()
        print(f"{path:<13} loss {loss:.4f}  peak memory growth {gib:.2f} GiB  ({seq_len} tokens, tiny, bf16)")


def loss_parts(preset_name: str, tokens: int = 2048, reps: int = 5) -> None:
    """Where a token's time goes in the output layer + loss, against the budget of a 25% MFU step.

    Each part is timed alone on one chunk of `tokens` rows (bf16, the loop's shapes and buffers):
    the three output-layer matmuls, the loop's softmax pass, and a bare fp32 exp over the same
    elements (the floor of any softmax that computes each probability once).
    """
    from codellama.train.loss import BLOCK_ELEMENTS, softmax_rows_

    preset = get_preset(preset_name)
    bf16, vocab, dim = torch.bfloat16, preset.vocab_size, preset.dim
    h = torch.randn(tokens, dim, dtype=bf16)
    w = (torch.randn(vocab, dim) * dim**-0.5).to(bf16)
    w_t, h_t = w.T.contiguous(), h.T.contiguous()
    logits = h @ w_t
    scratch, out_h, fp32 = torch.empty_like(logits), torch.empty(tokens, dim, dtype=bf16), logits.float()
    block = max(1, BLOCK_ELEMENTS // vocab)

    def softmax_pass():
        scratch.copy_(logits)
        for b in range(0, tokens, block):
            softmax_rows_(scratch[b : b + block])

    def timed(fn) -> float:
        fn()
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            best = min(best, (time.perf_counter() - t) / reps)
        return best / tokens * 1e6  # us per token

    peak = matmul_tflops(bf16, "cpu")
    copy = timed(lambda: scratch.copy_(logits))
    parts = {
        "output matmul h @ W^T": timed(lambda: torch.matmul(h, w_t, out=scratch)),
        "grad hidden  G @ W": timed(lambda: torch.matmul(logits, w, out=out_h)),
        "grad weight  h^T @ G": timed(lambda: h_t @ logits),
        "softmax pass (loop's)": timed(softmax_pass) - copy,
    }
    exp_out = torch.empty_like(fp32[:block])

    def bare_exp():
        for b in range(0, tokens, block):
            rows = fp32[b : b + block]
            torch.exp(rows, out=exp_out[: len(rows)])

    exp_floor = timed(bare_exp)
    budget = flops_per_token(preset, 256) / (0.25 * peak * 1e12) * 1e6
    print(
        f"{preset_name}: dim {dim}, vocab {vocab:,}; matmul {peak:.2f} TF/s; a 25% MFU step allows "
        f"{budget:.1f} us/token for everything"
    )
    for name, us in parts.items():
        print(f"  {name:<24}{us:>7.1f} us/token")
    print(
        f"  {'= output layer + loss':<24}{sum(parts.values()):>7.1f} us/token "
        f"({sum(parts.values()) / budget:.0%} of the budget)"
    )
    print(f"  {'(bare fp32 exp, floor)':<24}{exp_floor:>7.1f} us/token")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", action="append", help="model preset(s) (default: tiny and small)")
    p.add_argument(
        "--base", action="append", default=[], help="checkpoint directory or named base (its real weights); repeatable"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="the loop's precision (bf16-weights: a bf16 twin, fp32 masters; the reference runs bf16 autocast)",
    )
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--micro", type=int, default=16, help="sequences per forward pass (tiny recipe: 16)")
    p.add_argument("--accum", type=int, default=1, help="micro-batches per step (tiny recipe: 1)")
    p.add_argument("--compile", action="store_true", help="run the loop with compile=true (the reference stays eager)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="first steps not timed")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--plain-fp32",
        action="store_true",
        help="also time the plain loop in fp32 without autocast (what a transformers user writes by default)",
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument(
        "--loss-memory",
        type=int,
        metavar="SEQ_LEN",
        help="instead: peak memory of one SEQ_LEN-token sequence, transformers' loss vs the loop's",
    )
    p.add_argument(
        "--loss-parts",
        action="store_true",
        help="instead: time the output layer's matmuls and softmax per token, against a 25%% MFU budget",
    )
    args = p.parse_args()
    if args.loss_parts:
        for name in args.preset or ["tiny", "small"]:
            loss_parts(name)
        return
    if args.loss_memory:
        loss_memory(args.loss_memory)
        return
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    names = (args.preset or []) + args.base or ["tiny", "small"]
    results = [bench(name, args) for name in names]
    print(
        f"device {args.device}, {torch.get_num_threads()} threads, loop compile={args.compile}, "
        f"{args.micro} x {args.seq_len} tokens per micro-batch, {args.accum} micro-batch(es) per step"
    )
    print(
        f"{'preset':<7}{'dtype':>6}{'loop tok/s':>12}{'ref tok/s':>11}{'loop/ref':>10}{'GFLOP/tok':>11}"
        f"{'matmul TF/s':>13}{'MFU loop':>10}{'MFU ref':>9}"
    )
    for r in results:
        print(
            f"{Path(r['preset']).name[:14]:<7}{r['precision']:>6}{r['loop_tokens_per_s']:>12,.0f}{r['reference_tokens_per_s']:>11,.0f}"
            f"{r['loop_vs_reference']:>10.2f}{r['gflop_per_token']:>11.3f}{r['matmul_tflops']:>13.2f}"
            f"{r['mfu_loop']:>10.1%}{r['mfu_reference']:>9.1%}"
        )
        if r["plain_fp32_tokens_per_s"]:
            print(
                f"  plain fp32 loop (no autocast): {r['plain_fp32_tokens_per_s']:,.0f} tok/s; "
                f"loop / plain fp32 = {r['loop_vs_plain_fp32']:.2f}x"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
