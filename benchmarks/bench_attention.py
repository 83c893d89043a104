"""The generation path's attention and KV cache against transformers' own, on the same model and run.

What an editor's long prompt costs the server: one prompt chunk after a long cached prefix, and one decode
step after it. Two ways, alternated `--rounds` times in one process so a busy machine hurts both alike:

- stock: transformers' "sdpa" attention (KV heads repeated to the query heads whenever there is a mask)
  and `DynamicCache` (every append copies the whole cache);
- ours: `codellama.generation.attention` (grouped heads passed to the kernel, an additive mask) and
  `codellama.generation.kv.growing_cache` (appends written into spare room), what `HFGenerator` uses.

Printed: the best of the rounds for each, the ratio stock / ours, and the largest logit difference.

    python benchmarks/bench_attention.py                         # SmolLM2-135M, bf16, 6,144 cached tokens
    python benchmarks/bench_attention.py --cached 2048 --dtype float32
"""

from __future__ import annotations

import argparse
import time

import torch


def timed_chunk_and_steps(model, cache, ids: torch.Tensor, cached: int, chunk: int, steps: int):
    """Fill `cached` tokens untimed, then time one `chunk`-token forward and `steps` one-token forwards."""

    def forward(start: int, end: int):
        return (
            model(
                input_ids=ids[:, start:end],
                attention_mask=torch.ones(1, end, dtype=torch.long),
                position_ids=torch.arange(start, end)[None],
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            .logits[0, -1]
            .float()
        )

    with torch.inference_mode():
        for start in range(0, cached, 1024):
            forward(start, min(cached, start + 1024))
        t = time.perf_counter()
        logits = forward(cached, cached + chunk)
        prefill = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(steps):
            forward(cached + chunk + i, cached + chunk + i + 1)
        decode = (time.perf_counter() - t) / steps
    return prefill, decode, logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="checkpoint directory or named base")
    parser.add_argument("--cached", type=int, default=6144, help="tokens already in the cache")
    parser.add_argument("--chunk", type=int, default=512, help="the timed prompt chunk (the server's prefill chunk)")
    parser.add_argument("--steps", type=int, default=8, help="timed decode steps")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import DynamicCache

    from codellama.bases import resolve_base
    from codellama.checkpoint import load_model
    from codellama.generation.attention import use_grouped_attention
    from codellama.generation.kv import growing_cache

    model = load_model(resolve_base(args.model), dtype=getattr(torch, args.dtype)).eval()
    length = args.cached + args.chunk + args.steps
    ids = torch.randint(100, model.config.vocab_size - 100, (1, length), generator=torch.Generator().manual_seed(0))
    best = {"stock": [float("inf")] * 2, "ours": [float("inf")] * 2}
    logits = {}
    for _ in range(args.rounds):
        for way in best:
            if way == "stock":
                model.set_attn_implementation("sdpa")
                cache = DynamicCache(config=model.config)
            else:
                if not use_grouped_attention(model):
                    raise SystemExit("this model has no grouped KV heads on the CPU: nothing to compare")
                cache = growing_cache(model.config)
            prefill, decode, logits[way] = timed_chunk_and_steps(model, cache, ids, args.cached, args.chunk, args.steps)
            best[way] = [min(best[way][0], prefill), min(best[way][1], decode)]
    (sp, sd), (op, od) = best["stock"], best["ours"]
    print(
        f"{args.model}, {args.dtype}, {torch.get_num_threads()} threads, {args.cached:,} cached tokens, best of {args.rounds}"
    )
    print(f"  {args.chunk}-token prompt chunk: stock {sp:.3f} s, ours {op:.3f} s: {sp / op:.2f}x")
    print(f"  decode step:              stock {1e3 * sd:.1f} ms, ours {1e3 * od:.1f} ms: {sd / od:.2f}x")
    print(f"  largest logit difference (chunk's last position): {(logits['stock'] - logits['ours']).abs().max():.4f}")


if __name__ == "__main__":
    main()
