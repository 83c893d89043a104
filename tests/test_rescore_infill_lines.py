"""benchmarks/rescore_infill_lines.py: PSM / SPM answers judged like the prefix-only baseline."""

from __future__ import annotations

import json

from _bench_helpers import load_benchmark

from codellama.io import append_jsonl
from evals.infilling import data_path, load_problems

rescore_infill_lines = load_benchmark("rescore_infill_lines")


def test_an_answer_that_goes_on_past_the_hole_passes_once_cut(tmp_path, capsys):
    """The right line followed by more text fails as scored and passes cut to the hole's one line; a wrong
    line fails both ways; the prefix-only rows are reported as scored."""
    problems = load_problems(data_path("single-line"), limit=2)
    (tmp_path / "run.json").write_text(json.dumps({"fingerprint": {"settings": {"benchmark": "single-line"}}}))
    right, wrong = problems
    rows = [
        ("spm", right, right.canonical_solution + "    raise SystemExit(3)\n    return None\n", False),
        ("spm", wrong, "    return 12345\n", False),
        ("prefix", right, right.canonical_solution, True),
    ]
    for mode, p, completion, passed in rows:
        sample = {"task_id": p.task_id, "mode": mode, "sample": 0, "completion": completion, "finish_reason": "length"}
        append_jsonl(tmp_path / "samples.jsonl", sample)
        append_jsonl(tmp_path / "results.jsonl", {"task_id": p.task_id, "mode": mode, "sample": 0, "passed": passed})
    table = rescore_infill_lines.rescore(tmp_path)
    assert table["spm"] == {"as scored": {"passed": 0, "of": 2}, "cut to the hole's lines": {"passed": 1, "of": 2}}
    assert table["prefix"] == {"as scored": {"passed": 1, "of": 1}}
    assert rescore_infill_lines.main([str(tmp_path / "missing")]) == 2
    assert "error:" in capsys.readouterr().err
