"""The `evaluate` module: loads offline from our package and runs candidates through the sandbox."""

from __future__ import annotations

import os

import pytest


def test_evaluate_load_offline_runs_through_the_sandbox(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    import evaluate

    from evals.metrics import path

    metric = evaluate.load(path())
    candidates = [
        "def add(a, b):\n    return a + b",
        "def add(a, b):\n    return a - b",
        "import os\ndef add(a, b):\n    os._exit(0)",
        "import os\nopen(os.path.expanduser('~') + '/x', 'w')\ndef add(a, b):\n    return a + b",
    ]
    scores, results = metric.compute(predictions=[candidates], references=["assert add(2, 3) == 5"], k=[1, 4])
    assert scores == {"pass@1": pytest.approx(0.25), "pass@4": 1.0}
    kinds = [r[1]["kind"] for r in results[0]]
    assert kinds[:3] == ["passed", "failed", "error:EarlyExit(0)"]
    assert kinds[3].startswith("error:")  # no home directory inside the sandbox
    assert not os.path.exists(os.path.expanduser("~") + "/x")
