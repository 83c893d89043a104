"""`codellama data ...`: turn code into packed FIM token shards, and look inside them."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from codellama.commands.args import add_set_option, model_dir

PREPARE_EXAMPLES = """examples:
  codellama data prepare --tokenizer runs/tok --out runs/data            # the Python stdlib, seq 4096, FIM 0.9
  codellama data prepare --source ~/src/myrepo --source notes.jsonl --tokenizer runs/tok --out runs/data2
  codellama data prepare --mix mixture.yaml --tokenizer runs/tok --seq-len 16384 --packing whole-files --out runs/lc
  codellama data prepare --tokenizer runs/tok --span-mode syntax --fim-rate 0.5 --out runs/data-syntax
  codellama data prepare --config prep.yaml --set fim.spm_rate=0 --tokenizer runs/tok --out runs/psm-only
  codellama data prepare --tokenizer runs/tok --out x --print-config > prep.yaml   # every setting, to edit

A killed run resumes when rerun with the same arguments and gives byte-identical shards.
--source accepts: stdlib, a directory or git checkout, .jsonl/.json/.parquet files, a dataset saved with
save_to_disk, or hf:NAME[:CONFIG][@SPLIT] for a Hugging Face dataset already in the local cache.
A mixture file is YAML: {total_bytes: N (optional), sources: [{name, source, weight, text_column?, language?}]}."""

CHAT_EXAMPLES = """examples:
  codellama data prepare-chat --input instruct.jsonl --tokenizer runs/tok --seq-len 4096 --out runs/chat-shards
  codellama train instruct --data runs/chat-shards --base runs/code/final --out runs/instruct

