"""`codellama tokenizer ...`: train, extend and inspect Code Llama tokenizers."""

from __future__ import annotations

import argparse
from pathlib import Path

from codellama.commands.args import model_dir
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
        help="add the infilling tokens to a tokenizer, or to a whole checkpoint",
        epilog="examples:\n"
        "  codellama tokenizer extend --base llama-2-7b/tokenizer.model --out runs/codellama-tok\n"
        "  codellama tokenizer extend --base my-bpe/tokenizer.json --out runs/bpe-tok\n"
        "  codellama tokenizer extend --base runs/smollm2-135m --out runs/smollm2-fim   # checkpoint: weights too\n\n"
        "A SentencePiece model gets Code Llama's 16 pieces (<PRE> 32007 .. <EOT> 32010 for Llama 2).\n"
        "A tokenizer.json reuses <fim_prefix>/<fim_suffix>/<fim_middle> (with <|endoftext|> as the end)\n"
        "when it has them, else gets <PRE> <SUF> <MID> <EOT> as special tokens that no text can produce.\n"
        "A checkpoint's embedding grows to match (new rows = mean of the old; <PRE> <SUF> <MID> start from\n"
        "the words prefix, suffix, middle and <EOT> from end of text); infilling_tokens.json\n"
        "in OUT records the ids for every later command.",
    )
    p.add_argument(
        "--base",
        type=model_dir,
        required=True,
        help="tokenizer.model, tokenizer.json, a directory holding one, a checkpoint directory or a named base",
    )
    p.add_argument("--out", type=Path, required=True, help="output directory (must not exist or be empty)")
    p.set_defaults(func=cmd_extend)

    p = cli.command(
        "encode",
        parent="tokenizer",
        help="show the ids and pieces of a text",
        epilog="example:\n  codellama tokenizer encode runs/tokenizer 'def f(x):'",
    )
    p.add_argument("tokenizer", type=Path, help="tokenizer or checkpoint directory, tokenizer.model or tokenizer.json")
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
    from codellama.extend import extend

    result = extend(args.base, args.out)
    tok, infill = result.tokenizer, result.tokenizer.infilling
    marks = " ".join(f"{text}={i}" for text, i in zip(infill.tokens, infill.ids))
    weights = f"; embedding rows {result.rows[0]} -> {result.rows[1]}" if result.rows else ""
    print(f"{args.base}: {result.how} ({tok.vocab_size} ids): {marks}{weights} -> {args.out}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from codellama.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    ids = tok.encode(args.text)
    print(ids)
    print([tok.piece(i) for i in ids])
    return 0
