"""codellama.rundir: resume the same run, refuse another, never block a corrected rerun."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from codellama import rundir

FP = {"settings": {"samples": 1, "seed": 0}, "model": {"weights": {"model.safetensors": "abc"}}}


def _other(**settings):
    return {**FP, "settings": {**FP["settings"], **settings}}


def test_same_fingerprint_resumes_and_another_is_refused_naming_what_differs(tmp_path):
    out = tmp_path / "run"
    with rundir.claim(out, "humaneval", FP) as run:
        assert run.fresh and run.created
        (out / "samples.jsonl").write_text("{}\n")
    assert json.loads((out / "run.json").read_text()) == {"kind": "humaneval", "fingerprint": FP}
    with rundir.claim(out, "humaneval", FP) as run:
        assert not run.fresh
    with pytest.raises(
        FileExistsError, match=rf"{out} holds a run started with different settings \(settings.seed: 0 -> 3\)"
    ):
        rundir.claim(out, "humaneval", _other(seed=3))
    with pytest.raises(FileExistsError, match="holds a humaneval run, not an infilling run"):
        rundir.claim(out, "infilling", FP)
    assert (out / "samples.jsonl").read_text() == "{}\n"  # nothing of the run was touched


def test_allowed_changes_continue_with_the_new_values_recorded(tmp_path, caplog):
    out = tmp_path / "run"
    with rundir.claim(out, "train", {"data": "a", "tokenizer_sha256": "t"}):
        (out / "metrics.jsonl").write_text("{}\n")
    with rundir.claim(out, "train", {"data": "b", "tokenizer_sha256": "t"}, allow=("data",)) as run:
        assert run.changed == {"data": ("a", "b")}
    assert "data changed since the run started" in caplog.text
    assert rundir.read_marker(out)["fingerprint"]["data"] == "b"
    with pytest.raises(FileExistsError, match="tokenizer_sha256: t -> u"):
        rundir.claim(out, "train", {"data": "b", "tokenizer_sha256": "u"}, allow=("data",))
    with pytest.raises(FileExistsError, match="continue it with --resume"):
        rundir.claim(out, "train", {"data": "b", "tokenizer_sha256": "t"}, existing="refuse")


def test_a_failed_start_leaves_nothing_that_blocks_the_corrected_rerun(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="bad base"):
        with rundir.claim(out, "train", FP, scratch=("config.yaml",)):
            (out / "config.yaml").write_text("x: 1\n")
            raise ValueError("bad base")
    assert not out.exists()
    mount_like = tmp_path / "empty"  # an empty directory the user made (or a mount point) stays, empty
    mount_like.mkdir()
    with pytest.raises(ValueError):
        with rundir.claim(mount_like, "train", FP, scratch=("config.yaml",)):
            raise ValueError("bad base")
    assert mount_like.is_dir() and not any(mount_like.iterdir())
    # A start killed before any work left only the marker: the next start (other settings) takes over.
    (out / "tb").mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"kind": "train", "fingerprint": FP}))
    (out / "config.yaml").write_text("x: 1\n")
    with rundir.claim(out, "train", _other(seed=1), existing="refuse", scratch=("config.yaml", "tb")) as run:
        assert run.fresh
    # Work is never thrown away by a failure once the run has some.
    with pytest.raises(RuntimeError):
        with rundir.claim(out, "train", _other(seed=1), scratch=("config.yaml",)):
            (out / "metrics.jsonl").write_text("{}\n")
            raise RuntimeError("loss is nan")
    assert (out / "metrics.jsonl").exists() and (out / "run.json").exists()


def test_discard_on_error_removes_everything_a_fresh_run_wrote(tmp_path):
    out = tmp_path / "shards"
    with pytest.raises(ValueError):
        with rundir.claim(out, "data prepare", FP, marker=".work/run.json", discard_on_error=True):
            (out / ".work" / "documents").mkdir(parents=True)
            raise ValueError("no documents left after filtering")
    assert not out.exists()


def test_resuming_removes_temp_outputs_of_killed_writes(tmp_path):
    out = tmp_path / "run"
    with rundir.claim(out, "train", FP):
        (out / "checkpoints" / "step-00000002").mkdir(parents=True)
    leftovers = [
        out / "checkpoints" / ".step-00000004.tmp",  # a checkpoint being written
        out / "checkpoints" / ".step-00000000.deleting",  # one being pruned
        out / ".final.4194305.abcd.tmp",  # an export by a writer that is gone (pid beyond pid_max)
        out / ".final.old.4194305",
    ]
    for path in leftovers:
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"0" * 1000)
    live = out / f".summary.json.{os.getpid()}.abcd.tmp"  # a writer that is alive keeps its temp
    live.write_text("{}")
    with rundir.claim(out, "train", FP):
        pass
    assert not any(p.exists() for p in leftovers) and live.exists()
    assert (out / "checkpoints" / "step-00000002").is_dir()


def test_a_second_process_on_the_same_run_is_refused(tmp_path):
    out = tmp_path / "run"
    with rundir.claim(out, "humaneval", FP):
        with pytest.raises(FileExistsError, match="in use by another running process"):
            rundir.claim(out, "humaneval", FP)
    rundir.claim(out, "humaneval", FP).release()  # released: free again


def test_someone_elses_directory_is_never_claimed(tmp_path):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists and is not a humaneval run directory"):
        rundir.claim(mine, "humaneval", FP)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is not a directory"):
        rundir.claim(tmp_path / "file", "humaneval", FP)
    assert sorted(p.name for p in mine.iterdir()) == ["todo.txt"]


def test_model_fingerprint_follows_the_weights_not_the_path(tiny_model_dir, tmp_path):
    import torch

    from codellama.checkpoint import load_model, save_checkpoint

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert rundir.model_fingerprint(copy) == rundir.model_fingerprint(tiny_model_dir)
    model = load_model(copy)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.add_(1e-3)  # "trained more": one tensor changed
    save_checkpoint(model, copy, overwrite=True)
    assert rundir.model_fingerprint(copy)["weights"] != rundir.model_fingerprint(tiny_model_dir)["weights"]


def test_sampled_hash_sees_a_change_anywhere_training_makes_one(tmp_path):
    big = tmp_path / "model.safetensors"
    data = bytearray(os.urandom(32 << 20))
    big.write_bytes(bytes(data))
    before = rundir.sampled_sha256(big)
    data[len(data) // 2 : len(data) // 2 + (1 << 20)] = os.urandom(1 << 20)  # one middle tensor of 1 MiB
    big.write_bytes(bytes(data))
    assert rundir.sampled_sha256(big) != before
    assert rundir.source_fingerprint("http://localhost:8000/v1") == {"endpoint": "http://localhost:8000/v1"}
