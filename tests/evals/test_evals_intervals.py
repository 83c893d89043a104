"""Bootstrap intervals: known cases, weighting, pairing, determinism; pass@1 intervals in the reports."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evals.intervals import bootstrap_mean, compare, paired_difference
from evals.report import summarize


def test_constant_values_give_a_zero_width_interval():
    iv = bootstrap_mean([0.25] * 30)
    assert (iv.mean, iv.low, iv.high, iv.n) == (0.25, 0.25, 0.25, 30)


def test_a_binomial_score_is_near_the_normal_approximation():
    """60 of 200 problems solved: the 95% half-width should be close to 1.96 * sqrt(p(1-p)/n) = 6.4 points."""
    values = [1] * 60 + [0] * 140
    iv = bootstrap_mean(values, resamples=4000)
    normal = 1.96 * math.sqrt(0.3 * 0.7 / 200)
    assert iv.mean == pytest.approx(0.3)
    assert iv.low < 0.3 < iv.high
    assert (iv.high - iv.low) / 2 == pytest.approx(normal, rel=0.12)
    assert iv.low == pytest.approx(0.3 - normal, abs=0.015) and iv.high == pytest.approx(0.3 + normal, abs=0.015)


def test_deterministic_for_a_seed_and_narrower_at_a_lower_level():
    rng = np.random.default_rng(1)
    values = rng.normal(2.0, 1.0, size=150)
    assert bootstrap_mean(values, seed=3) == bootstrap_mean(values, seed=3)
    assert bootstrap_mean(values, seed=3) != bootstrap_mean(values, seed=4)
    wide, narrow = bootstrap_mean(values), bootstrap_mean(values, level=0.5)
    assert narrow.low > wide.low and narrow.high < wide.high and narrow.mean == wide.mean


def test_weights_give_the_token_weighted_mean():
    """Per-problem mean NLLs weighted by their token counts = total NLL / total tokens, not the plain mean."""
    sums, tokens = [10.0, 2.0, 30.0], [5, 1, 60]
    iv = bootstrap_mean([s / t for s, t in zip(sums, tokens)], weights=tokens)
    assert iv.mean == pytest.approx(sum(sums) / sum(tokens))
    assert iv.mean != pytest.approx(np.mean([s / t for s, t in zip(sums, tokens)]))
    assert iv.low <= iv.mean <= iv.high and iv.n == 3


def test_paired_difference_sees_a_consistent_gap_that_separate_intervals_hide():
    rng = np.random.default_rng(0)
    base = rng.uniform(1.0, 3.0, size=80)  # problems differ a lot in difficulty
    better = base - 0.05  # the same problems, every one a little easier for model A
    a, b = bootstrap_mean(better), bootstrap_mean(base)
    assert a.high > b.low  # the two intervals overlap: on their own they show nothing
    gap = paired_difference(better, base)
    assert gap.mean == pytest.approx(-0.05) and gap.high < 0  # paired, the gap is clear
    same = paired_difference(base, base)
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0)


def test_bad_input_is_a_value_error():
    with pytest.raises(ValueError, match="no values"):
        bootstrap_mean([])
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="weights"):
        bootstrap_mean([1.0, 2.0], weights=[1.0])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_mean([1.0, float("nan")])
    with pytest.raises(ValueError, match="level"):
        bootstrap_mean([1.0], level=95)


def test_reports_carry_a_pass_at_1_interval_over_problems():
    records = [
        {"task_id": f"t{i}", "passed": i < 12, "kind": "passed" if i < 12 else "failed", "isolation": "bwrap"}
        for i in range(40)
    ]
    report = summarize(records, ks=(1,))
    low, high = report["pass@1_interval"]
    assert report["pass@k"]["pass@1"] == pytest.approx(0.3)
    assert low < 0.3 < high and high - low > 0.15  # 40 problems: a wide interval, as it should be
    everything = summarize([dict(r, passed=True, kind="passed") for r in records], ks=(1,))
    assert everything["pass@1_interval"] == [1.0, 1.0]
    assert summarize([], ks=(1,))["pass@1_interval"] is None


def test_compare_pairs_runs_by_problem_id():
    """Two runs (or modes) scored on overlapping problems: only the shared ones are paired."""
    fim = {"a": 1.0, "b": 1.0, "c": 0.0, "d": 1.0}
    base = {"b": 0.0, "c": 0.0, "d": 1.0, "e": 1.0}
    gap = compare(fim, base)
    assert gap["problems"] == 3 and gap["mean"] == pytest.approx(1 / 3) and gap["low"] <= 1 / 3 <= gap["high"]
    with pytest.raises(ValueError, match="share no problems"):
        compare({"a": 1.0}, {"b": 1.0})
