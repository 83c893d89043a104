"""When a row stops, decided from its text alone (pure functions, so the rules are testable without a model).

The rules follow llama.cpp's server, which editor plugins are written against: stop strings (any number),
`n_indent` (a new line indented less than the cursor's line ends the completion: the plugin only wants the
current block) and `t_max_predict_ms` (after that long, stop at the next newline: a partial suggestion now
beats a full one late).
"""

from __future__ import annotations

from collections.abc import Sequence

from codellama.generation.protocol import SamplingParams, truncate_at_stop


def skip_echo(echo: str, text: str) -> str:
    """`text` without the part of `echo` it starts with: what the model wrote after writing back the
    whitespace its prompt left out (all of it, or e.g. one of two newlines). While `text` is still all
    echo the result is empty, so a stream holds those characters back until the echo is over."""
    shared = 0
    while shared < min(len(echo), len(text)) and text[shared] == echo[shared]:
        shared += 1
    return text[shared:]


def drop_tail(tail: str, text: str) -> str:
    """`text` without `tail` at its end: a middle the model ended after writing the suffix's leading
    whitespace its prompt left out (`Tokenizer.infilling_tail`). A text that ends otherwise is kept."""
    return text[: len(text) - len(tail)] if tail and text.endswith(tail) else text


def indent_cut(text: str, n_indent: int) -> int | None:
    """Where llama.cpp's `n_indent` rule cuts `text`, or None.

    Every line after the first (which continues the cursor's line) is checked once it has a character past
    its leading spaces and tabs; one indented less than `n_indent` ends the text at that character (its
    indentation is kept, as llama.cpp does). A blank line counts as indentation 0.
    """
    start = text.find("\n")
    while start >= 0:
        pos = start + 1
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos < len(text) and pos - start - 1 < n_indent:
            return pos
        start = text.find("\n", start + 1)
    return None


def check_stop(text: str, new_from: int, params: SamplingParams, ms_since_first: float) -> tuple[str, str | None]:
    """The text to keep and why the row stops ("stop", "indent", "time"), or None to go on.

    `new_from`: where the latest token's text starts (the time rule fires only on a newline it added).
    """
    text, hit = truncate_at_stop(text, params.stop)
    if hit:
        return text, "stop"
    if params.stop_at is not None:
        end = params.stop_at(text)
        if end is not None:
            return text[:end], "stop"
    if params.n_indent:
        cut = indent_cut(text, params.n_indent)
        if cut is not None:
            return text[:cut], "indent"
    if params.time_limit_ms and ms_since_first > params.time_limit_ms and "\n" in text[new_from:]:
        return text, "time"
    return text, None


def _started(text: str, s: str, most: int) -> int:
    """The longest k <= `most` with `text` ending in the first k chars of `s` (0 if none)."""
    return next((k for k in range(min(most, len(text)), 0, -1) if text.endswith(s[:k])), 0)


def stop_holdback(text: str, stop: Sequence[str]) -> int:
    """How many trailing chars might be the start of a stop string (not yet safe to stream); a whole one
    has already stopped the row, so at most all but its last char."""
    return max((_started(text, s, len(s) - 1) for s in stop), default=0)


def safe_to_stream(text: str, stop: Sequence[str], tail: str = "") -> int:
    """How much of `text` can be sent now: not a possible stop-string start, not a possible start of the
    `tail` the row drops if it ends there (`drop_tail`; the whole of it too), not a half-decoded character."""
    safe = len(text) - max(stop_holdback(text, stop), _started(text, tail, len(tail)))
    while safe > 0 and text[safe - 1] == "\ufffd":  # a multi-byte character still being assembled
        safe -= 1
    return safe
