"""`codellama tokenizer ...`: train, extend and inspect Code Llama tokenizers."""

from __future__ import annotations

import argparse
from pathlib import Path

from codellama.io import ensure_new_output_dir


def register(cli) -> None:
    cli.group("tokenizer", help="train, extend and try Code Llama tokenizers")

    p = cli.command(
        "train",
        parent="tokenizer",
        help="train a Llama-style BPE tokenizer with the infilling pieces",
        epilog="examples:\n"
        "  codellama tokenizer train --out runs/tokenizer            # on the Python stdlib\n"
        "  codellama tokenizer train --source src/ --vocab-size 32016 --out runs/tok\n"
        "  codellama tokenizer train --source repo/ --languages python,c --out runs/tok",
    )
    p.add_argument(
        "--source",
        action="append",
        default=None,
        help="where documents come from, as in `data prepare`: a directory or git checkout, a source "
        "file, JSONL/Parquet, a saved dataset (repeatable; default: the Python standard library)",
    )
    p.add_argument("--languages", default="", help="comma-separated languages to read from directories (default: all)")
    p.add_argument("--text-column", default=None, help="text column of JSONL/Parquet sources (default: text/content)")
    p.add_argument(
        "--vocab-size",
        type=int,
        default=8016,
        help="total pieces including the 16 Code Llama pieces (Code Llama: 32016; default 8016)",
    )
    p.add_argument("--out", type=Path, required=True, help="output directory (must not exist or be empty)")
    p.set_defaults(func=cmd_train)

    p = cli.command(
        "extend",
        parent="tokenizer",
        help="extend Llama 2's tokenizer.model to Code Llama's 32016 pieces",
        epilog="example:\n  codellama tokenizer extend --base llama-2-7b/tokenizer.model --out runs/codellama-tok",
    )
    p.add_argument("--base", type=Path, required=True, help="Llama 2 tokenizer.model")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.set_defaults(func=cmd_extend)

    p = cli.command(
        "encode",
        parent="tokenizer",
        help="show the ids and pieces of a text",
        epilog="example:\n  codellama tokenizer encode runs/tokenizer 'def f(x):'",
    )
    p.add_argument("tokenizer", type=Path, help="tokenizer directory or tokenizer.model")
    p.add_argument("text")
    p.set_defaults(func=cmd_encode)


def cmd_train(args: argparse.Namespace) -> int:
    from codellama.data.ingest import SourceSpec, load_documents
    from codellama.tokenizer import CodeLlamaTokenizer, TrainOptions, save_tokenizer_dir

    ensure_new_output_dir(args.out)
    # The same reader as `data prepare`, so the tokenizer learns from the documents it will encode.
    languages = tuple(x.strip() for x in args.languages.split(",") if x.strip())
    specs = [SourceSpec(s, text_column=args.text_column, languages=languages) for s in args.source or ()]
    texts = [t for t in load_documents(specs)["text"] if t.strip()]
    if not texts:
        raise ValueError("no documents found to train on (check --source and --languages)")
    tok = CodeLlamaTokenizer.train(texts, TrainOptions(vocab_size=args.vocab_size))
    save_tokenizer_dir(tok, args.out)
    print(
        f"trained tokenizer on {len(texts)} documents: {tok.vocab_size} pieces, "
        f"<PRE>={tok.prefix_id} <SUF>={tok.suffix_id} <MID>={tok.middle_id} <EOT>={tok.eot_id} -> {args.out}"
    )
    return 0


def cmd_extend(args: argparse.Namespace) -> int:
    from codellama.tokenizer import CodeLlamaTokenizer, save_tokenizer_dir

    ensure_new_output_dir(args.out)
    tok = CodeLlamaTokenizer.extend_llama(args.base)
    save_tokenizer_dir(tok, args.out)
    print(
        f"extended {args.base} to {tok.vocab_size} pieces: <PRE>={tok.prefix_id} <SUF>={tok.suffix_id} "
        f"<MID>={tok.middle_id} <EOT>={tok.eot_id} -> {args.out}"
    )
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from codellama.tokenizer import CodeLlamaTokenizer

    tok = CodeLlamaTokenizer.load(args.tokenizer)
    ids = tok.encode(args.text)
    print(ids)
    print([tok.sp.id_to_piece(i) for i in ids])
    return 0
