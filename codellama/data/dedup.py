"""Deduplication: exact (content hash) and near-duplicate (MinHash + LSH over word shingles).

Near duplicates (a vendored copy with a changed header, a file per Python version) inflate
some files' weight and leak between splits. We estimate Jaccard similarity of word
5-gram sets with datasketch's MinHash, find candidates with its LSH index, confirm with
the MinHash estimate, and keep the first document of each cluster (stable, so reruns
agree).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import datasets
import numpy as np
import xxhash
from datasketch import MinHash, MinHashLSH
from tqdm.auto import tqdm

from codellama.data.workers import procs

log = logging.getLogger(__name__)

WORD = re.compile(r"\w+")
SCHEME = "affine32"  # datasketch's permutation scheme (32-bit hashes from xxh32)


@dataclass(frozen=True)
class DedupConfig:
    exact: bool = True
    near: bool = True
    threshold: float = 0.85  # Jaccard similarity of shingle sets above which two files are duplicates
    num_perm: int = 128
    shingle_size: int = 5  # words per shingle

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"near-duplicate threshold must be strictly between 0 and 1, got {self.threshold}")
        if self.num_perm < 16 or self.shingle_size < 1:
            raise ValueError("num_perm must be at least 16 and shingle_size at least 1")
        try:
            MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        except ValueError:
            raise ValueError(
                f"near-duplicate threshold {self.threshold} is too close to 1 for {self.num_perm} "
                "permutations (LSH needs at least 2 bands)"
            ) from None


def exact_dedup(docs: datasets.Dataset) -> tuple[datasets.Dataset, dict[str, int]]:
    """Keep the first document of each content hash."""
    seen: set[str] = set()
    keep, removed_bytes = [], 0
    for i, (h, text) in enumerate(zip(docs["hash"], docs["text"])):
        if h in seen:
            removed_bytes += len(text.encode("utf-8", "surrogatepass"))
        else:
            seen.add(h)
            keep.append(i)
    return docs.select(keep), {"documents": len(docs) - len(keep), "bytes": removed_bytes}


def shingles(text: str, size: int) -> set[bytes]:
    """Word n-grams: robust to whitespace and punctuation changes."""
    words = WORD.findall(text)
    if len(words) <= size:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + size]).encode() for i in range(len(words) - size + 1)}


def minhash_signatures(texts: list[str], config: DedupConfig) -> list[np.ndarray]:
    hashes = MinHash.bulk(
        [list(shingles(t, config.shingle_size)) for t in texts],
        num_perm=config.num_perm,
        hashfunc=xxhash.xxh32_intdigest,
        seed=1,
        scheme=SCHEME,
    )
    return [m.hashvalues for m in hashes]


def near_dedup(
    docs: datasets.Dataset, config: DedupConfig = DedupConfig(), *, num_proc: int | None = None
) -> tuple[datasets.Dataset, dict[str, int]]:
    """Drop documents whose estimated Jaccard similarity to an earlier kept one is >= threshold."""

    def signatures(batch):
        return {"minhash": minhash_signatures(batch["text"], config)}

    if len(docs) == 0:
        return docs, {"documents": 0, "bytes": 0}
    signed = docs.map(
        signatures,
        batched=True,
        batch_size=256,
        num_proc=procs(num_proc, len(docs)),
        remove_columns=docs.column_names,
        desc="minhash",
        load_from_cache_file=False,
    )
    signed = signed.with_format("numpy")
    lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
    keep, removed_bytes, kept_hashes = [], 0, {}
    sigs = signed["minhash"]
    for i in tqdm(range(len(docs)), desc="near-dedup", unit="doc", leave=False, disable=len(docs) < 1000):
        m = MinHash(num_perm=config.num_perm, hashvalues=sigs[i], seed=1, scheme=SCHEME)
        duplicate = any(m.jaccard(kept_hashes[j]) >= config.threshold for j in lsh.query(m))
        if duplicate:
            removed_bytes += len(docs[i]["text"].encode("utf-8", "surrogatepass"))
            continue
        lsh.insert(i, m)
        kept_hashes[i] = m
        keep.append(i)
    log.info("near-dedup removed %d of %d documents", len(docs) - len(keep), len(docs))
    return docs.select(keep), {"documents": len(docs) - len(keep), "bytes": removed_bytes}
