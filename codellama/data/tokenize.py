"""Tokenize documents (with the FIM transform) through `datasets.map`, batched and multiprocess.

The FIM randomness of a document depends only on (seed, its position), so the result is
the same for any batch size or number of worker processes: reruns are byte-identical.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import asdict

import datasets
import numpy as np

from codellama.data.fim import MODES, FimOptions, document_rng, fim_tokens_batch, fim_transform
from codellama.data.workers import procs
from codellama.tokenizer import Tokenizer

SPAN_KINDS = ("none", "char", "syntax")
TOKEN_FEATURES = datasets.Features(
    {
        "input_ids": datasets.List(datasets.Value("int32")),
        "fim": datasets.Value("int8"),  # index into MODES
        "span": datasets.Value("int8"),  # index into SPAN_KINDS
    }
)
_TOKENIZERS: dict[str, Tokenizer] = {}


class FimEncoder:
    """The `datasets.map` function: documents -> BOS + FIM-formatted tokens + EOS.

    Picklable (the tokenizer pickles as its file contents), so each worker process builds its
    own tokenizer once and keeps it for every batch it is given.
    """

    def __init__(self, tokenizer: Tokenizer, options: FimOptions, seed: int, num_threads: int = 1):
        self.key = tokenizer.fingerprint()
        _TOKENIZERS.setdefault(self.key, tokenizer)
        self.state = pickle.dumps(tokenizer)
        self.options, self.seed, self.num_threads = options, seed, num_threads

    def __getstate__(self):
        return {
            "tokenizer": self.state,
            "key": self.key,
            "options": asdict(self.options),
            "seed": self.seed,
            "num_threads": self.num_threads,
        }

    def __setstate__(self, state):
        self.state, self.key, self.seed = state["tokenizer"], state["key"], state["seed"]
        self.options, self.num_threads = FimOptions(**state["options"]), state["num_threads"]

    @property
    def tokenizer(self) -> Tokenizer:
        if self.key not in _TOKENIZERS:
            _TOKENIZERS[self.key] = pickle.loads(self.state)
        return _TOKENIZERS[self.key]

    def __call__(self, batch: dict, indices: list[int]) -> dict:
        samples = [
            fim_transform(text, document_rng(self.seed, i), self.options, language)
            for text, language, i in zip(batch["text"], batch["language"], indices)
        ]
        ids = fim_tokens_batch(samples, self.tokenizer, num_threads=self.num_threads)
        return {
            "input_ids": [np.array(x, dtype=np.int32) for x in ids],
            "fim": [MODES.index(s.mode) for s in samples],
            "span": [SPAN_KINDS.index(s.span) for s in samples],
        }


def tokenize_documents(
    docs: datasets.Dataset,
    tokenizer: Tokenizer,
    options: FimOptions,
    seed: int,
    *,
    num_proc: int = 1,
    cache_file: str | os.PathLike | None = None,
    batch_size: int = 64,
) -> datasets.Dataset:
    """docs (text, language, ...) -> rows of input_ids / fim / span, in the same order.

    With num_proc > 1 the work is split over processes by datasets; with one process,
    the tokenizer's own threads use the cores instead.
    """
    workers = procs(num_proc, len(docs), min_rows_per_proc=4)
    encoder = FimEncoder(tokenizer, options, seed, num_threads=1 if workers else max(1, num_proc))
    return docs.map(
        encoder,
        batched=True,
        batch_size=batch_size,
        with_indices=True,
        num_proc=workers,
        remove_columns=docs.column_names,
        features=TOKEN_FEATURES,
        cache_file_name=str(cache_file) if cache_file else None,
        desc="fim+tokenize",
    )


def token_counts(tokens: datasets.Dataset) -> np.ndarray:
    """Tokens per document, without reading the tokens."""
    import pyarrow.compute as pc

    column = tokens.data.column("input_ids")
    return np.concatenate(
        [pc.list_value_length(c).to_numpy(zero_copy_only=False) for c in column.chunks] or [np.zeros(0, np.int64)]
    ).astype(np.int64)


class TokenStream:
    """The tokenized documents as one contiguous stream, read by range (memory-mapped, no copy of the whole)."""

    def __init__(self, tokens: datasets.Dataset):
        if tokens._indices is not None:
            tokens = tokens.flatten_indices()
        self._chunks = [c.flatten().to_numpy(zero_copy_only=False) for c in tokens.data.column("input_ids").chunks]
        self._starts = np.cumsum([0] + [len(c) for c in self._chunks])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def read(self, start: int, stop: int) -> np.ndarray:
        first = int(np.searchsorted(self._starts, start, side="right") - 1)
        parts, pos, k = [], start, first
        while pos < stop:
            base = int(self._starts[k])
            end = min(stop, int(self._starts[k + 1]))
            parts.append(self._chunks[k][pos - base : end - base])
            pos, k = end, k + 1
        return np.concatenate(parts) if len(parts) != 1 else parts[0]
