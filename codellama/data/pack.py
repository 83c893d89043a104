"""Packing tokenized documents into fixed-length training sequences.

A layout is computed from document lengths alone (deterministic), so any shard can be
(re)written without the others, which is what makes `data prepare` resumable. Each sequence is
a few ranges ("segments") of the token stream, plus padding.

- concat: plain concatenate-and-chop (Llama), documents in order, one segment per sequence;
  the last incomplete sequence is dropped.
- whole-files: a document that fits in a sequence never straddles two; the rest of a sequence
  is padding (loss mask 0). A document longer than a sequence fills whole sequences with its
  head and its tail is packed like a short document. Documents go into sequences best-fit
  decreasing (each, longest first, into the fullest sequence that still has room): on the
  stdlib that pads 0.1% of a 16k-token sequence set where stream order padded 17.8% (4k: 0.0%
  against 12.6%).
  Long-context training wants this: whole files, whole context.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Literal

import numpy as np

PackingMode = Literal["concat", "whole-files"]
PACKING_MODES: tuple[PackingMode, ...] = ("concat", "whole-files")


@dataclass(frozen=True)
class Layout:
    seq_len: int
    starts: np.ndarray  # int64, start of each segment in the token stream
    lengths: np.ndarray  # int64, tokens in each segment
    offsets: np.ndarray | None = None  # sequence i = segments offsets[i]:offsets[i+1]; None: one each
    dropped_tokens: int = 0  # concat: the incomplete tail

    def __len__(self) -> int:
        return len(self.starts) if self.offsets is None else len(self.offsets) - 1

    def segments(self, sequence: int) -> slice:
        return (
            slice(sequence, sequence + 1)
            if self.offsets is None
            else slice(int(self.offsets[sequence]), int(self.offsets[sequence + 1]))
        )

    @property
    def sequence_lengths(self) -> np.ndarray:
        """Real (unpadded) tokens per sequence."""
        if self.offsets is None:
            return self.lengths
        return np.add.reduceat(self.lengths, self.offsets[:-1]) if len(self) else np.zeros(0, np.int64)

    @property
    def padding_tokens(self) -> int:
        return int(len(self) * self.seq_len - self.lengths.sum())


def pack_layout(doc_lengths: np.ndarray, seq_len: int, mode: PackingMode = "concat") -> Layout:
    """Where each sequence's tokens are in the stream of documents `doc_lengths` (tokens each)."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    doc_lengths = np.asarray(doc_lengths, dtype=np.int64)
    total = int(doc_lengths.sum())
    if mode == "concat":
        n = total // seq_len
        return Layout(
            seq_len,
            np.arange(n, dtype=np.int64) * seq_len,
            np.full(n, seq_len, np.int64),
            dropped_tokens=total - n * seq_len,
        )
    if mode != "whole-files":
        raise ValueError(f"packing mode must be one of {', '.join(PACKING_MODES)}, got {mode!r}")
    return _best_fit_decreasing(doc_lengths, seq_len)


def _best_fit_decreasing(doc_lengths: np.ndarray, seq_len: int) -> Layout:
    doc_starts = np.concatenate([[0], np.cumsum(doc_lengths)[:-1]]).astype(np.int64)
    full, rest = np.divmod(doc_lengths, seq_len)
    sequences: list[list[tuple[int, int]]] = [
        [(int(s) + k * seq_len, seq_len)] for s, f in zip(doc_starts.tolist(), full.tolist()) for k in range(f)
    ]
    piece_starts, piece_lengths = doc_starts + full * seq_len, rest
    keep = piece_lengths > 0
    piece_starts, piece_lengths = piece_starts[keep], piece_lengths[keep]
    order = np.lexsort((piece_starts, -piece_lengths))  # longest first; ties in stream order
    room: list[tuple[int, int]] = []  # (free tokens, sequence index), sorted: the fullest fitting one is a bisect
    for start, n in zip(piece_starts[order].tolist(), piece_lengths[order].tolist()):
        at = bisect.bisect_left(room, (n, -1))
        if at < len(room):
            free, index = room.pop(at)
        else:
            free, index = seq_len, len(sequences)
            sequences.append([])
        sequences[index].append((start, n))
        if free - n:
            bisect.insort(room, (free - n, index))
    counts = np.fromiter((len(s) for s in sequences), np.int64, len(sequences))
    flat = [seg for s in sequences for seg in s]
    return Layout(
        seq_len,
        np.asarray([a for a, _ in flat], np.int64).reshape(-1),
        np.asarray([n for _, n in flat], np.int64).reshape(-1),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
    )


def sequence_block(stream, layout: Layout, first: int, stop: int, pad_id: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Sequences first..stop-1 as a (n, seq_len) int array, and their loss mask (None when no padding)."""
    n_rows = max(0, min(stop, len(layout)) - first)
    if n_rows == 0:
        return np.zeros((0, layout.seq_len), np.int64), None
    if layout.offsets is None:
        starts, lengths = layout.starts[first : first + n_rows], layout.lengths[first : first + n_rows]
        if (lengths == layout.seq_len).all() and (np.diff(starts) == layout.seq_len).all():
            tokens = stream.read(int(starts[0]), int(starts[-1]) + layout.seq_len)  # one contiguous read
            return tokens.reshape(n_rows, layout.seq_len), None
    tokens = np.full((n_rows, layout.seq_len), pad_id, dtype=np.int64)
    mask = np.zeros((n_rows, layout.seq_len), dtype=np.uint8)
    for row in range(n_rows):
        segments = layout.segments(first + row)
        at = 0
        for s, n in zip(layout.starts[segments].tolist(), layout.lengths[segments].tolist()):
            tokens[row, at : at + n] = stream.read(s, s + n)
            at += n
        mask[row, :at] = 1
    return tokens, mask
