"""The `codellama` command: a thin argparse layer over library functions.

`COMMANDS` below is the one table of every subcommand, in `codellama --help` order. Each entry
names a `register(cli: CommandTree)` function that only declares arguments (no heavy imports, so
`--help` stays fast); the handlers it sets import the library code they call. This file is the
composition root: the table names modules of every layer by string, so the core still imports
nothing above it (see ARCHITECTURE.md). A registration that fails is an error, never a silently
missing command.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys

log = logging.getLogger("codellama")

# Every subcommand, in help order: (module:function) of its registration.
COMMANDS = (
    "codellama.commands.tokenizer:register",  # codellama tokenizer train | extend
    "codellama.commands.model:register",  # codellama model init | info | presets
    "codellama.commands.convert:register",  # codellama convert meta-to-hf | gguf-to-hf
    "codellama.commands.export:register",  # codellama export gguf
    "codellama.commands.base:register",  # codellama base get | list
    "codellama.commands.data:register",  # codellama data prepare | inspect
    "codellama.commands.train:register",  # codellama train BRANCH
    "long_context.cli:register",  # codellama rope set | plot
    "infilling.cli:register",  # codellama serve, codellama infill
    "evals.cli:register",  # codellama eval humaneval | score | infilling | key-retrieval | long-ppl
    "family.instruct_data_cli:register",  # codellama instruct-data generate
    "family.cli:register",  # codellama pipeline
)


# Groups that several packages add subcommands to get one help line, whoever registers first.
GROUP_HELP = {
    "eval": "score models: HumanEval, infilling, key retrieval, long-context perplexity",
    "data": "prepare and inspect training data",
    "rope": "change and study RoPE settings",
}


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


# Exceptions that describe bad input rather than a bug: one line, exit 2.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UsageError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    KeyError,
    ValueError,
)
# OSErrors that the user's machine or input causes (disk full, read-only output, no access): one line, exit 2.
USER_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ENOSPC",
        "EDQUOT",
        "EROFS",
        "EACCES",
        "EPERM",
        "ENOENT",
        "ENOTDIR",
        "EISDIR",
        "EEXIST",
        "ENOTEMPTY",
        "ENAMETOOLONG",
        "ELOOP",
        "EFBIG",
    )
    if hasattr(errno, name)
)


def is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, USER_ERRORS) or (isinstance(exc, OSError) and exc.errno in USER_ERRNOS)


class CommandTree:
    """Gives plugins top-level commands and shared groups (`eval`, `data`, ...)."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser
        self._sub = parser.add_subparsers(dest="command", metavar="COMMAND")
        self._groups: dict[str, argparse._SubParsersAction] = {}

    def command(
        self,
        name: str,
        *,
        help: str,
        description: str | None = None,
        epilog: str | None = None,
        parent: str | None = None,
    ) -> argparse.ArgumentParser:
        """Add `codellama [parent] name`; `epilog` should hold usage examples."""
        sub = self.group(parent) if parent else self._sub
        return sub.add_parser(
            name,
            help=help,
            description=description or help,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def group(self, name: str, help: str | None = None) -> argparse._SubParsersAction:
        if name not in self._groups:
            help = GROUP_HELP.get(name) or help or f"{name} commands"
            parser = self._sub.add_parser(
                name, help=help, description=help, formatter_class=argparse.RawDescriptionHelpFormatter
            )
            parser.set_defaults(func=lambda args, p=parser: _missing_subcommand(p))
            self._groups[name] = parser.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")
        return self._groups[name]


def _missing_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _load(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codellama",
        description="Specialize Llama 2 into the Code Llama family and measure it.",
        epilog="examples:\n"
        "  codellama tokenizer train --out runs/tokenizer\n"
        "  codellama model init --preset tiny --tokenizer runs/tokenizer --out runs/tiny\n"
        "  codellama model info llama2-7b\n\n"
        "Run `codellama COMMAND --help` for the options and examples of each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    tree = CommandTree(parser)
    for spec in COMMANDS:
        _load(spec)(tree)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    _quiet_libraries()
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("codellama: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug or os.environ.get("CODELLAMA_DEBUG"):
            raise
        if is_user_error(exc):
            print(f"codellama: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        # a bug: still one line, with a way to see more
        print(
            f"codellama: internal error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for details)",
            file=sys.stderr,
        )
        return 1


def _quiet_libraries() -> None:
    """Our own progress bars and logs say what happens; the libraries' per-file bars are noise."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def _one_line(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    if isinstance(exc, OSError) and exc.strerror:  # no "[Errno 28]" prefix
        text = exc.strerror
        if exc.filename and str(exc.filename) not in text:
            text = f"{text}: {exc.filename}"
    return " ".join(str(text).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
