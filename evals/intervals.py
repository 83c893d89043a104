"""Bootstrap confidence intervals over problems (or files): how sure a score is, and whether a gap is real.

A benchmark of 150 problems scores a model with a sampling error of several points, so "X beats Y" needs an
interval. These are percentile bootstrap intervals: the problems are resampled with replacement and the
statistic recomputed `resamples` times. Resampling whole problems (not tokens or samples) keeps the
dependence inside a problem. With `weights` (e.g. token counts) the statistic is the weighted mean, so a
per-problem mean NLL weighted by its tokens gives the token-weighted corpus NLL and its interval.
Everything is deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate with a bootstrap interval; `n` = how many units (problems, files) it rests on."""

    mean: float
    low: float
    high: float
    n: int
    level: float = 0.95

    def to_json(self, digits: int = 6) -> dict:
        d = asdict(self)
        return {k: round(v, digits) if isinstance(v, float) else v for k, v in d.items()}

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high


def _as_arrays(values: Sequence[float], weights: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("no values to make an interval of")
    if not np.all(np.isfinite(x)):
        raise ValueError("the values contain NaN or infinity")
    if weights is None:
        return x, np.ones_like(x)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != x.shape:
        raise ValueError(f"{w.size} weights for {x.size} values")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    return x, w


def _check(level: float, resamples: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")


def _bootstrap(x: np.ndarray, w: np.ndarray, level: float, resamples: int, seed: int) -> Interval:
    mean = float((x * w).sum() / w.sum())
    n = x.size
    rng = np.random.default_rng(seed)
    # Resampled index counts per unit: a [resamples, n] multinomial, the same draw as sampling indices,
    # without materialising resamples x n indices' worth of gathers.
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
    cw = counts * w
    total = cw.sum(axis=1)
    # A resample that drew only zero-weight units has no weighted mean; it carries no information either way.
    ok = total > 0
    stats = (cw[ok] @ x) / total[ok]
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha]) if stats.size else (mean, mean)
    # Float noise must not put a constant's mean outside its own (zero-width) interval.
    return Interval(mean, float(min(low, mean)), float(max(high, mean)), n, level)


def bootstrap_mean(
    values: Sequence[float],
    *,
    weights: Sequence[float] | None = None,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """The (weighted) mean of per-problem values with a percentile bootstrap interval over problems."""
    _check(level, resamples)
    x, w = _as_arrays(values, weights)
    return _bootstrap(x, w, level, resamples, seed)


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    *,
    weights: Sequence[float] | None = None,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """The mean of a - b over the same problems (a[i] and b[i] score problem i), with a bootstrap interval.

    Pairing removes the spread between problems that both share, so it detects a gap that two
    separate intervals would hide: "X beats Y" holds at the level when the interval excludes 0.
    """
    _check(level, resamples)
    xa, w = _as_arrays(a, weights)
    xb, _ = _as_arrays(b, weights)
    if xa.shape != xb.shape:
        raise ValueError(f"paired values differ in length: {xa.size} and {xb.size}")
    return _bootstrap(xa - xb, w, level, resamples, seed)


def compare(
    a: dict[str, float],
    b: dict[str, float],
    *,
    weights: dict[str, float] | None = None,
    level: float = 0.95,
    seed: int = 0,
) -> dict:
    """Paired difference a - b over the problems both score (keyed by problem id), as a report entry:
    {"mean", "low", "high", "problems"}. E.g. per-problem pass@1 of two models, or of PSM and prefix-only."""
    shared = [k for k in a if k in b]
    if not shared:
        raise ValueError("the two score sets share no problems")
    iv = paired_difference(
        [a[k] for k in shared],
        [b[k] for k in shared],
        weights=[weights[k] for k in shared] if weights is not None else None,
        level=level,
        seed=seed,
    )
    return {"mean": round(iv.mean, 6), "low": round(iv.low, 6), "high": round(iv.high, 6), "problems": len(shared)}


__all__ = ["Interval", "bootstrap_mean", "compare", "paired_difference"]
