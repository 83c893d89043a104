"""Packed token shards: fixed-length sequences in memory-mapped files with a JSON index.

Layout of a shard directory:
    index.json              written last (atomically): the directory is complete iff it exists
    shard-00000.tokens      n * seq_len tokens, little-endian uint16 (vocab < 65,536) or uint32
    shard-00000.mask        optional, n * seq_len uint8: 1 where the token counts in the loss
Any sequence is read in O(1) (shard = i // sequences_per_shard), so a job can shard across
data-parallel ranks and resume at an exact sample.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from codellama.io import atomic_write_bytes, atomic_write_json, read_json_file

FORMAT = "codellama-shards/1"
INDEX = "index.json"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


@dataclass
class ShardIndex:
    seq_len: int
    vocab_size: int
    sequences_per_shard: int
    num_sequences: int = 0
    shards: list[dict] = field(default_factory=list)  # {"tokens": file, "mask": file|None, "num_sequences": n}
    has_loss_mask: bool = False
    meta: dict = field(default_factory=dict)
    format: str = FORMAT

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ShardIndex:
        path = Path(directory) / INDEX
        raw = read_json_file(path, missing=f"{directory} is not a finished shard directory (no {INDEX})")
        if raw.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown shard format {raw.get('format')!r}")
        return cls(**raw)


class ShardWriter:
    """Appends sequences; each shard file is written atomically when full, the index last."""

    def __init__(
        self,
        directory: str | os.PathLike,
        seq_len: int,
        vocab_size: int,
        *,
        sequences_per_shard: int = 8192,
        with_loss_mask: bool = False,
        on_flush: Callable[[dict], None] | None = None,
    ):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.index = ShardIndex(seq_len, vocab_size, sequences_per_shard, has_loss_mask=with_loss_mask)
        self._tokens: list[np.ndarray] = []
        self._masks: list[np.ndarray] = []
        self.on_flush = on_flush  # called with each finished shard's entry (a resumable job records it)

    def resume(self, shards: list[dict]) -> None:
        """Continue after the shards of an interrupted run, which must be on disk and complete."""
        if self.index.shards or self._tokens:
            raise ValueError("resume() must come before any add()")
        for n, entry in enumerate(shards):
            if entry["tokens"] != f"shard-{n:05d}.tokens":
                raise ValueError(f"shard list out of order at {entry['tokens']}")
            expected = {
                "tokens": entry["num_sequences"] * self.index.seq_len * self.index.dtype.itemsize,
                "mask": entry["num_sequences"] * self.index.seq_len,
            }
            for kind, size in expected.items():
                if entry.get(kind) is None:
                    continue
                path = self.directory / entry[kind]
                if not path.is_file() or path.stat().st_size != size:
                    raise ValueError(f"cannot resume: {path} is missing or has the wrong size")
        self.index.shards = [dict(e) for e in shards]
        self.index.num_sequences = sum(e["num_sequences"] for e in shards)

    def add(self, tokens, loss_mask=None) -> None:
        tokens = np.asarray(tokens)
        if tokens.shape != (self.index.seq_len,):
            raise ValueError(f"sequence has shape {tokens.shape}, expected ({self.index.seq_len},)")
        self._tokens.append(tokens.astype(self.index.dtype, copy=False))
        if self.index.has_loss_mask:
            if loss_mask is None:
                raise ValueError("this shard set has a loss mask: pass loss_mask for every sequence")
            self._masks.append(np.asarray(loss_mask, dtype=np.uint8))
        if len(self._tokens) == self.index.sequences_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self._tokens:
            return
        n = len(self.index.shards)
        entry = {"tokens": f"shard-{n:05d}.tokens", "mask": None, "num_sequences": len(self._tokens)}
        atomic_write_bytes(self.directory / entry["tokens"], np.stack(self._tokens).tobytes())
        if self.index.has_loss_mask:
            entry["mask"] = f"shard-{n:05d}.mask"
            atomic_write_bytes(self.directory / entry["mask"], np.stack(self._masks).tobytes())
        self.index.shards.append(entry)
        self.index.num_sequences += len(self._tokens)
        self._tokens, self._masks = [], []
        if self.on_flush is not None:
            self.on_flush(entry)

    def finish(self, meta: dict | None = None) -> ShardIndex:
        self.flush()
        if meta:
            self.index.meta.update(meta)
        atomic_write_json(self.directory / INDEX, asdict(self.index))
        return self.index


class TokenShards:
    """Random access to packed sequences: `shards[i]` is an int64 array of `seq_len` tokens."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.index = ShardIndex.load(directory)
        self._starts = np.cumsum([0] + [s["num_sequences"] for s in self.index.shards])
        self._maps: dict[tuple[int, str], np.memmap] = {}

    @property
    def seq_len(self) -> int:
        return self.index.seq_len

    @property
    def vocab_size(self) -> int:
        return self.index.vocab_size

    @property
    def has_loss_mask(self) -> bool:
        return self.index.has_loss_mask

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"sequence {i} out of range (0..{len(self) - 1})")
        shard = int(np.searchsorted(self._starts, i, side="right") - 1)
        return shard, i - int(self._starts[shard])

    def _map(self, shard: int, kind: str) -> np.memmap:
        key = (shard, kind)
        if key not in self._maps:
            entry = self.index.shards[shard]
            dtype = self.index.dtype if kind == "tokens" else np.uint8
            path = self.directory / entry[kind]
            expected = entry["num_sequences"] * self.seq_len * np.dtype(dtype).itemsize
            if path.stat().st_size != expected:
                raise ValueError(f"{path} has {path.stat().st_size} bytes, expected {expected} (truncated shard?)")
            self._maps[key] = np.memmap(path, dtype=dtype, mode="r", shape=(entry["num_sequences"], self.seq_len))
        return self._maps[key]

    def __getitem__(self, i: int) -> np.ndarray:
        shard, row = self._locate(int(i))
        return self._map(shard, "tokens")[row].astype(np.int64)

    def loss_mask(self, i: int) -> np.ndarray:
        """1 where the token is a training target; all ones when the set has no mask."""
        if not self.has_loss_mask:
            return np.ones(self.seq_len, dtype=np.uint8)
        shard, row = self._locate(int(i))
        return np.array(self._map(shard, "mask")[row])
