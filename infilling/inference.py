"""Infilling on top of the shared generation path.

`codellama.generation` already builds Code Llama's PSM/SPM prompt (special ids for the
infilling pieces, suffix and middle encoded without SentencePiece's dummy space), stops
at `<EOT>` and returns only the middle. This module adds what infilling users need
around it: a cursor position -> prefix/suffix split, editor "extra context" files, fitting
an editor's request into the model's context the way llama.cpp does, the infilling markers
of template-based clients, and the optional tree-sitter truncation and parse check.
"""

from __future__ import annotations

import functools
import logging
import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from codellama.generation import GenerationRequest, Generator, SamplingParams, Sink
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
    sinks: Sequence[Sink] | None = None,
) -> list[InfillResult]:
    """Fill every task's hole in one batched generate call.

    `syntax_truncate` cuts each middle where the file parses best (implies `check_syntax`).
    What `sinks[i]` hears is task i's raw middle, before truncation.
    """
    requests = [GenerationRequest(t.prefix, suffix=t.suffix, params=params, suffix_first=suffix_first) for t in tasks]
    completions = generator.generate(requests, sinks)
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


# -- fitting an editor's request into the context (llama.cpp's /infill rules) ---------------------


@dataclass(frozen=True)
class FitLimits:
    """How much of the context an infilling prompt may use.

    `room`: tokens for the whole prompt (the context minus what the completion may need). `window`: the
    share of it for the file around the cursor (llama.cpp's n_batch; at most half the room): up to 3/4 for
    the text before the cursor, the rest for the text after it. Extra context chunks get the other part of
    the room, however much of the window the file uses, so an editor's warm-up request (chunks only) and
    its keystrokes keep the same chunks and share their KV in the prompt cache.
    """

    room: int
    window: int = 2048

    def __post_init__(self) -> None:
        if self.room < 8:
            raise ValueError(f"only {self.room} tokens of the context are left for the prompt")


@dataclass(frozen=True)
class FittedInfill:
    prompt_ids: list[int]
    prefix: str  # what was kept, extra chunks included, as it went into the prompt
    suffix: str
    truncated: bool  # anything was left out
    chunks_kept: int


