"""What every generator promises: the request and result types, the `Sink` a caller listens with, and the
`Generator` interface that evals, the instruct pipeline, infilling and the server are written against.

Nothing here knows about torch or HTTP, so a remote endpoint and the local model are interchangeable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

SEED_LIMIT = 1 << 64  # torch.Generator.manual_seed takes 0 <= seed < 2**64

# Why a row ended. "stop": end of text (<EOT>/EOS) or a stop string; "length": max_new_tokens or the end of
# the context; "indent": a new line indented less than `n_indent`; "time": a newline after `time_limit_ms`;
# "cancelled": its caller went away; "context": the prompt alone fills the context; "error": this row failed
# (the message is in `Completion.error`; its batch-mates are unaffected).
FINISH_REASONS = ("stop", "length", "indent", "time", "cancelled", "context", "error")


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop. Checked on construction, so a bad value fails its request only.

    Sampling applies top_k, then top_p, then min_p to the model's probabilities, then temperature to what is
    left (llama.cpp's order); 0 disables top_k and min_p, temperature 0 is greedy.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    stop: tuple[str, ...] = ()  # any number; the text ends before the earliest one
    seed: int | None = None
    n_indent: int = 0  # > 0: stop when a new line starts indented less than this (llama.cpp's n_indent)
    time_limit_ms: float = 0.0  # > 0: stop at the first newline after this long since the first token
    # In-process callers only (an endpoint is not told; applied to its text here): where the text so far may end,
    # or None to go on. E.g. a HumanEval chat answer ends once its code block closes (evals.humaneval_chat).
    stop_at: Callable[[str], int | None] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        checks = (
            (self.max_new_tokens >= 0, "max_new_tokens must be >= 0"),
            (self.temperature >= 0, "temperature must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (self.n_indent >= 0, "n_indent must be >= 0"),
            (self.time_limit_ms >= 0, "time_limit_ms must be >= 0"),
            (self.seed is None or 0 <= self.seed < SEED_LIMIT, f"seed must be in [0, 2**64), got {self.seed}"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))


@dataclass(frozen=True)
class GenerationRequest:
    """One completion to make. With a `suffix` it is an infilling request (Code Llama's PSM, or SPM with
    `suffix_first`); `prompt_ids`, when given, are used as the prompt as they are (the caller tokenized and
    fitted it, e.g. the server off its event loop); `cache_prompt` lets a local generator reuse the KV cache
    of a recent prompt that starts the same way."""

    prompt: str
    suffix: str | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    suffix_first: bool = False
    prompt_ids: tuple[int, ...] | None = None
    cache_prompt: bool = False


@dataclass
class Completion:
    text: str  # the new text only, cut before any stop string
    token_ids: list[int]
    finish_reason: str  # one of FINISH_REASONS
    prompt_tokens: int
    cached_tokens: int = 0  # prompt tokens whose KV came from the prompt cache instead of a forward pass
    error: str | None = None  # finish_reason "error": what went wrong


class Sink:
    """Listens to one request while it is generated (every method is optional: the defaults do nothing).

    Called from the generating thread: `text` with each new piece of the completion (the pieces add up to
    `Completion.text`), then `done` exactly once. `cancelled` is asked before every decode step; True makes
    the row leave the batch at that step with finish_reason "cancelled".
    """

    def text(self, delta: str) -> None:
        pass

    def done(self, completion: Completion) -> None:
        pass

    def cancelled(self) -> bool:
        return False


class Generator(Protocol):
    """The one generation interface (a local model or a remote endpoint).

    `generate(requests, sinks)` completes every request and returns completion i for `requests[i]`, whatever
    order the rows finish in. What callers may rely on:
    - greedy requests (temperature 0) are deterministic, and a seeded sample depends only on its own request,
      not on what it was batched with;
    - `sinks[i]` (when given) hears request i's text as it is made and its completion as soon as that row
      ends, before the call returns;
    - a request that cannot run (a prompt longer than the context, an invalid parameter) raises `ValueError`
      before anything is generated, unless the generator was told to answer it with finish_reason "context";
    - a failure inside one row during decoding ends that row with finish_reason "error"; the others go on.
    One call at a time: a generator is not meant to be called from two threads at once.
    """

    def generate(
        self, requests: Sequence[GenerationRequest], sinks: Sequence[Sink] | None = None
    ) -> list[Completion]: ...


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` before the earliest stop string."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
