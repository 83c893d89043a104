"""Argument types and option groups that several commands share (light: no heavy imports)."""

from __future__ import annotations

import argparse
from pathlib import Path

from codellama.config import DTYPES


def add_set_option(p: argparse.ArgumentParser, example: str) -> None:
    """`--set KEY=VALUE` (repeatable) into `args.overrides`, applied by `codellama.config.apply_overrides`."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"change one setting (dotted key, YAML value), e.g. {example} (repeatable)",
    )


def add_device_options(p: argparse.ArgumentParser, auto: str = "bfloat16 on GPU, float32 on CPU") -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help=f"auto: {auto}")


def check_positive(value: int | None, name: str) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be >= 1")


def token_count(text: str) -> int:
    """'4096', '4k' (= 4096), '1e4' -> a number of tokens."""
    text = text.strip().lower().replace("_", "")
    try:
        if text.endswith("k"):
            return int(float(text[:-1]) * 1024)
        return int(float(text)) if "e" in text else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a token count like 4096 or 4k, got {text!r}") from None


def positive_int(text: str) -> int:
    value = token_count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def lengths(text: str) -> list[int]:
    """Comma-separated token counts, sorted and unique."""
    values = [positive_int(t) for t in text.split(",") if t.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected at least one length")
    return sorted(set(values))


def fractions(text: str) -> list[float]:
    """Comma-separated fractions within [0, 1], sorted and unique."""
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions like 0,0.5,1, got {text!r}") from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"positions must be within [0, 1], got {text!r}")
    return sorted(set(values))


def ks(text: str) -> tuple[int, ...]:
    """pass@k values: comma-separated integers >= 1, sorted and unique."""
    try:
        values = {int(k) for k in text.split(",") if k.strip()}
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k takes comma-separated integers, not {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("--k values must be >= 1")
    return tuple(sorted(values))


def _named_base(text: str) -> Path | None:
    """The cached checkpoint of a named base (converted on first use), or None when TEXT names none."""
    from codellama.bases import named_base_path

    try:
        return named_base_path(text)
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def model_dir(text: str) -> Path:
    """A checkpoint directory, or a named base such as `smollm2-135m` (see `codellama base list`)."""
    return _named_base(text) or Path(text)


def model_spec(text: str) -> str:
    """Like `model_dir`, for options that also take a preset name: a named base becomes its directory."""
    resolved = _named_base(text)
    return str(resolved) if resolved else text
