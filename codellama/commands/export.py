"""`codellama export gguf`: a checkpoint as one GGUF file for llama.cpp, Ollama and editor plugins."""

from __future__ import annotations

import argparse
from pathlib import Path

TYPES = ("f32", "f16", "bf16", "q8_0")


def register(cli) -> None:
    cli.group("export", help="export checkpoints for other runtimes (GGUF for llama.cpp / Ollama)")
    p = cli.command(
        "gguf",
        parent="export",
        help="write a Llama-architecture checkpoint as a GGUF file, with its infilling token ids",
        epilog="examples:\n"
        "  codellama export gguf runs/code --out code.gguf                 # f16\n"
        "  codellama export gguf runs/code --out code-q8.gguf --type q8_0\n"
        "  codellama export gguf smollm2-135m --out smollm2-f32.gguf --type f32\n\n"
        "The infilling ids come from the checkpoint's infilling_tokens.json (or Code Llama's\n"
        "SentencePiece pieces) and are written as tokenizer.ggml.fim_pre/suf/mid_token_id (plus the\n"
        "older prefix/suffix/middle keys) and eot_token_id, which llama-server's /infill needs:\n"
        "  llama-server -m code.gguf --port 8012     # then point llama.vim / llama.vscode at it",
    )
    p.add_argument("model", help="checkpoint directory or named base (see `codellama base list`)")
    p.add_argument("--out", type=Path, required=True, help="output .gguf file (written atomically)")
    p.add_argument(
        "--type",
        choices=TYPES,
        default="f16",
        help="type of the weight matrices: f32, f16 (default), bf16 or q8_0; norms stay f32",
    )
    p.add_argument("--name", help="general.name to record (default: the directory's name)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_gguf)


def cmd_gguf(args: argparse.Namespace) -> int:
    from codellama.bases import resolve_base
    from codellama.gguf_export import export_gguf

    if args.out.exists() and not args.force:
        raise FileExistsError(f"output {args.out} already exists (use --force to replace it)")
    model_dir = resolve_base(args.model)
    path = export_gguf(model_dir, args.out, out_type=args.type, name=args.name, overwrite=args.force)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {args.type})")
    return 0
