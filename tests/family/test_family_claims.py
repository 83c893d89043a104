"""The report's claims judged from synthetic results: each claim supported, not supported, or not measured."""

import random

import pytest

from family.claims import (
    NOT_MEASURED,
    NOT_SUPPORTED,
    SUPPORTED,
    fim_costs_little,
    fim_enables_infilling,
    instruct_helps_chat,
    judge_claims,
    rope_extends_context,
)
from family.report import write_report


def _passes(rate: float, n: int = 150, seed: int = 0) -> dict:
    rng = random.Random(seed)
    return {f"t/{i}": float(rng.random() < rate) for i in range(n)}


def _nll(mean: float, n: int = 150, seed: int = 0) -> dict:
    rng = random.Random(seed)
    return {f"t/{i}": [mean + rng.uniform(-0.3, 0.3), rng.randint(3, 20)] for i in range(n)}


def _infilling(psm: float, spm: float, prefix: float, nll: tuple[float, float, float]) -> dict:
    modes = {"psm": psm, "spm": spm, "prefix": prefix}
    out = {m: {"pass@1": r, "per_problem": _passes(r, seed=k)} for k, (m, r) in enumerate(modes.items())}
    per = {m: _nll(v, seed=7) for m, v in zip(("psm", "spm", "prefix"), nll)}
    out["nll"] = {
        "modes": {m: {"mean": v, "low": v - 0.05, "high": v + 0.05} for m, v in zip(modes, nll)},
        "per_problem": per,
    }
    return {"single-line": {**out, "problems": 150}}


def _results(fim_works: bool) -> dict:
    code = (0.30, 0.28, 0.05, (1.2, 1.25, 1.8)) if fim_works else (0.05, 0.05, 0.05, (1.9, 1.85, 1.8))
    return {
        "models": {
            "base": {"infilling": _infilling(0.0, 0.0, 0.03, (3.0, 3.1, 2.3))},
            "code": {"infilling": _infilling(*code)},
        }
    }


def test_infilling_claim_supported_when_suffix_helps():
    claim = fim_enables_infilling(_results(fim_works=True))
    assert claim.verdict == SUPPORTED, claim.text
    assert claim.text.startswith("**FIM enables infilling: supported by this run.**")
    assert len(claim.comparisons) == 8 and all(c.holds for c in claim.comparisons)
    gap = next(c for c in claim.comparisons if c.label == "code - base gap (PSM - prefix-only middle NLL)")
    assert gap.high < 0  # code's suffix gain (-0.6) beats the base's (+0.7: the base is lost in its FIM prompt)
    nll = next(c for c in claim.comparisons if c.label.startswith("code PSM - prefix-only middle NLL"))
    assert nll.high < 0 and nll.n == 150
    base = next(c for c in claim.comparisons if "base prefix" in c.label)  # the base left to right
    assert base.low > 0
    # the table: one row per model and prompt, with intervals and the number of problems
    assert ["code", "PSM"] == claim.rows[3][:2] and "[" in claim.rows[3][2] and claim.rows[3][4] == "150"


def test_infilling_claim_not_supported_says_so_with_numbers():
    claim = fim_enables_infilling(_results(fim_works=False))
    assert claim.verdict == NOT_SUPPORTED
    assert "not supported at this budget" in claim.text
    assert "code PSM - prefix-only middle NLL" in claim.text.split("Not holding:")[1]
    assert " pts [" in claim.text and "over 150" in claim.text


def test_a_suffix_gain_the_control_has_too_is_not_fim():
    """Any model scores a middle better with the suffix in view; the FIM model must gain more than its control."""
    results = _results(fim_works=True)
    results["models"]["code-nofim"] = {"infilling": _infilling(0.0, 0.0, 0.05, (1.3, 1.35, 1.9))}
    claim = fim_enables_infilling(results)
    assert claim.verdict == NOT_SUPPORTED
    failed = [c.label for c in claim.comparisons if not c.holds]
    assert failed == [f"code - code-nofim gap ({m} - prefix-only middle NLL)" for m in ("PSM", "SPM")]
    assert "Not holding: code - code-nofim gap (PSM - prefix-only middle NLL), code - code-nofim gap (SPM" in claim.text


