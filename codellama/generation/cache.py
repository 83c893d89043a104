"""The prompt cache: the KV of recent prompts, so a prompt that starts like one of them skips that part.

An editor sends a request on every keystroke; consecutive requests share everything up to the cursor
(extra context chunks, the file above it). Reusing the longest common token prefix of a recent prompt
turns a full prefill into a short one. Memory is bounded by bytes; the least recently used entry goes
first, and an entry that a newer prompt mostly repeats is replaced by it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(eq=False)
class CachedPrefix:
    """The KV of the first `len(tokens)` tokens of a prompt: per layer (keys, values), [kv_heads, n, head_dim]."""

    tokens: torch.Tensor  # int64 [n], on the CPU
    layers: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def nbytes(self) -> int:
        """Memory held, counting whole storages: a view of a batch's KV keeps that batch's spare room alive."""
        return sum(_held(k) + _held(v) for k, v in self.layers)


def _held(t: torch.Tensor) -> int:
    return max(t.numel() * t.element_size(), t.untyped_storage().nbytes())


def _compact(t: torch.Tensor) -> torch.Tensor:
    """`t`, copied if it is a view into a much larger storage (a short prompt in a batch's KV, with room to grow)."""
    return t.clone() if 4 * _held(t) > 5 * t.numel() * t.element_size() else t


def common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """Length of the longest common prefix of two 1-D token tensors."""
    m = min(len(a), len(b))
    differ = (a[:m] != b[:m]).nonzero()
    return int(differ[0]) if len(differ) else m


class PromptCache:
    """Recent prompts' KV (used from the decoding thread only)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.entries: list[CachedPrefix] = []  # least recently used first
        self.hits = 0
        self.reused_tokens = 0

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    def lookup(self, ids: list[int]) -> tuple[int, CachedPrefix | None]:
        """The entry sharing the longest token prefix with `ids`, and that length (0, None: no use)."""
        if not self.entries or not ids:
            return 0, None
        tokens = torch.tensor(ids, dtype=torch.long)
        best, entry = max(((common_prefix(e.tokens, tokens), e) for e in self.entries), key=lambda x: x[0])
        if best == 0:
            return 0, None
        self.entries.remove(entry)
        self.entries.append(entry)
        return best, entry

    def store(self, ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep a prompt's KV, unless an entry already holds it; entries the new one repeats half or more of
        are dropped (consecutive keystrokes: only the newest is worth keeping). A prompt larger than the whole
        budget keeps its longest prefix that fits: the next keystroke still reuses that part."""
        if not ids:
            return
        new = CachedPrefix(torch.tensor(ids, dtype=torch.long), [(_compact(k), _compact(v)) for k, v in layers])
        if new.nbytes > self.max_bytes:
            per_token = sum(k[:, 0].numel() * k.element_size() + v[:, 0].numel() * v.element_size() for k, v in layers)
            fit = self.max_bytes // per_token
            if fit == 0:
                return
            log.debug("prompt of %d tokens exceeds the prompt cache: keeping its first %d", len(ids), fit)
            new = CachedPrefix(new.tokens[:fit], [(k[:, :fit].clone(), v[:, :fit].clone()) for k, v in layers])
        kept = []
        for e in self.entries:
            shared = common_prefix(e.tokens, new.tokens)
            if shared == len(new.tokens):  # an entry already holds all of it
                self.entries.remove(e)
                self.entries.append(e)
                return
            if shared == len(e.tokens) or 2 * shared >= len(e.tokens):
                continue  # superseded: the new entry covers it (or most of it)
            kept.append(e)
        kept.append(new)
        while sum(e.nbytes for e in kept) > self.max_bytes:
            kept.pop(0)
        self.entries = kept

    def note_hit(self, tokens: int) -> None:
        self.hits += 1
        self.reused_tokens += tokens
