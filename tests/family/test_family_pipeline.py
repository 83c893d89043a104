"""The whole family at the smallest scale: every model trained and scored, a report, and resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _family_helpers import write_family_config

from codellama.cli import main

pytestmark = pytest.mark.slow  # every test here takes tens of seconds (training runs, subprocesses)


@pytest.fixture(scope="module")
def small_config(tmp_path_factory, stdlib_texts):
    config = {
        "extends": "tiny",  # the smoke run, whatever the default config is
        "tokenizer": {"vocab_size": 1016},
        "eval": {
            "humaneval": {"limit": 3, "max_new_tokens": 16},
            "infilling": {"benchmarks": ["single-line"], "limit": 3, "max_new_tokens": 12},
            "long_context": {
                "ppl_lengths": [64, 128],
                "ppl_samples": 1,
                "key_retrieval_lengths": [160],
                "key_retrieval_positions": [0.5],
            },
        },
    }
    return write_family_config(tmp_path_factory.mktemp("family"), stdlib_texts[:60], config)


def test_pipeline_trains_and_scores_every_model(small_config, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pipeline", "--config", str(small_config), "--run", str(run)]) == 0
    results = json.loads((run / "report" / "results.json").read_text())
    models = results["models"]
    assert set(models) == {"code", "python", "long-context", "instruct"}
    for name, m in models.items():
        assert 0.0 <= m["humaneval"]["pass@1"] <= 1.0 and m["humaneval"]["problems"] == 3, name
        assert len(m["train"]["curve"]) == 3 and Path(m["path"], "config.json").is_file()
    for name in ("code", "instruct"):
        assert set(models[name]["infilling"]["single-line"]) >= {"psm", "spm"}
    for name in ("code", "long-context"):
        assert [round(x) for x in models[name]["long_ppl"]["lengths"]] == [64, 128]
        assert "160" in models[name]["key_retrieval"]["accuracy_by_length"]
    lc = json.loads((Path(models["long-context"]["path"]) / "config.json").read_text())
    assert lc["rope_parameters"]["rope_theta"] == 1_000_000
    report = (run / "report" / "report.md").read_text()
    for heading in ("## Models", "## HumanEval", "## Infilling", "## Long context"):
        assert heading in report
    # where the stage seconds were measured, and what precision=auto became there
    import torch

    from codellama.train.precision import resolve

    precision = resolve("auto", torch.device("cpu"))
    assert {m["train"]["precision"] for m in models.values()} == {precision}
    assert results["machine"]["cores"] == os.cpu_count() and results["machine"]["torch"] == torch.__version__
    assert f"training in {precision}, scoring in float32" in report and "Machine: " in report
    for png in ("loss_curves.png", "pass_at_k.png", "infilling.png", "long_ppl.png"):
        assert (run / "report" / png).read_bytes()[:4] == b"\x89PNG"
    # Rerunning a finished run redoes nothing.
    state = json.loads((run / "state.json").read_text())
    assert main(["pipeline", "--config", str(small_config), "--run", str(run)]) == 0
    assert json.loads((run / "state.json").read_text()) == state
    assert "done earlier, skipped" in capsys.readouterr().out


def test_killed_pipeline_resumes_without_redoing_finished_stages(small_config, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "codellama.cli", "pipeline", "--config", str(small_config), "--run", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    state_path = run / "state.json"
    try:  # kill it in the middle of a training stage, after the data stage finished
        while time.time() < deadline:
            if state_path.exists() and "train-code" in json.loads(state_path.read_text())["finished"]:
                break
            assert proc.poll() is None, "pipeline ended before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("pipeline did not reach train-python in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = json.loads(state_path.read_text())["finished"]
    assert "report" not in before
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    after = json.loads(state_path.read_text())["finished"]
    for stage, record in before.items():
        assert after[stage] == record, f"{stage} was redone"
        assert f"{stage}: done earlier, skipped" in res.stdout
    assert "report" in after and (run / "report" / "report.md").is_file()


def test_dry_run_and_bad_config(small_config, tmp_path, capsys):
    assert main(["pipeline", "--config", str(small_config), "--run", str(tmp_path / "r"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "train-code" in out and "tokens" in out and "FLOPs" in out and not (tmp_path / "r").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("branches: {code: []}\nmystery: 1\n")
    assert main(["pipeline", "--config", str(bad), "--run", str(tmp_path / "r")]) == 2
    assert "unknown config key mystery;" in capsys.readouterr().err
    assert main(["pipeline", "--config", str(small_config), "--run", str(tmp_path / "r"), "--stages", "nope"]) == 2
    assert "unknown stage" in capsys.readouterr().err