def _code_loss(mean: float, seed: int) -> dict:
    rng = random.Random(seed)
    return {"per_file": [{"name": f"f{i}.py", "tokens": 500, "nll": mean + rng.uniform(-0.4, 0.4)} for i in range(40)]}


@pytest.mark.parametrize("fim_loss,verdict", [(1.52, SUPPORTED), (2.5, NOT_SUPPORTED)])
def test_fim_costs_little(fim_loss, verdict):
    results = {
        "models": {
            "code-nofim": {"code_loss": _code_loss(1.5, 1), "humaneval": {"per_problem": _passes(0.1, 164, 3)}},
            "code": {"code_loss": _code_loss(fim_loss, 1), "humaneval": {"per_problem": _passes(0.1, 164, 3)}},
        }
    }
    claim = fim_costs_little(results)
    assert claim.verdict == verdict, claim.text
    assert [c.holds for c in claim.comparisons] == [verdict == SUPPORTED, True]
    assert [r[0] for r in claim.rows] == ["code-nofim", "code"] and claim.rows[1][2] == "40"


def _rope(raised_gap: float) -> dict:
    rng = random.Random(0)
    untouched = [[2.0 + 0.01 * rng.random() for _ in range(4)], [2.1, 2.2, 2.15, 2.12], [3.5, 3.7, 3.6, 3.9]]
    raised = [[row[i] - (raised_gap if k else 0.0) for i in range(4)] for k, row in enumerate(untouched)]
    return {
        "rope": {
            "lengths": [256, 512, 1024],
            "fine_tune_length": 256,
            "samples": 4,
            "corpus": "held-out files",
            "methods": {
                "untouched": {"nll": untouched, "ppl": [7.4, 8.2, 40.0], "key_retrieval": {"overall": 0.0}},
                "raised-base": {"nll": raised, "ppl": [7.4, 8.2, 40.0], "key_retrieval": {"overall": 1.0}},
            },
        }
    }


def test_rope_claim_compares_past_the_fine_tuning_length_only():
    claim = rope_extends_context(_rope(0.5))
    assert claim.verdict == SUPPORTED
    assert [c.label for c in claim.comparisons] == [
        "raised base - untouched NLL at 512 tokens",
        "raised base - untouched NLL at 1,024 tokens",
    ]
    assert claim.rows[1][0] == "raised-base" and claim.rows[1][-1] == "100%"
    worse = rope_extends_context(_rope(-0.5))
    assert worse.verdict == NOT_SUPPORTED and "not supported at this budget" in worse.text


def test_a_base_that_already_reads_long_context_is_judged_past_its_own_context():
    """SmolLM2 reads 8,192 tokens before any fine-tuning at 1,024: only lengths past 8,192 test the claim (a
    raised base a little worse inside that context does not refute it); with no such length, past 1,024."""
    results = _rope(0.5)
    rope = results["rope"]
    rope.update(lengths=[1024, 4096, 16384], fine_tune_length=1024, trained_context=8192)
    untouched = rope["methods"]["untouched"]["nll"]
    rope["methods"]["raised-base"]["nll"] = [[v + 0.05 for v in untouched[0]], [v + 0.05 for v in untouched[1]]]
    rope["methods"]["raised-base"]["nll"].append([v - 1.0 for v in untouched[2]])
    claim = rope_extends_context(results)
    assert [c.label for c in claim.comparisons] == ["raised base - untouched NLL at 16,384 tokens"]
    assert claim.verdict == SUPPORTED and "judged at 16,384 tokens" in claim.text
    rope.update(lengths=[1024, 2048, 4096])
    rope["methods"]["raised-base"]["nll"] = rope["methods"]["raised-base"]["nll"][:2] + [untouched[2]]
    inside = rope_extends_context(results)
    assert [c.label.split(" at ")[1] for c in inside.comparisons] == ["2,048 tokens", "4,096 tokens"]
    assert inside.verdict == NOT_SUPPORTED


