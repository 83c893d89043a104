"""Infilling on top of the shared generation path.

`codellama.generation` already builds Code Llama's PSM/SPM prompt (special ids for the
infilling pieces, suffix and middle encoded without SentencePiece's dummy space), stops
at `<EOT>` and returns only the middle. This module adds what infilling users need
around it: a cursor position -> prefix/suffix split, editor "extra context" files, and
the optional tree-sitter truncation and parse check.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from codellama.generation import GenerationRequest, Generator, IsCancelled, OnText, SamplingParams
from infilling.syntax import parses, truncate_middle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InfillTask:
    prefix: str
    suffix: str


@dataclass(frozen=True)
class InfillResult:
    middle: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    truncated: bool = False  # shortened by syntax-aware truncation
    parses: bool | None = None  # prefix + middle + suffix parses (None: not checked)


def infilling_prompt_ids(tokenizer, prefix: str, suffix: str, *, suffix_first: bool = False) -> list[int]:
    """Code Llama's prompt ids; the one construction lives in the tokenizer."""
    return tokenizer.infilling_prompt(prefix, suffix, suffix_first=suffix_first)


def infill(
    generator: Generator,
    tasks: Sequence[InfillTask],
    params: SamplingParams = SamplingParams(),
    *,
    suffix_first: bool = False,
    syntax_truncate: bool = False,
    check_syntax: bool = False,
    language: str = "python",
    on_text: OnText | None = None,
    is_cancelled: IsCancelled | None = None,
) -> list[InfillResult]:
    """Fill every task's hole in one batched generate call.

    `syntax_truncate` cuts each middle where the file parses best (implies `check_syntax`).
    Streamed deltas (`on_text`) are the raw middle, before truncation.
    """
    requests = [GenerationRequest(t.prefix, suffix=t.suffix, params=params, suffix_first=suffix_first) for t in tasks]
    completions = generator.generate(requests, on_text=on_text, is_cancelled=is_cancelled)
    results = []
    for task, done in zip(tasks, completions):
        middle, truncated, ok = done.text, False, None
        if syntax_truncate:
            cut = truncate_middle(task.prefix, middle, task.suffix, language)
            middle, truncated, ok = cut.middle, cut.truncated, cut.parses
        elif check_syntax:
            ok = parses(task.prefix + middle + task.suffix, language)
        results.append(InfillResult(middle, done.finish_reason, done.prompt_tokens, len(done.token_ids), truncated, ok))
    return results


def split_at_cursor(text: str, line: int, col: int) -> InfillTask:
    """Split a file at a 1-based line and column (the cursor sits before character `col`)."""
    lines = text.splitlines(keepends=True) or [""]
    if text.endswith("\n"):
        lines.append("")  # the cursor may sit on the empty line after the final newline
    if not 1 <= line <= len(lines):
        raise ValueError(f"line {line} is outside the file (1..{len(lines)})")
    body = lines[line - 1].rstrip("\r\n")
    if not 1 <= col <= len(body) + 1:
        raise ValueError(f"column {col} is outside line {line} (1..{len(body) + 1})")
    offset = sum(len(x) for x in lines[: line - 1]) + col - 1
    return InfillTask(text[:offset], text[offset:])


def with_extra_context(prefix: str, extra: Sequence[tuple[str, str]]) -> str:
    """Put other files' text (an editor's "input_extra" chunks) before the prefix.

    Code Llama has no repository/file-separator tokens, so the chunks are plain text ahead
    of the file, each under a header line naming it.
    """
    if not extra:
        return prefix
    head = "".join(
        f"--- {name or 'snippet'} ---\n{text}{'' if text.endswith(chr(10)) else chr(10)}\n" for name, text in extra
    )
    return head + prefix


__all__ = ["InfillResult", "InfillTask", "infill", "infilling_prompt_ids", "split_at_cursor", "with_extra_context"]
