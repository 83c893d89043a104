"""Has a model learned FIM on its own training distribution? Middle NLL on held-out code cut as training cuts it.

    python benchmarks/fim_in_distribution.py --documents runs/fim-u256/data/documents/heldout.jsonl \
        --model runs/fim-u256/budget-253952/model --model runs/fim-tail/budget-1503232/model

HumanEval-infilling asks for whole lines of short functions; training cuts syntax-aligned middles out of stdlib
files. When a model's PSM middle NLL stays above its prefix-only NLL on HumanEval, this tells whether that is
a mismatch with the benchmark or FIM not learned at all: the same held-out files (a run's
`data/documents/heldout.jsonl`, seen by no training stage) are cut into chunks at line ends, each chunk gets a
syntax-aligned middle exactly as the data stage's FIM transform makes it (`codellama.data.fim`: the same span
choice, whitespace healing and token layout), and the true middle is scored teacher-forced:
- PSM and SPM: the training example's own tokens; the middle and its `<EOT>` are the target;
- prefix-only: the prefix's tokens, then the same middle tokens (no `<EOT>`: a left-to-right text has none).
Printed per model: mean NLL per middle token in each mode (a chunk's tokens averaged, then chunks), the paired
PSM - prefix and SPM - prefix gaps with 95% bootstrap intervals over chunks (below 0: the suffix is used), and
the NLL of `<EOT>` right after the true middle (how well the model knows where a middle ends).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
from pathlib import Path

log = logging.getLogger("fim_in_distribution")
MODES = ("psm", "spm")


def cut_chunks(texts: list[str], n: int, chars: int, seed: int) -> list[str]:
    """Up to `n` chunks of about `chars` characters cut at line ends, one from each of n files (in a seeded order)."""
    rng = random.Random(seed)
    order = [t for t in texts if len(t) >= chars]
    rng.shuffle(order)
    chunks = []
    for text in order:
        start = text.rfind("\n", 0, rng.randrange(0, len(text) - chars + 1)) + 1
        end = text.rfind("\n", start, start + chars) + 1
        if end - start > chars // 2:
            chunks.append(text[start:end])
        if len(chunks) == n:
            break
    return chunks


def fim_rows(chunks: list[str], tokenizer, language: str, seed: int) -> dict[str, list[tuple[list[int], list[int]]]]:
    """(context, target) rows per mode for the chunks whose middle and prefix are not empty."""
    from codellama.data.fim import FimOptions, FimSample, fim_tokens, fim_transform, heal_whitespace

    rows: dict[str, list] = {"psm": [], "spm": [], "prefix": []}
    bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    for i, chunk in enumerate(chunks):
        rng = random.Random(f"{seed}/{i}")
        psm = fim_transform(chunk, rng, FimOptions(fim_rate=1.0, spm_rate=0.0, span_mode="syntax"), language)
        healed = heal_whitespace(psm, tokenizer)
        middle, prefix = tokenizer.encode_infilling(healed.middle), tokenizer.encode(healed.prefix)
        if not middle or not (bos + prefix):
            continue
        for mode in MODES:
            ids = fim_tokens(FimSample(mode, psm.prefix, psm.middle, psm.suffix), tokenizer, eos=False)
            cut = len(ids) - len(middle) - 1
            rows[mode].append((ids[:cut], ids[cut:]))
        rows["prefix"].append((bos + prefix, middle))
    return rows


def score(model_dir: Path, chunks: list[str], language: str, seed: int, dtype: str) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from codellama.tokenizer import load_tokenizer
    from evals.intervals import bootstrap_mean, paired_difference
    from evals.nll import target_nll

    tokenizer = load_tokenizer(model_dir)
    if tokenizer.middle_id is None:
        raise ValueError(f"{model_dir}: the tokenizer has no infilling tokens")
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=getattr(torch, dtype)).eval()
    rows = fim_rows(chunks, tokenizer, language, seed)
    nll = {mode: target_nll(model, rr, progress=f"{model_dir.name} {mode}") for mode, rr in rows.items()}
    per_chunk = {m: [float(np.mean(r[:-1])) for r in nll[m]] for m in MODES}
    per_chunk["prefix"] = [float(np.mean(r)) for r in nll["prefix"]]
    out = {"model": str(model_dir), "chunks": len(rows["prefix"])}
    for mode, values in per_chunk.items():
        out[mode] = bootstrap_mean(values).to_json()
    for mode in MODES:
        out[f"{mode}-prefix"] = paired_difference(per_chunk[mode], per_chunk["prefix"]).to_json()
        out[f"{mode} <EOT>"] = bootstrap_mean([r[-1] for r in nll[mode]]).to_json()
    return out


def _cell(entry: dict) -> str:
    return f"{entry['mean']:+.3f} [{entry['low']:+.3f}, {entry['high']:+.3f}]"


def table(results: list[dict]) -> str:
    head = "| model | chunks | NLL PSM | NLL SPM | NLL prefix | PSM - prefix | SPM - prefix | <EOT> PSM | <EOT> SPM |"
    lines = [head, "|---|---:|---|---|---|---|---|---|---|"]
    for r in results:
        cells = [f"{r[m]['mean']:.3f}" for m in ("psm", "spm", "prefix")]
        cells += [_cell(r["psm-prefix"]), _cell(r["spm-prefix"])]
        cells += [f"{r[f'{m} <EOT>']['mean']:.2f}" for m in MODES]
        lines.append(f"| {r['model']} | {r['chunks']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python benchmarks/fim_in_distribution.py --documents runs/family/data/documents/"
        "heldout.jsonl --model runs/family/train-code/final --model runs/family/train-code-nofim/final",
    )
    p.add_argument("--documents", type=Path, required=True, help="JSONL with a 'text' field (held-out files)")
    p.add_argument("--model", type=Path, action="append", required=True, help="model directory (repeatable)")
    p.add_argument("--chunks", type=int, default=120, help="chunks to score, one per file (default 120)")
    p.add_argument("--chars", type=int, default=1000, help="characters per chunk, cut at line ends (default 1000)")
    p.add_argument("--language", default="python", help="grammar of the syntax-aligned middles (default python)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.chunks < 1 or args.chars < 100:
            raise ValueError("--chunks must be >= 1 and --chars >= 100")
        if not args.documents.is_file():
            raise FileNotFoundError(f"--documents {args.documents}: no such file")
        for model in args.model:
            if not (model / "config.json").is_file():
                raise FileNotFoundError(f"--model {model}: not a model directory (no config.json)")
        try:
            texts = [json.loads(line)["text"] for line in args.documents.open() if line.strip()]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"--documents {args.documents}: not JSONL with a 'text' field ({exc})") from None
        chunks = cut_chunks(texts, args.chunks, args.chars, args.seed)
        if not chunks:
            raise ValueError(f"--documents {args.documents}: no file of {args.chars} characters or more")
        results = [score(m, chunks, args.language, args.seed, args.dtype) for m in args.model]
    except (ValueError, FileNotFoundError) as exc:
        print(f"fim_in_distribution: error: {exc}", file=sys.stderr)
        return 2
    print(table(results))
    if args.out:
        from codellama.io import atomic_write_json

        atomic_write_json(args.out, {"documents": str(args.documents), "chars": args.chars, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
