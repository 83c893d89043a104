"""Exact and near-duplicate questions: a model asked for many lists repeats itself.

The data pipeline's dedup does the work (content hash, then MinHash/LSH); questions only differ
in what counts as "the same": text normalised for case, spaces and punctuation, and shorter
shingles with a lower threshold, because a question is one sentence, not a file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from codellama.data import dedup
from codellama.data.ingest import content_hash


@dataclass(frozen=True)
class DedupConfig:
    threshold: float = 0.7  # Jaccard similarity of 3-word shingle sets above which two questions are one
    shingle_size: int = 3
    num_perm: int = 128


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def find_duplicates(texts: list[str], cfg: DedupConfig = DedupConfig()) -> dict[int, str]:
    """Index of each duplicate -> "exact" | "near"; the first of each group is kept."""
    import datasets

    if not texts:
        return {}
    norm = [normalise(t) for t in texts]
    docs = datasets.Dataset.from_dict(
        {"text": norm, "hash": [content_hash(t) for t in norm], "row": list(range(len(texts)))}
    )
    exact, _ = dedup.exact_dedup(docs)
    near, _ = dedup.near_dedup(
        exact, dedup.DedupConfig(threshold=cfg.threshold, num_perm=cfg.num_perm, shingle_size=cfg.shingle_size)
    )
    after_exact, kept = set(exact["row"]), set(near["row"])
    return {i: ("exact" if i not in after_exact else "near") for i in range(len(texts)) if i not in kept}
