"""Packing tokenized documents into fixed-length training sequences.

Both modes keep the documents in order, so every sequence is one contiguous range of the
token stream (plus padding): the layout is just (start, length) per sequence, computed
from document lengths alone, and any shard can be (re)written without the others, which
is what makes `data prepare` resumable.

- concat: plain concatenate-and-chop (Llama); the last incomplete sequence is dropped.
- whole-files: a document that fits in a sequence never straddles two; the rest of a
  sequence is padded (loss mask 0). A document longer than a sequence starts a fresh
  one and is chopped. Long-context training wants this: whole files, whole context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

PackingMode = Literal["concat", "whole-files"]
PACKING_MODES: tuple[PackingMode, ...] = ("concat", "whole-files")


@dataclass(frozen=True)
class Layout:
    seq_len: int
    starts: np.ndarray  # int64, start of each sequence in the token stream
    lengths: np.ndarray  # int64, real tokens in each sequence (the rest is padding)
    dropped_tokens: int = 0  # concat: the incomplete tail

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def padding_tokens(self) -> int:
        return int(len(self) * self.seq_len - self.lengths.sum())


def pack_layout(doc_lengths: np.ndarray, seq_len: int, mode: PackingMode = "concat") -> Layout:
    """Where each sequence starts in the stream of documents `doc_lengths` (tokens each)."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    doc_lengths = np.asarray(doc_lengths, dtype=np.int64)
    total = int(doc_lengths.sum())
    if mode == "concat":
        n = total // seq_len
        return Layout(seq_len, np.arange(n, dtype=np.int64) * seq_len, np.full(n, seq_len, np.int64),
                      dropped_tokens=total - n * seq_len)
    if mode != "whole-files":
        raise ValueError(f"packing mode must be one of {', '.join(PACKING_MODES)}, got {mode!r}")
    starts, lengths = [], []
    seq_start, fill, pos = 0, 0, 0  # current sequence: stream offset and tokens in it; stream position
    for n in doc_lengths.tolist():
        if fill + n <= seq_len:
            fill += n
        else:
            if fill:
                starts.append(seq_start)
                lengths.append(fill)
            whole, rest = divmod(n, seq_len)
            starts.extend(range(pos, pos + whole * seq_len, seq_len))
            lengths.extend([seq_len] * whole)
            seq_start, fill = pos + whole * seq_len, rest
        pos += n
        if fill == seq_len:
            starts.append(seq_start)
            lengths.append(fill)
            seq_start, fill = pos, 0
    if fill:
        starts.append(seq_start)
        lengths.append(fill)
    return Layout(seq_len, np.asarray(starts, np.int64), np.asarray(lengths, np.int64))


def sequence_block(stream, layout: Layout, first: int, stop: int, pad_id: int
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Sequences first..stop-1 as a (n, seq_len) int array, and their loss mask (None when no padding)."""
    starts, lengths = layout.starts[first:stop], layout.lengths[first:stop]
    if len(starts) == 0:
        return np.zeros((0, layout.seq_len), np.int64), None
    if (lengths == layout.seq_len).all() and (np.diff(starts) == layout.seq_len).all():
        tokens = stream.read(int(starts[0]), int(starts[-1]) + layout.seq_len)  # one contiguous read
        return tokens.reshape(len(starts), layout.seq_len), None
    tokens = np.full((len(starts), layout.seq_len), pad_id, dtype=np.int64)
    mask = np.zeros((len(starts), layout.seq_len), dtype=np.uint8)
    for row, (s, n) in enumerate(zip(starts.tolist(), lengths.tolist())):
        tokens[row, :n] = stream.read(s, s + n)
        mask[row, :n] = 1
    return tokens, mask