def fit_infill(
    tokenizer,
    prefix: str,
    suffix: str,
    limits: FitLimits,
    *,
    middle: str = "",
    extra: Sequence[tuple[str, str]] = (),
    suffix_first: bool = False,
) -> FittedInfill:
    """Code Llama's infilling prompt for an editor request, cut to fit as llama.cpp cuts it: the text before
    the cursor loses lines from the top, the text after it from the bottom, and extra chunks go oldest
    first (the last chunk is the newest). `middle` (llama.cpp's `prompt`: the cursor's line so far) is
    always kept. Whole lines go, so consecutive keystrokes keep the same start and reuse the prompt cache.

    In PSM the typed `middle` goes after `<MID>`, as the start of the middle (llama.cpp's layout; FIM
    training splits at any character, so the model has seen middles that start mid-line): each keystroke
    then changes only the prompt's last tokens, and the prompt cache serves the prefix and the suffix.
    With the middle in front of `<SUF>` (the prefix's end) every keystroke would re-feed the suffix.
    """
    count = _counter(tokenizer)
    window = min(limits.window, limits.room // 2)
    extra_room = limits.room - window
    window -= 4  # <s> <PRE> <SUF> <MID>
    n_middle = count(middle, True) if middle else 0
    n_before, n_after = count(prefix, False), count(suffix, True)
    # The typed text is charged to the suffix's share, as llama.cpp does: the prefix keeps the same lines while
    # the user types, and the suffix (just before <MID>) loses its last lines, so the cached prompt still holds.
    after_quota = max(0, min(n_after, max(window // 4, window - n_before) - n_middle))
    before = _keep_lines(prefix, lambda t: count(t, False) + n_middle <= window - after_quota, from_top=True)
    after = _keep_lines(suffix, lambda t: count(t, True) <= after_quota, from_top=False)
    core = _layout(tokenizer, before, middle, after, suffix_first)
    if len(core) > limits.room:  # the cursor's own line alone is too long: keep its end
        return _fit_by_chars(tokenizer, before + middle, limits.room, suffix_first)
    spare, chunks = extra_room, []
    for chunk in reversed(extra):  # newest first, while they fit in their part of the room
        spare -= count(with_extra_context("", [chunk]), False)
        if spare < 0:
            break
        chunks.insert(0, chunk)
    while True:
        ids = _layout(tokenizer, with_extra_context(before, chunks), middle, after, suffix_first)
        kept = with_extra_context(before + middle, chunks)
        if len(ids) <= limits.room or not chunks:  # token counts of parts add up only nearly
            break
        chunks.pop(0)
    truncated = before != prefix or after != suffix or len(chunks) < len(extra)
    return FittedInfill(ids, kept, after, truncated, len(chunks))


def _layout(tokenizer, before: str, middle: str, after: str, suffix_first: bool) -> list[int]:
    """PSM: <PRE> before <SUF> after <MID> middle; SPM ends with the prefix anyway, so middle just extends it.

    Where the tokenizer leaves a prefix's trailing whitespace to the model (`infilling_echo`), the prompt
    ends before the trailing whitespace of `before + middle`, as an untyped one does: the rest of `before`'s
    whitespace and the typed text go after <MID>."""
    if suffix_first or not middle:
        return tokenizer.infilling_prompt(before + middle, after, suffix_first=suffix_first)
    typed = before + middle
    start, end = len(before) - len(tokenizer.infilling_echo(before)), len(typed) - len(tokenizer.infilling_echo(typed))
    return tokenizer.infilling_prompt(before, after) + (
        tokenizer.encode_infilling(typed[start:end]) if end > start else []
    )


_COUNTERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


_MEMO_CHARS = 64 << 10  # longer texts are counted each time: the memo stays within 256 x 64K chars


def _counter(tokenizer) -> Callable[[str, bool], int]:
    """count(text, infilling): its token count, remembered. An editor sends the same file and chunks with
    every keystroke, so fitting a keystroke's request mostly looks counts up instead of tokenizing."""
    count = _COUNTERS.get(tokenizer)
    if count is None:
        ref = weakref.ref(tokenizer)

        def measure(text: str, infilling: bool) -> int:
            tok = ref()
            return len(tok.encode_infilling(text) if infilling else tok.encode(text))

        memo = functools.lru_cache(maxsize=256)(measure)

        def count(text: str, infilling: bool) -> int:
            return memo(text, infilling) if len(text) <= _MEMO_CHARS else measure(text, infilling)

        _COUNTERS[tokenizer] = count
    return count


def _keep_lines(text: str, fits: Callable[[str], bool], *, from_top: bool) -> str:
    """The most whole lines of `text` that fit, dropped from the top (or the bottom); binary search."""
    if fits(text):
        return text
    lines = text.splitlines(keepends=True)
    kept = lambda k: "".join(lines[len(lines) - k :] if from_top else lines[:k])  # noqa: E731
    lo, hi = 0, len(lines) - 1  # lo lines always fit (0 does: the quota covers an empty text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(kept(mid)):
            lo = mid
        else:
            hi = mid - 1
    return kept(lo)


def _fit_by_chars(tokenizer, before: str, room: int, suffix_first: bool) -> FittedInfill:
    lo, hi = 0, len(before)
    while lo < hi:  # the longest end of `before` that fits with no suffix
        mid = (lo + hi + 1) // 2
        if len(tokenizer.infilling_prompt(before[-mid:] if mid else "", "", suffix_first=suffix_first)) <= room:
            lo = mid
        else:
            hi = mid - 1
    kept = before[len(before) - lo :]
    ids = tokenizer.infilling_prompt(kept, "", suffix_first=suffix_first)
    return FittedInfill(ids, kept, "", True, 0)


# -- infilling markers in a plain prompt (template-based clients) --------------------------------

CODE_LLAMA_MARKERS = ("<PRE>", "<SUF>", "<MID>")


def split_fim_markers(prompt: str, markers: Sequence[str] = CODE_LLAMA_MARKERS) -> tuple[str, str] | None:
    """(prefix, suffix) of a prompt written with Code Llama's infilling markers as text, or None.

    Template-based clients (Continue, llm-vscode) write `<PRE> {prefix} <SUF>{suffix} <MID>`; tokenized as
    plain text those markers mean nothing to the model. The space after `<PRE>` and those before `<SUF>`
    and `<MID>` belong to the format (they are the markers' own leading spaces), not to the code; text
    after `<MID>` is the start of the middle, so it joins the prefix.
    """
    pre, suf, mid = (re.escape(m) for m in markers)
    match = re.fullmatch(rf"(?:<s>)?\s*{pre} ?(.*?) ?{suf}(.*?) ?{mid} ?(.*)", prompt, flags=re.DOTALL)
    if match is None:
        return None
    prefix, suffix, middle = match.groups()
    return prefix + middle, suffix


__all__ = [
    "CODE_LLAMA_MARKERS",
    "FitLimits",
    "FittedInfill",
    "InfillResult",
    "InfillTask",
    "fit_infill",
    "infill",
    "infilling_prompt_ids",
    "split_at_cursor",
    "split_fim_markers",
    "with_extra_context",
]