def test_chat_claim_and_missing_models():
    results = {
        "models": {
            "code": {"humaneval_chat": {"per_problem": _passes(0.02, 164, 1)}},
            "instruct": {"humaneval_chat": {"per_problem": _passes(0.3, 164, 2)}},
        }
    }
    assert instruct_helps_chat(results).verdict == SUPPORTED
    results["models"]["instruct"]["humaneval_chat"]["per_problem"] = _passes(0.02, 164, 1)
    assert instruct_helps_chat(results).verdict == NOT_SUPPORTED
    # a run without the controls measures none of the claims, and says so
    empty = judge_claims({"models": {"code": {}}})
    assert [c.verdict for c in empty] == [NOT_MEASURED] * 4
    assert "not measured" in empty[0].text


def test_report_has_a_section_per_claim_with_its_plot(tmp_path):
    results = _results(fim_works=True)
    results["models"]["code"]["humaneval_chat"] = {"pass@1": 0.02, "per_problem": _passes(0.02, 164, 1)}
    results["models"]["instruct"] = {"humaneval_chat": {"pass@1": 0.3, "per_problem": _passes(0.3, 164, 2)}}
    results.update(_rope(0.5))
    paths = write_report(results, tmp_path)
    report = paths["report"].read_text()
    for title in ("### FIM enables infilling", "### A raised RoPE base extends", "### Instruct tuning helps"):
        assert title in report
    assert "### FIM costs little" not in report  # no no-FIM control in these results: not shown
    for key in ("infilling", "middle_nll", "rope_ppl", "chat"):
        assert paths[key].read_bytes()[:4] == b"\x89PNG" and f"({paths[key].name})" in report
    import json

    claims = json.loads(paths["results"].read_text())["claims"]
    assert [c["verdict"] for c in claims] == [SUPPORTED, NOT_MEASURED, SUPPORTED, SUPPORTED]


def test_scores_on_different_problems_are_not_compared():
    a = {"models": {"code": {"humaneval": {"per_problem": {"t/1": 1.0}}}}}
    a["models"]["code-nofim"] = {"humaneval": {"per_problem": {"t/2": 0.0}}}
    claim = fim_costs_little(a)
    assert claim.comparisons == [] and claim.verdict == NOT_MEASURED and len(claim.rows) == 2


def test_pass_at_1_is_judged_on_answers_cut_to_the_hole_like_the_baseline(tmp_path):
    """With psm-lines / spm-lines scored, pass@1 is judged on them (the prefix-only baseline is always cut to the
    hole's lines; the field scores the benchmark so); the answers as the model ended them stay in the table."""
    results = _results(fim_works=True)
    inf = results["models"]["code"]["infilling"]["single-line"]
    for k, mode in enumerate(("psm", "spm")):  # the model writes the line but does not stop: as ended, 0%
        inf[mode] = {"pass@1": 0.0, "per_problem": _passes(0.0, seed=k)}
        inf[f"{mode}-lines"] = {"pass@1": 0.4, "per_problem": _passes(0.4, seed=9 + k)}
    claim = fim_enables_infilling(results)
    assert claim.verdict == SUPPORTED, claim.text
    judged = [c.label for c in claim.comparisons if c.unit == "pass@1"]
    assert judged and all("cut to the hole" in label for label in judged)
    assert "code SPM, cut to the hole - code prefix-only pass@1" in judged
    cut = [row for row in claim.rows if row[:2] == ["code", "SPM, cut to the hole"]]
    assert len(cut) == 1 and 25 < float(cut[0][2].split("%")[0]) < 55 and "[" in cut[0][2]  # ~40%, interval
    ended = [row for row in claim.rows if row[:2] == ["code", "SPM"]]
    assert ended[0][2].startswith("0")  # shown: the model does not end its answers
    inf["spm-lines"] = {"pass@1": 0.04, "per_problem": _passes(0.04, seed=3)}  # cut, no better than the baseline
    assert fim_enables_infilling(results).verdict == NOT_SUPPORTED
    report = write_report(results, tmp_path)["report"].read_text()
    assert "| PSM, cut to the hole | SPM, cut to the hole |" in report
    row = next(line for line in report.splitlines() if line.startswith("| code | single-line |"))
    assert 25 < float(row.split("|")[6].split("%")[0]) < 55 and row.split("|")[4].strip().startswith("0")
