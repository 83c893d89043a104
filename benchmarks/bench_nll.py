"""Middle-NLL scoring (`evals.nll.target_nll`) against the plain loop, on the same model, rows and run.

The rows are what `codellama eval infilling --nll` scores: the true middles of the first --problems
single-line HumanEval-infilling problems after their PSM, SPM and prefix-only prompts. Two ways:

- ours: rows right-padded into batches of about --batch-tokens tokens, logits made only at the middle's
  positions (a 49k vocabulary at every position is most of the plain loop's work and memory);
- plain: one forward per row through `model(input_ids).logits`, log-softmax over every position.

Printed: prompt+middle tokens per second of each, the ratio, the largest per-token NLL difference
(batched fp arithmetic), and the mean NLL per mode, i.e. what a pipeline's budget for this score is.

    python benchmarks/bench_nll.py                      # SmolLM2-135M-Instruct, infilling tokens added
    python benchmarks/bench_nll.py --model runs/family/code/final --dtype bfloat16 --problems 50
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def plain_nll(model, rows) -> list[list[float]]:
    out = []
    with torch.no_grad():
        for context, target in rows:
            ids = torch.tensor([context + target])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            out.append([-logp[len(context) - 1 + j, t].item() for j, t in enumerate(target)])
    return out


def main() -> None:
    from codellama.checkpoint import load_model
    from codellama.cli import main as cli
    from codellama.config import torch_dtype
    from codellama.tokenizer import load_tokenizer
    from evals.infilling import data_path, load_problems, middle_nll_rows, nll_modes
    from evals.nll import target_nll

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint directory (default: smollm2-135m with infilling tokens added)")
    ap.add_argument("--problems", type=int, default=15)
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            model_dir = str(Path(tmp) / "smollm2-fim")
            assert cli(["tokenizer", "extend", "--base", "smollm2-135m", "--out", model_dir]) == 0
        model = load_model(model_dir, dtype=torch_dtype(args.dtype, "cpu")).eval()
        tok = load_tokenizer(model_dir)
    modes = nll_modes(tok)
    problems = load_problems(data_path("single-line"), limit=args.problems)
    keyed = [(mode, row) for p in problems for mode, row in middle_nll_rows(tok, p, modes).items()]
    rows = [row for _, row in keyed]
    tokens = sum(len(c) + len(t) for c, t in rows)
    print(
        f"{len(rows)} rows ({args.problems} problems x {', '.join(modes)}), {tokens} tokens, {args.dtype}, "
        f"{torch.get_num_threads()} threads"
    )
    target_nll(model, rows[:2])  # warm-up
    t0 = time.perf_counter()
    ours = target_nll(model, rows, batch_tokens=args.batch_tokens)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain = plain_nll(model, rows)
    t_plain = time.perf_counter() - t0
    diff = max(abs(a - b) for x, y in zip(ours, plain) for a, b in zip(x, y))
    print(f"ours  (target_nll, batch {args.batch_tokens} tokens): {t_ours:7.1f} s  {tokens / t_ours:7.0f} tokens/s")
    print(f"plain (one row at a time, full logits):        {t_plain:7.1f} s  {tokens / t_plain:7.0f} tokens/s")
    print(f"ratio ours/plain: {t_plain / t_ours:.2f}x faster; largest per-token NLL difference {diff:.2e}")
    for mode in modes:
        nll = [x for (m, _), v in zip(keyed, ours) if m == mode for x in v]
        print(f"  mean NLL/token {mode:<6} {sum(nll) / len(nll):.4f} over {len(nll)} middle tokens")


if __name__ == "__main__":
    main()
