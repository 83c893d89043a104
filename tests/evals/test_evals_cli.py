"""`codellama eval humaneval|score`: local and remote backends, resuming after a kill, reports, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from codellama.cli import main
from codellama.io import read_jsonl
from evals.problems import load_problems
from tests._evals_helpers import scripted_completions_server

TASKS = ["HumanEval/0", "HumanEval/1", "HumanEval/2", "HumanEval/3", "HumanEval/4"]


@pytest.fixture(scope="module")
def small_problems(tmp_path_factory) -> Path:
    """A user problem file in HumanEval's format (5 problems)."""
    problems = load_problems()
    path = tmp_path_factory.mktemp("problems") / "five.jsonl"
    path.write_text("".join(json.dumps(problems[t].to_dict()) + "\n" for t in TASKS))
    return path


def _answer(prompt: str) -> str:
    """Scripted model: right on HumanEval/0, 2, 4; wrong on 1, 3. It is asked the prompt without its trailing
    newline and writes that newline back first, as a byte-level BPE model does."""
    problems = load_problems()
    for i, t in enumerate(TASKS):
        if problems[t].prompt.rstrip() == prompt:
            assert problems[t].prompt.endswith("\n") and not prompt.endswith("\n")
            return "\n" + (
                problems[t].canonical_solution + "\n\ndef extra():\n    pass\n" if i % 2 == 0 else "    return None\n"
            )
    raise AssertionError("unknown prompt")


def test_a_raw_completion_is_what_follows_the_prompts_own_trailing_newline():
    from evals.run import after_prompt

    prompt = 'def f(x):\n    """Double."""\n'
    assert after_prompt(prompt, "\n    return 2 * x\n") == "    return 2 * x\n"
    assert after_prompt(prompt, "\ndef g():") == "def g():"
    assert after_prompt(prompt, " pass") == " pass"  # did not write the newline back: kept as written
    assert after_prompt("x = 1", "\ny = 2") == "\ny = 2"  # nothing was stripped
    assert after_prompt(prompt + "\n", "\n    return x\n") == "    return x\n"  # one of two newlines written back


def test_score_writes_human_eval_results_and_report(small_problems, tmp_path, capsys):
    problems = load_problems(small_problems)
    samples = tmp_path / "samples.jsonl"
    rows = [
        {"task_id": t, "completion": p.canonical_solution if (i + s) % 2 == 0 else ""}
        for i, (t, p) in enumerate(problems.items())
        for s in range(2)
    ]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", "score", str(samples), "--problems", str(small_problems), "--k", "1,2"]) == 0
    out = capsys.readouterr().out
    assert "pass@1 = 50.00%  pass@2 = 100.00%" in out and "isolation: bwrap" in out
    results = read_jsonl(f"{samples}_results.jsonl")
    assert [r["passed"] for r in results] == [(i + s) % 2 == 0 for i in range(5) for s in range(2)]
    assert {"task_id", "completion", "result", "passed", "kind"} <= results[0].keys()
    report = json.loads(Path(f"{samples}_report.json").read_text())
    assert report["per_problem"]["HumanEval/3"] == {"n": 2, "passed": 1, "kinds": {"failed": 1, "passed": 1}}
    assert Path(f"{samples}_report.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["eval", "score", str(samples), "--problems", str(small_problems)]) == 2  # no silent overwrite
    assert "exists" in capsys.readouterr().err


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "HumanEval/0"}\n')
    assert main(["eval", "score", str(bad)]) == 2
    assert "task_id and completion" in capsys.readouterr().err
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text('{"task_id": "Nope/1", "completion": ""}\n')
    assert main(["eval", "score", str(unknown)]) == 2
    assert "unknown problems: Nope/1" in capsys.readouterr().err
    assert main(["eval", "humaneval", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "model directory not found" in capsys.readouterr().err


def test_require_isolation_refuses_without_bubblewrap(tmp_path):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))  # no bwrap on PATH
    samples = tmp_path / "s.jsonl"
    samples.write_text('{"task_id": "HumanEval/0", "completion": ""}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "codellama.cli", "eval", "score", str(samples), "--require-isolation"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "refusing to run untrusted code without isolation: bwrap not found" in proc.stderr
    assert not Path(f"{samples}_results.jsonl").exists()


@pytest.mark.slow
def test_endpoint_run_resumes_after_kill(small_problems, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "codellama.cli",
        "eval",
        "humaneval",
        "--samples",
        "3",
        "--problems",
        str(small_problems),
        "--out",
        str(out),
        "--k",
        "1,3",
        "--workers",
        "2",
    ]
    with scripted_completions_server(_answer, delay=0.5) as (url, requests):
        cmd += ["--endpoint", url]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 90
        while len(read_jsonl(out / "samples.jsonl")) < 8:  # the first chunk of generations is on disk
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        first = len(requests)
        assert len(read_jsonl(out / "samples.jsonl")) < 15 and not (out / "report.json").exists()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # all done: nothing new
    assert again.returncode == 0 and len(requests) == first + 7  # only the 7 missing samples were requested
    samples = read_jsonl(out / "samples.jsonl")
    results = read_jsonl(out / "results.jsonl")
    assert sorted((s["task_id"], s["sample"]) for s in samples) == [(t, s) for t in TASKS for s in range(3)]
    assert len(results) == 15 and all("def extra" not in s["completion"] for s in samples)  # stop sequences
    assert requests[0]["stop"] == ["\ndef", "\nclass", "\nif", "\nprint"]
    assert requests[0]["temperature"] == 0.8 and requests[0]["top_p"] == 0.95
    report = json.loads((out / "report.json").read_text())
    assert report["pass@k"] == {"pass@1": pytest.approx(0.6), "pass@3": pytest.approx(0.6)}
    assert "pass@1 = 60.00%" in done.stdout and (out / "report.png").is_file()


def test_local_model_run_and_settings_guard(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "eval",
        "humaneval",
        "--model",
        str(tiny_model_dir),
        "--out",
        str(out),
        "--limit",
        "2",
        "--max-new-tokens",
        "12",
        "--k",
        "1",
    ]
    assert main(args) == 0
    samples = read_jsonl(out / "samples.jsonl")
    assert [s["task_id"] for s in samples] == ["HumanEval/0", "HumanEval/1"]
    assert all(s["finish_reason"] in ("stop", "length") for s in samples)
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["temperature"] == 0.0 and report["samples"] == 2
    assert "pass@1 = 0.00%" in capsys.readouterr().out  # a random tiny model solves nothing
    assert main(args[:-2] + ["--seed", "3"]) == 2
    assert "different settings (settings.seed: 0 -> 3)" in capsys.readouterr().err
