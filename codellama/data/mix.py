"""Data mixtures: sources with weights, sampled to a target size (Code Llama: 85/8/7).

Weights are shares of the output's bytes (a tokenizer-free proxy for tokens). A source
that has fewer bytes than its share is repeated (whole passes in a fresh random order,
then a random part), and that is logged and recorded, never silent. Without a target
size, the mixture is the largest one in which no source repeats.

A mixture file (YAML):

    seed: 0                     # optional (default: --seed)
    total_bytes: 200_000_000    # optional
    sources:
      - {name: code, source: path/to/repos, weight: 0.85}
      - {name: nl-code, source: so.jsonl, weight: 0.08, text_column: body}
      - {name: nl, source: hf:wikitext:wikitext-2-raw-v1@train, weight: 0.07, language: text}
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np

from codellama.data.ingest import SourceSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MixSource:
    spec: SourceSpec
    weight: float


@dataclass(frozen=True)
class MixSpec:
    sources: tuple[MixSource, ...]
    total_bytes: int | None = None
    seed: int | None = None
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if not self.sources:
            raise ValueError("a mixture needs at least one source")
        names = [s.spec.label for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"mixture source names must be unique, got {names}")
        if any(not (s.weight > 0 and math.isfinite(s.weight)) for s in self.sources):
            raise ValueError("mixture weights must be positive numbers")

    @property
    def shares(self) -> dict[str, float]:
        total = sum(s.weight for s in self.sources)
        return {s.spec.label: s.weight / total for s in self.sources}


def load_mix(path: str | os.PathLike) -> MixSpec:
    """Read a mixture YAML file (see the module docstring)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mixture file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("sources"), list):
        raise ValueError(f"{path}: expected a mapping with a `sources:` list")
    known = {"name", "source", "weight", "text_column", "language", "languages"}
    sources = []
    for i, item in enumerate(raw["sources"]):
        if not isinstance(item, dict) or "source" not in item or "weight" not in item:
            raise ValueError(f"{path}: source #{i + 1} needs `source` and `weight`")
        unknown = set(item) - known
        if unknown:
            raise ValueError(f"{path}: source #{i + 1} has unknown keys {sorted(unknown)} (known: {sorted(known)})")
        location = str(item["source"])
        if location != "stdlib" and not Path(location).is_absolute() and (path.parent / location).exists():
            location = str(path.parent / location)  # relative to the mixture file
        spec = SourceSpec(
            location,
            name=item.get("name") or str(item["source"]),
            text_column=item.get("text_column"),
            language=item.get("language"),
            languages=tuple(item.get("languages") or ()),
        )
        sources.append(MixSource(spec, float(item["weight"])))
    total = raw.get("total_bytes")
    return MixSpec(tuple(sources), total_bytes=int(total) if total is not None else None, seed=raw.get("seed"))


def plan_mixture(
    sizes: dict[str, list[int]], shares: dict[str, float], total_bytes: int | None, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Choose document indices per source so each gets its share of `total_bytes`.

    sizes: source -> byte size of each of its documents. Returns source -> indices (in
    sampling order, with repeats when a source is too small) and per-source stats.
    """
    available = {name: int(sum(s)) for name, s in sizes.items()}
    empty = [name for name in shares if available.get(name, 0) == 0]
    if empty:
        raise ValueError(f"mixture sources with no documents left after filtering: {', '.join(empty)}")
    if total_bytes is None:  # the largest mixture that repeats nothing
        total_bytes = int(min(available[n] / shares[n] for n in shares))
    rng = np.random.default_rng(seed)
    chosen, stats = {}, {}
    for name in sorted(shares):
        target = shares[name] * total_bytes
        doc_sizes = np.asarray(sizes[name], dtype=np.int64)
        full_passes = int(target // available[name])
        parts = [rng.permutation(len(doc_sizes)) for _ in range(full_passes)]
        order = rng.permutation(len(doc_sizes))
        rest = target - full_passes * available[name]
        take = int(np.searchsorted(np.cumsum(doc_sizes[order]), rest, side="left")) + 1 if rest > 0 else 0
        parts.append(order[: min(take, len(order))])
        chosen[name] = np.concatenate(parts)
        picked = int(doc_sizes[chosen[name]].sum())
        epochs = picked / available[name]
        stats[name] = {
            "share": round(shares[name], 6),
            "documents": int(len(chosen[name])),
            "bytes": picked,
            "available_documents": int(len(doc_sizes)),
            "available_bytes": available[name],
            "epochs": round(epochs, 4),
        }
        if epochs > 1.0 + 1e-9:
            log.warning(
                "mixture: source %s is repeated %.2f times (%d bytes available, %d wanted)",
                name,
                epochs,
                available[name],
                int(target),
            )
    return chosen, stats


def apply_mixture(docs: datasets.Dataset, spec: MixSpec, seed: int) -> tuple[datasets.Dataset, dict[str, dict]]:
    """Sample `docs` (with a `source` column) by the mixture; rows come out grouped by source."""
    sources = docs["source"]
    texts_bytes = [len(t.encode("utf-8", "surrogatepass")) for t in docs["text"]]
    by_source: dict[str, list[int]] = {name: [] for name in spec.shares}
    for i, name in enumerate(sources):
        if name in by_source:
            by_source[name].append(i)
    sizes = {name: [texts_bytes[i] for i in rows] for name, rows in by_source.items()}
    chosen, stats = plan_mixture(sizes, spec.shares, spec.total_bytes, spec.seed if spec.seed is not None else seed)
    indices = [by_source[name][int(j)] for name in sorted(chosen) for j in chosen[name]]
    return docs.select(indices), stats
