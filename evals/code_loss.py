"""Held-out code loss: a model's mean left-to-right NLL per token over whole source files.

The paper's test loss for "FIM costs little": a model trained with FIM should predict ordinary
code left to right about as well as one trained without it. Each file is encoded as BOS + text
(no EOS: the measure is the code itself) and cut into windows of the model's context, consecutive
windows sharing one token so every token after the first is scored exactly once. The mean is
token-weighted over all files, and its 95% interval is a bootstrap over files (tokens of one file
are not independent). Source files are only read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from evals.intervals import bootstrap_mean
from evals.nll import target_nll

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"


@dataclass(frozen=True)
class CodeLossConfig:
    context: int | None = None  # window in tokens; None: the model's max_position_embeddings
    max_tokens: int | None = None  # score at most this many tokens (files in the order given, the last one cut)
    batch_tokens: int = 8192  # tokens per forward batch

    def __post_init__(self) -> None:
        if self.context is not None and self.context < 2:
            raise ValueError(f"context must be at least 2 tokens, got {self.context}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.batch_tokens < 1:
            raise ValueError(f"batch_tokens must be at least 1, got {self.batch_tokens}")


def windows(ids: Sequence[int], context: int) -> list[tuple[list[int], list[int]]]:
    """(context, targets) rows covering `ids`: windows of `context` tokens overlapping by one token, so
    each token after the first is a target exactly once and sees at most `context` - 1 tokens before it."""
    if context < 2:
        raise ValueError(f"context must be at least 2 tokens, got {context}")
    ids = list(ids)
    return [(ids[s : s + 1], ids[s + 1 : s + context]) for s in range(0, len(ids) - 1, context - 1)]


def source_files(paths: Sequence[str | os.PathLike], suffixes: tuple[str, ...] = (".py",)) -> list[Path]:
    """The files to score: each file given, and every file with one of `suffixes` under each directory."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in suffixes)
            if not found:
                raise ValueError(f"{path}: no {'/'.join(suffixes)} files in this directory")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"source not found: {path}")
    return files


def read_texts(files: Sequence[Path]) -> tuple[list[str], list[str]]:
    """(names, texts) of the UTF-8 files; others are skipped with a warning (they are not source code)."""
    names, texts = [], []
    for path in files:
        try:
            texts.append(path.read_bytes().decode("utf-8"))
            names.append(str(path))
        except UnicodeDecodeError:
            log.warning("skipping %s: not UTF-8 text", path)
        except OSError as exc:
            raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return names, texts


def code_loss(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    names: Sequence[str] | None = None,
    config: CodeLossConfig = CodeLossConfig(),
) -> dict:
    """Token-weighted mean NLL (nats/token) of `texts`, with a bootstrap interval over texts.

    Returns {"nll": {"mean", "low", "high"}, "ppl", "tokens", "files", "context", "per_file": [...]}.
    """
    import math

    names = list(names) if names is not None else [f"text {i}" for i in range(len(texts))]
    if len(names) != len(texts):
        raise ValueError(f"{len(names)} names for {len(texts)} texts")
    context = config.context or getattr(model.config, "max_position_embeddings", None) or 2048
    rows, owner, budget = [], [], config.max_tokens
    for index, text in enumerate(texts):
        if budget is not None and budget <= 0:
            break
        ids = tokenizer.encode(text, bos=True)
        if budget is not None:
            ids = ids[: budget + 1]  # + the first token, which is context only
        for row in windows(ids, context):
            rows.append(row)
            owner.append(index)
        if budget is not None:
            budget -= max(0, len(ids) - 1)
    if not rows:
        raise ValueError("nothing to score: the texts are empty (or one token each)")
    per_file: dict[int, list[float]] = {}
    for index, nll in zip(owner, target_nll(model, rows, batch_tokens=config.batch_tokens, progress="code loss")):
        per_file.setdefault(index, []).extend(nll)
    scored = [(i, v) for i, v in per_file.items() if v]
    interval = bootstrap_mean([sum(v) / len(v) for _, v in scored], weights=[len(v) for _, v in scored])
    tokens = sum(len(v) for _, v in scored)
    return {
        "nll": {"mean": round(interval.mean, 6), "low": round(interval.low, 6), "high": round(interval.high, 6)},
        "ppl": round(math.exp(interval.mean), 4),
        "tokens": tokens,
        "files": len(scored),
        "context": context,
        "per_file": [{"name": names[i], "tokens": len(v), "nll": round(sum(v) / len(v), 6)} for i, v in scored],
    }


__all__ = ["CodeLossConfig", "code_loss", "read_texts", "source_files", "windows"]
