"""A training process SIGKILLed at a random step and resumed reaches the unbroken run's loss curve."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from _train_helpers import REPO, final_weights, metric_losses, run_cli, write_code_shards

from codellama.train import state

pytestmark = pytest.mark.slow  # every test here takes tens of seconds (training runs, subprocesses)

STEPS = 10
ARGS = [
    "--set",
    f"max_steps={STEPS}",
    "--set",
    "seq_len=64",
    "--set",
    "batch_tokens=1024",
    "--set",
    "micro_batch_size=8",
    "--set",
    "checkpoint_every=2",
    "--set",
    "keep_checkpoints=2",
    "--set",
    "schedule.warmup_steps=2",
    "--no-progress",
]


@pytest.fixture(scope="module")
def shards(tiny_tokenizer, stdlib_texts, tmp_path_factory):
    return write_code_shards(tiny_tokenizer, stdlib_texts[:40], tmp_path_factory.mktemp("resume") / "shards", 64)


def test_sigkill_then_resume_matches_unbroken_run(shards, tiny_tokenizer_dir, tmp_path):
    common = ["train", "code", "--data", str(shards), "--tokenizer", str(tiny_tokenizer_dir), *ARGS]
    unbroken = run_cli(*common, "--out", str(tmp_path / "unbroken"))
    assert unbroken.returncode == 0, unbroken.stderr[-2000:]

    kill_after = random.Random(os.urandom(8)).randint(3, STEPS - 3)  # a random step, past the first checkpoint
    broken = tmp_path / "broken"
    proc = subprocess.Popen(
        [sys.executable, "-m", "codellama.cli", *common, "--out", str(broken)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while len(metric_losses(broken)) < kill_after and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    done_when_killed = len(metric_losses(broken))
    assert kill_after <= done_when_killed < STEPS, f"killed after {done_when_killed} steps"
    assert not (broken / "final").exists()
    kept = state.list_checkpoints(broken / "checkpoints")
    assert 1 <= len(kept) <= 2 and all(step % 2 == 0 for step, _ in kept)  # retention: newest two

    resumed = run_cli("train", "code", "--out", str(broken), "--resume", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"steps {kept[-1][0]}->{STEPS}" in resumed.stdout

    curve, reference = metric_losses(broken), metric_losses(tmp_path / "unbroken")
    assert [s for s, _ in curve] == list(range(1, STEPS + 1))
    assert curve == reference, f"killed after {done_when_killed} steps (target {kill_after})"
    assert reference[-1][1] < reference[0][1] - 0.3
    a, b = final_weights(broken), final_weights(tmp_path / "unbroken")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