Each dialog is encoded in the tokenizer's chat template when it has one, else in Llama 2's
[INST] ... [/INST] format; the loss mask is 1 exactly on answer tokens. A dialog never straddles
two sequences."""

INSPECT_EXAMPLES = """examples:
  codellama data inspect runs/data                 # summary and 3 random sequences
  codellama data inspect runs/data --index 0 17 --max-chars 4000"""


def register(cli) -> None:
    cli.group("data", help="prepare packed FIM token shards from code, and inspect them")

    p = cli.command(
        "prepare",
        parent="data",
        help="ingest, filter, dedup, mix, FIM-transform, tokenize and pack code",
        epilog=PREPARE_EXAMPLES,
    )
    p.add_argument(
        "--source",
        action="append",
        default=None,
        help="where documents come from (repeatable; default: the Python standard library)",
    )
    p.add_argument("--mix", type=Path, help="mixture YAML (sources with weights); replaces --source")
    p.add_argument("--config", type=Path, help="YAML of PrepareConfig settings; flags and --set go on top")
    add_set_option(p, "fim.span_mode=syntax or filters.min_bytes=64")
    p.add_argument("--print-config", action="store_true", help="print the resolved settings as YAML and exit")
    p.add_argument(
        "--tokenizer",
        type=model_dir,
        required=True,
        help="tokenizer or checkpoint directory, tokenizer.model or tokenizer.json (a Llama 2 tokenizer.model "
        "gets Code Llama's pieces added; a tokenizer.json needs `codellama tokenizer extend` first)",
    )
    p.add_argument("--out", type=Path, required=True, help="output shard directory (new, or an unfinished run)")
    p.add_argument("--seq-len", type=int, help="tokens per training sequence (default 4096)")
    p.add_argument(
        "--packing",
        choices=("concat", "whole-files"),
        help="concat: concatenate and chop; whole-files: never split a file that fits, files packed "
        "best-fit so little is padding (padding masked out of the loss)",
    )
    p.add_argument("--fim-rate", type=float, help="share of documents FIM-transformed (default 0.9)")
    p.add_argument("--spm-rate", type=float, help="share of FIM documents in SPM order (default 0.5)")
    p.add_argument(
        "--span-mode",
        choices=("char", "syntax"),
        help="char: Code Llama's random character cuts; syntax: the middle is whole tree-sitter nodes",
    )
    p.add_argument("--seed", type=int, help="FIM and shuffling seed (default 0)")
    p.add_argument("--shard-size", type=int, default=None, help="sequences per shard file (default: ~4M tokens)")
    p.add_argument("--max-documents", type=int, default=None, help="use only the first N documents after shuffling")
    p.add_argument("--languages", default="", help="comma-separated languages to read from directories (default: all)")
    p.add_argument(
        "--text-column", default=None, help="text column of JSONL/Parquet/HF sources (default: text/content)"
    )
    p.add_argument("--num-proc", type=int, default=min(4, os.cpu_count() or 1), help="worker processes")
    g = p.add_argument_group("filters")
    g.add_argument("--min-bytes", type=int, help="default 16")
    g.add_argument("--max-bytes", type=int, help="default 1,000,000")
    g.add_argument("--max-line-length", type=int, help="default 1000")
    g.add_argument("--max-mean-line-length", type=float, help="default 100")
    g.add_argument("--min-alnum-fraction", type=float, help="default 0.25")
    g.add_argument("--keep-autogenerated", action="store_true", help="do not drop files marked as generated")
    g.add_argument("--no-exact-dedup", action="store_true")
    g.add_argument("--no-near-dedup", action="store_true")
    g.add_argument("--near-dup-threshold", type=float, help="MinHash Jaccard threshold (default 0.85)")
    p.set_defaults(func=cmd_prepare)

    p = cli.command(
        "prepare-chat",
        parent="data",
        help="pack a chat JSONL into loss-masked shards for the instruct branch",
        epilog=CHAT_EXAMPLES,
    )
    p.add_argument("--input", type=Path, required=True, help="JSONL of dialogs ({messages} or {instruction, response})")
    p.add_argument(
        "--tokenizer",
        type=model_dir,
        required=True,
        help="tokenizer or checkpoint directory, tokenizer.model or tokenizer.json (its chat template is used)",
    )
    p.add_argument("--seq-len", type=int, default=4096, help="tokens per training sequence (default 4096)")
    p.add_argument("--out", type=Path, required=True, help="output shard directory (must not exist)")
    p.set_defaults(func=cmd_prepare_chat)

    p = cli.command(
        "inspect", parent="data", help="show a shard directory's summary and decoded sequences", epilog=INSPECT_EXAMPLES
    )
    p.add_argument("directory", type=Path)
    p.add_argument("-n", "--num", type=int, default=3, help="how many random sequences to show (default 3)")
    p.add_argument("--index", type=int, nargs="*", default=None, help="show these sequence numbers instead")
    p.add_argument("--max-chars", type=int, default=2000, help="cut each shown sequence to about this many characters")
    p.add_argument("--tokenizer", type=Path, default=None, help="default: the tokenizer.model saved in DIRECTORY")
    p.add_argument("--seed", type=int, default=0, help="which random sequences")
    p.set_defaults(func=cmd_inspect)


# Each settings flag is a shortcut for one PrepareConfig key (a `store_true` flag sets the value shown).
FLAG_KEYS = {
    "seq_len": "seq_len",
    "packing": "packing",
    "fim_rate": "fim.fim_rate",
    "spm_rate": "fim.spm_rate",
    "span_mode": "fim.span_mode",
    "seed": "seed",
    "shard_size": "sequences_per_shard",
    "max_documents": "max_documents",
    "min_bytes": "filters.min_bytes",
    "max_bytes": "filters.max_bytes",
    "max_line_length": "filters.max_line_length",
    "max_mean_line_length": "filters.max_mean_line_length",
    "min_alnum_fraction": "filters.min_alnum_fraction",
    "keep_autogenerated": ("filters.autogenerated", False),
    "no_exact_dedup": ("dedup.exact", False),
    "no_near_dedup": ("dedup.near", False),
    "near_dup_threshold": "dedup.threshold",
}


def prepare_config_from_args(args: argparse.Namespace):
    """--config YAML, then the flags the user gave, then --set: one PrepareConfig."""
    from codellama.config import apply_overrides, build, load_yaml, set_dotted
    from codellama.data.mix import load_mix
    from codellama.data.prepare import PrepareConfig

    if args.mix and args.source:
        raise ValueError("give either --mix or --source, not both (the mixture file lists its sources)")
    raw = load_yaml(args.config) if args.config else {}
    for name, key in FLAG_KEYS.items():
        value = getattr(args, name)
        if isinstance(key, tuple):
            key, value = key[0], key[1] if value else None
        if value is not None:
            set_dotted(raw, key, value)
    if args.source:
        languages = [x.strip() for x in args.languages.split(",") if x.strip()]
        raw["sources"] = [{"location": s, "text_column": args.text_column, "languages": languages} for s in args.source]
    apply_overrides(raw, args.overrides)
    raw["sources"] = [{"location": s} if isinstance(s, str) else s for s in raw.get("sources") or []]
    if args.mix or isinstance(raw.get("mix"), str):
        raw["mix"] = load_mix(args.mix or raw["mix"])  # the mixture file has its own format (see --help)
    return build(PrepareConfig, raw)


def cmd_prepare(args: argparse.Namespace) -> int:
    import time

    import yaml

    from codellama.config import to_raw
    from codellama.data.prepare import prepare

    config = prepare_config_from_args(args)
    if args.print_config:
        print(yaml.safe_dump(to_raw(config), sort_keys=False), end="")
        return 0
    tokenizer = _load_tokenizer(args.tokenizer, infilling=True)
    start = time.perf_counter()
    index = prepare(config, tokenizer, args.out, num_proc=max(1, args.num_proc))
    _print_summary(index.meta["stats"], index, args.out, time.perf_counter() - start)
    return 0


def cmd_prepare_chat(args: argparse.Namespace) -> int:
    from codellama.data.chat import prepare_chat_shards
    from codellama.data.shards import ShardIndex
    from codellama.io import ensure_new_output_dir

    if args.seq_len < 2:
        raise ValueError(f"--seq-len must be at least 2, got {args.seq_len}")
    if not args.input.is_file():
        raise FileNotFoundError(f"chat data not found: {args.input}")
    ensure_new_output_dir(args.out)
    out = prepare_chat_shards(args.input, _load_tokenizer(args.tokenizer), args.out, args.seq_len)
    meta = ShardIndex.load(out).meta
    print(
        f"{meta['dialogs']:,} dialogs -> {ShardIndex.load(out).num_sequences:,} sequences of {args.seq_len} tokens, "
        f"{meta['answer_tokens']:,} answer tokens ({meta['truncated']} cut, {meta['dropped']} dropped) -> {out}"
    )
    return 0


def _load_tokenizer(path: Path, *, infilling: bool = False):
    """The tokenizer at `path`; `infilling`: FIM data needs the infilling tokens."""
    from codellama.tokenizer import NO_INFILLING_HINT, load_tokenizer

    tok = load_tokenizer(path)
    if tok.infilling is None and tok.backend == "sentencepiece":
        tok, _ = tok.with_infilling_tokens()  # plain Llama 2 tokenizer: Code Llama's pieces, as `model init` does
    elif tok.infilling is None and infilling:
        # A tokenizer.json's new tokens need new embedding rows: the checkpoint must be extended with it.
        raise ValueError(f"{path} has no infilling tokens: {NO_INFILLING_HINT}")
    return tok


def _print_summary(stats: dict, index, out: Path, seconds: float) -> None:
    ingested = stats["ingested"]
    print(
        f"ingested {sum(v['documents'] for v in ingested.values()):,} documents "
        f"({sum(v['bytes'] for v in ingested.values()) / 1e6:.1f} MB) from {len(ingested)} source(s)"
    )
    for name, v in stats["filters"].items():
        if v["documents"]:
            print(f"  filter {name:<18} removed {v['documents']:>6,} documents {v['bytes'] / 1e6:>8.2f} MB")
    for stage in ("exact_dedup", "near_dedup"):
        if stage in stats:
            v = stats[stage]
            print(f"  {stage.replace('_', ' '):<25} removed {v['documents']:>6,} documents {v['bytes'] / 1e6:>8.2f} MB")
    for name, v in (stats.get("mixture") or {}).items():
        note = f" (repeated {v['epochs']:.2f}x)" if v["epochs"] > 1 else ""
        print(f"  mix {name}: {v['documents']:,} documents, {v['bytes'] / 1e6:.2f} MB, share {v['share']:.1%}{note}")
    modes = stats["fim_modes"]
    print(
        f"{stats['documents']:,} documents -> {stats['tokens']:,} tokens; FIM {stats['fim_fraction']:.1%} "
        f"(PSM {modes['psm']:,} / SPM {modes['spm']:,} / plain {modes['plain']:,}); "
        f"spans {', '.join(f'{k} {v:,}' for k, v in stats['fim_spans'].items() if v)}"
    )
    print(
        f"{len(index.shards)} shard(s), {index.num_sequences:,} sequences x {index.seq_len} tokens "
        f"({index.dtype.name}); padding {stats['padding_tokens']:,}, dropped tail {stats['dropped_tail_tokens']:,} "
        f"tokens -> {out} in {seconds:.1f} s"
    )


def cmd_inspect(args: argparse.Namespace) -> int:
    import numpy as np

    from codellama.data.inspect import load_shards_and_tokenizer, render_sequence, summary_lines

    shards, tok = load_shards_and_tokenizer(args.directory, args.tokenizer)
    for line in summary_lines(shards):
        print(line)
    if args.index:
        chosen = args.index
        bad = [i for i in chosen if not 0 <= i < len(shards)]
        if bad:
            raise ValueError(f"sequence index {bad[0]} out of range (0..{len(shards) - 1})")
    else:
        rng = np.random.default_rng(args.seed)
        chosen = sorted(rng.choice(len(shards), size=min(args.num, len(shards)), replace=False).tolist())
    for i in chosen:
        print(f"\n===== sequence {i} =====")
        print(render_sequence(shards, tok, i, args.max_chars))
    return 0
