"""Code Llama's long-context result at toy scale, on a CPU in under 30 minutes (issue 7, item 6).

    python benchmarks/long_context_repro.py                 # ~15 min on 2 CPU cores
    python benchmarks/long_context_repro.py --quick         # smoke run of every stage (under a minute)

1. data: the stdlib's .py files (test suites excluded); every 10th file (by path hash) is held
   out for evaluation. A 2,016-piece tokenizer keeps the tiny model's output layer small.
2. base: the `tiny` preset trained at 256 tokens with RoPE base 10,000 (`codellama train code`).
3. long-context fine-tuning (`codellama train long-context`) at 4x the context (1,024 tokens), on
   the same files packed whole (`--packing whole-files`), once with RoPE base 1,000,000 (Code
   Llama) and once with linear position interpolation x4 (Chen et al. 2023). A control run
   fine-tunes at 1,024 tokens without touching RoPE, to separate "saw long sequences" from
   "changed the rotation".
4. perplexity on the held-out files (each sample is one file's first 2,048 tokens) at context
   lengths up to 8x the base context (`long_context.perplexity`), plus the perplexity of the
   tokens at each position range of the 2,048-token pass: where a model breaks down.

Every stage is skipped when its output exists in --work, so a killed run continues where it
stopped. Writes WORK/repro.json and WORK/long_ppl.png, and copies the PNG to --png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

log = logging.getLogger("long_context_repro")


@dataclass(frozen=True)
class Settings:
    context: int = 256  # base training context
    factor: int = 4  # fine-tuning context = factor * context
    eval_factor: int = 8  # longest evaluated context = eval_factor * context
    vocab_size: int = 2016
    batch_tokens: int = 8192
    pretrain_steps: int = 300
    pretrain_lr: float = 2e-3
    ft_steps: int = 80
    ft_lr: float = 5e-4
    heldout_every: int = 10  # 1 file in N is held out
    eval_files: int = 32
    max_files: int | None = None  # cap on training files (quick runs)
    control: bool = True

    @property
    def ft_context(self) -> int:
        return self.context * self.factor

    @property
    def eval_context(self) -> int:
        return self.context * self.eval_factor


QUICK = Settings(batch_tokens=2048, pretrain_steps=4, ft_steps=2, eval_files=4, max_files=60)


# -- data --------------------------------------------------------------------------------------
def split_files(every: int) -> tuple[list[Path], list[Path]]:
    """The stdlib without its test suites, split into (train, held-out) by a stable path hash."""
    from codellama.data.stdlib import stdlib_python_files, stdlib_root

    root = stdlib_root()
    train, heldout = [], []
    for path in stdlib_python_files():
        rel = path.relative_to(root).as_posix()
        if rel.startswith("test/") or "/tests/" in f"/{rel}" or "/idle_test/" in rel:
            continue
        digest = int(hashlib.sha1(rel.encode()).hexdigest(), 16)
        (heldout if digest % every == 0 else train).append(path)
    return train, heldout


def read_texts(paths: list[Path]) -> list[str]:
    from codellama.data.stdlib import read_source

    return [t for t in (read_source(p) for p in paths) if t]


def build_tokenizer(texts: list[str], vocab_size: int, out: Path):
    from codellama.tokenizer import CodeLlamaTokenizer, TrainOptions, load_tokenizer, save_tokenizer_dir

    if not (out / "tokenizer.model").is_file():
        tok = CodeLlamaTokenizer.train(texts[::3], TrainOptions(vocab_size=vocab_size))
        save_tokenizer_dir(tok, out)
    return load_tokenizer(out)


def build_shards(docs_jsonl: Path, tokenizer, out: Path, seq_len: int, packing: str) -> dict:
    """`codellama data prepare --fim-rate 0` as a library call: plain text, for perplexity."""
    from codellama.data.fim import FimOptions
    from codellama.data.ingest import SourceSpec
    from codellama.data.prepare import PrepareConfig, prepare
    from codellama.data.shards import INDEX, ShardIndex

    if not (out / INDEX).is_file():
        config = PrepareConfig(
            sources=(SourceSpec(str(docs_jsonl), name="stdlib-train"),),
            seq_len=seq_len,
            packing=packing,
            fim=FimOptions(fim_rate=0.0),
            seed=0,
        )
        prepare(config, tokenizer, out, num_proc=min(2, os.cpu_count() or 1))
    stats = ShardIndex.load(out).meta["stats"]
    return {
        "seq_len": seq_len,
        "packing": packing,
        "sequences": stats["sequences"],
        "tokens": stats["tokens"],
        "padding_tokens": stats["padding_tokens"],
    }


def eval_windows(tokenizer, texts: list[str], length: int, n: int):
    """One row per held-out file long enough: its first `length` tokens (BOS + text)."""
    import torch

    rows = []
    for text in texts:
        ids = tokenizer.encode(text, bos=True, eos=False)
        if len(ids) >= length:
            rows.append(ids[:length])
        if len(rows) == n:
            break
    if len(rows) < 2:
        raise ValueError(f"only {len(rows)} held-out files have {length} tokens")
    return torch.tensor(rows, dtype=torch.long)


# -- training ------------------------------------------------------------------------------------
def train_stage(branch: str, out: Path, *, base: str, data: Path, tokenizer_dir: Path, overrides: list[str]) -> dict:
    from codellama.train.loop import FINAL, train_branch

    final = out / FINAL
    if not (final / "config.json").is_file():
        start = time.perf_counter()
        train_branch(
            branch,
            base=base,
            data=str(data),
            out=str(out),
            tokenizer=str(tokenizer_dir),
            overrides=overrides,
            resume=True,
            progress=True,
        )
        log.info("%s trained in %.0f s", out.name, time.perf_counter() - start)
    summary = json.loads((out / "summary.json").read_text())
    return {
        "dir": str(final),
        "first_loss": summary["first_loss"],
        "last_loss": summary["last_loss"],
        "tokens": summary["tokens"],
        "tokens_per_s": summary["tokens_per_s"],
    }


def common_overrides(s: Settings, seq_len: int, steps: int, lr: float) -> list[str]:
    micro = max(1, s.batch_tokens // seq_len)
    return [
        f"seq_len={seq_len}",
        f"batch_tokens={s.batch_tokens}",
        f"micro_batch_size={micro}",
        f"max_steps={steps}",
        f"optim.lr={lr}",
        f"schedule.warmup_steps={max(1, steps // 20)}",
        "gradient_checkpointing=false",
        "checkpoint_every=50",
        "keep_checkpoints=1",
        "log_every=5",
    ]


# -- evaluation ------------------------------------------------------------------------------------
def position_buckets(context: int, longest: int) -> list[tuple[int, int]]:
    """Target positions [lo, hi): below half the base context, then doubling up to `longest`."""
    edges = [1, context // 2]
    while edges[-1] < longest:
        edges.append(min(longest, edges[-1] * 2))
    return list(zip(edges[:-1], edges[1:]))


def evaluate(models: dict[str, str], windows, lengths: list[int], buckets: list[tuple[int, int]]) -> dict:
    import torch

    from codellama.checkpoint import load_model
    from long_context.perplexity import long_ppl, token_nll

    out = {}
    for label, path in models.items():
        model = load_model(path)
        points = long_ppl(model, windows, lengths, desc=label)
        # Per-token NLL of the longest pass (position t predicts token t), a few rows at a time.
        nll = torch.cat([token_nll(model, rows) for rows in windows.split(8)])
        by_pos = []
        for lo, hi in buckets:
            part = nll[:, lo - 1 : hi - 1].double()
            by_pos.append({"from": lo, "to": hi, "ppl": math.exp(part.mean().item()), "tokens": part.numel()})
        out[label] = {
            "path": path,
            "rope_parameters": dict(model.config.rope_parameters),
            "max_position_embeddings": model.config.max_position_embeddings,
            "ppl_by_length": [{"length": p.length, "ppl": p.ppl, "nll": p.nll} for p in points],
            "ppl_by_position": by_pos,
        }
        del model
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report["settings"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    for i, (label, entry) in enumerate(report["models"].items()):
        xs = [p["length"] for p in entry["ppl_by_length"]]
        left.plot(xs, [p["ppl"] for p in entry["ppl_by_length"]], marker="o", color=f"C{i}", label=label)
        mids = [math.sqrt(b["from"] * b["to"]) for b in entry["ppl_by_position"]]
        right.plot(mids, [b["ppl"] for b in entry["ppl_by_position"]], marker="o", color=f"C{i}", label=label)
    for ax in (left, right):
        ax.axvline(s["context"], color="gray", linestyle=":", alpha=0.8)
        ax.axvline(s["ft_context"], color="gray", linestyle="--", alpha=0.6)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    lengths = [p["length"] for p in next(iter(report["models"].values()))["ppl_by_length"]]
    left.set_xticks(lengths, [str(n) for n in lengths])
    left.minorticks_off()
    left.set_xlabel("context length (tokens)")
    left.set_ylabel("perplexity (all tokens of the window)")
    left.set_title("perplexity vs context length\n(dotted: base context, dashed: fine-tuning context)")
    right.set_xlabel("token position in a 2,048-token window (bucket centre)")
    right.set_ylabel("perplexity of the tokens in the bucket")
    right.set_title(f"where models break: tokens by position\n({report['eval']['samples']} held-out files)")
    fig.suptitle(
        f"tiny preset, trained at {s['context']} tokens (base 10k), fine-tuned at {s['ft_context']}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(report: dict) -> str:
    models = report["models"]
    labels = list(models)
    lines = ["| context | " + " | ".join(labels) + " |", "|---:|" + "---:|" * len(labels)]
    for i, p in enumerate(next(iter(models.values()))["ppl_by_length"]):
        lines.append(
            f"| {p['length']:,} | " + " | ".join(f"{models[m]['ppl_by_length'][i]['ppl']:.2f}" for m in labels) + " |"
        )
    lines += ["", "| token positions | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for i, b in enumerate(next(iter(models.values()))["ppl_by_position"]):
        lines.append(
            f"| {b['from']}-{b['to'] - 1} | "
            + " | ".join(f"{models[m]['ppl_by_position'][i]['ppl']:.2f}" for m in labels)
            + " |"
        )
    return "\n".join(lines)


# -- the experiment --------------------------------------------------------------------------------------
def run(s: Settings, work: Path, png: Path | None) -> dict:
    from codellama.io import atomic_write_json

    t0 = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    train_files, heldout_files = split_files(s.heldout_every)
    if s.max_files:
        train_files = train_files[:: max(1, len(train_files) // s.max_files)][: s.max_files]
    train_texts, heldout_texts = read_texts(train_files), read_texts(heldout_files)
    docs = work / "train-docs.jsonl"
    if not docs.is_file():
        tmp = docs.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"text": t}) + "\n" for t in train_texts))
        tmp.replace(docs)
    tok_dir = work / "tokenizer"
    tokenizer = build_tokenizer(train_texts, s.vocab_size, tok_dir)
    data = {
        "pretrain": build_shards(docs, tokenizer, work / "shards-pretrain", s.context, "concat"),
        "lcft": build_shards(docs, tokenizer, work / "shards-lcft", s.ft_context, "whole-files"),
    }
    log.info("data ready after %.0f s: %s", time.perf_counter() - t0, data)

    base = train_stage(
        "code",
        work / "base",
        base="tiny",
        data=work / "shards-pretrain",
        tokenizer_dir=tok_dir,
        overrides=common_overrides(s, s.context, s.pretrain_steps, s.pretrain_lr)
        + [f"rope.base={10_000.0}", f"rope.max_context={s.context}"],
    )
    ft = common_overrides(s, s.ft_context, s.ft_steps, s.ft_lr)
    variants = {
        f"LCFT base 1e6 @{s.ft_context}": ["rope.base=1000000.0", f"rope.max_context={s.ft_context}"],
        f"LCFT linear PI x{s.factor} @{s.ft_context}": [
            "rope.base=null",
            f"rope.max_context={s.ft_context}",
            f"rope.scaling={{rope_type: linear, factor: {float(s.factor)}}}",
        ],
    }
    if s.control:
        variants[f"LCFT base 1e4 (RoPE unchanged) @{s.ft_context}"] = [
            "rope.base=null",
            f"rope.max_context={s.ft_context}",
        ]
    runs = {f"base 1e4 @{s.context} (no LCFT)": base}
    for (label, rope), name in zip(variants.items(), ("lcft-1m", "lcft-pi", "lcft-control")):
        runs[label] = train_stage(
            "long-context",
            work / name,
            base=base["dir"],
            data=work / "shards-lcft",
            tokenizer_dir=tok_dir,
            overrides=ft + rope,
        )
    train_seconds = time.perf_counter() - t0

    windows = eval_windows(tokenizer, heldout_texts, s.eval_context, s.eval_files)
    lengths = [s.context // 2 * 2**k for k in range(int(math.log2(2 * s.eval_factor)) + 1)]
    buckets = position_buckets(s.context, s.eval_context)
    models = evaluate({label: r["dir"] for label, r in runs.items()}, windows, lengths, buckets)
    for label, r in runs.items():
        models[label]["training"] = r
    report = {
        "settings": {**s.__dict__, "ft_context": s.ft_context, "eval_context": s.eval_context},
        "data": data,
        "eval": {
            "samples": int(windows.shape[0]),
            "tokens_per_sample": s.eval_context,
            "heldout_files": len(heldout_texts),
            "train_files": len(train_texts),
        },
        "models": models,
        "seconds": {"data_and_training": round(train_seconds, 1), "total": round(time.perf_counter() - t0, 1)},
    }
    atomic_write_json(work / "repro.json", report)
    plot(report, work / "long_ppl.png")
    if png is not None:
        png.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(work / "long_ppl.png", png)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--work",
        type=Path,
        default=REPO / "runs" / "longctx-repro",
        help="working directory (data, runs, report); finished stages in it are reused",
    )
    p.add_argument(
        "--png", type=Path, default=None, help="copy the plot here too (e.g. benchmarks/results/longctx_repro.png)"
    )
    p.add_argument(
        "--quick", action="store_true", help="a few steps of everything: checks the pipeline, not the result"
    )
    p.add_argument("--pretrain-steps", type=int)
    p.add_argument("--ft-steps", type=int)
    p.add_argument("--eval-factor", type=int, help="evaluate up to this multiple of the base context (default 8)")
    p.add_argument("--eval-files", type=int, help="held-out files scored (default 32)")
    p.add_argument("--no-control", action="store_true", help="skip the fine-tuning run that keeps RoPE unchanged")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    s = QUICK if args.quick else Settings()
    changes = {
        k: v
        for k, v in (
            ("pretrain_steps", args.pretrain_steps),
            ("ft_steps", args.ft_steps),
            ("eval_factor", args.eval_factor),
            ("eval_files", args.eval_files),
        )
        if v
    }
    if args.no_control:
        changes["control"] = False
    s = Settings(**{**s.__dict__, **changes})
    report = run(s, args.work, args.png)
    print(markdown_table(report))
    print(
        f"\n{report['seconds']['total']:.0f} s in all ({report['seconds']['data_and_training']:.0f} s data + "
        f"training); wrote {args.work / 'repro.json'} and {args.work / 'long_ppl.png'}"
        + (f", copied to {args.png}" if args.png else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
