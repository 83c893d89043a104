"""codellama.io under the failures users hit: torn JSONL lines, a full disk, killed writers, mount points."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys

import pytest

from codellama.io import (
    append_jsonl,
    atomic_directory,
    atomic_write_bytes,
    check_writable,
    read_jsonl,
)

RECORDS = [{"task_id": f"HumanEval/{i}", "sample": 0, "completion": "    return x\n" * (i + 1)} for i in range(3)]


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]  # every line is valid JSON


def test_append_after_a_torn_line_never_glues_onto_it(tmp_path, caplog):
    path = tmp_path / "samples.jsonl"
    for r in RECORDS[:2]:
        append_jsonl(path, r)
    with open(path, "a") as f:  # what a kill (or a full disk) in the middle of an append leaves
        f.write('{"task_id": "HumanEval/2", "sample": 0, "compl')
    assert read_jsonl(path) == RECORDS[:2]  # the torn tail is not a record ...
    assert "torn last line" in caplog.text  # ... and the user is told
    append_jsonl(path, RECORDS[2])  # the rerun appends: the fragment is cut first
    assert _lines(path) == RECORDS
    append_jsonl(path, RECORDS[0])  # and every later rerun still reads the file
    assert read_jsonl(path) == RECORDS + RECORDS[:1]


def test_a_tail_missing_only_its_newline_is_kept(tmp_path):
    path = tmp_path / "progress.jsonl"
    path.write_text(json.dumps(RECORDS[0]))  # killed between the record and its newline
    append_jsonl(path, RECORDS[1])
    assert _lines(path) == RECORDS[:2]


def test_a_file_damaged_by_the_old_append_is_read_back(tmp_path, caplog):
    # Before the fix, a rerun appended straight after the fragment: "fragment{record}" in the middle.
    path = tmp_path / "samples.jsonl"
    good = [json.dumps(r) for r in RECORDS]
    path.write_text(f'{good[0]}\n{{"task_id": "Huma{good[1]}\n{good[2]}\n')
    assert read_jsonl(path) == RECORDS
    assert "fragment" in caplog.text
    path.write_text(f"{good[0]}\nnot json at all\n{good[2]}\n")  # real damage is still an error
    with pytest.raises(ValueError, match=r"samples.jsonl:2: not valid JSON"):
        read_jsonl(path)


def test_an_append_on_a_full_disk_leaves_no_torn_line(tmpfs):
    disk = tmpfs("full", "64k")
    path = disk / "samples.jsonl"
    big = {"completion": "x" * 3000}
    written = 0
    with pytest.raises(OSError) as failure:
        for _ in range(100):
            append_jsonl(path, {"n": written, **big})
            written += 1
    assert failure.value.errno == errno.ENOSPC
    assert path.read_bytes().endswith(b"\n") and len(_lines(path)) == written  # the failed one was cut back off
    (disk / "samples.jsonl").write_text("".join(line + "\n" for line in path.read_text().splitlines()[:2]))
    append_jsonl(path, {"n": "after", **big})  # space again: the run continues cleanly
    assert [r["n"] for r in read_jsonl(path)] == [0, 1, "after"]


def _killed_writer(script: str, cwd) -> None:
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, env={**os.environ}, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]


def test_the_next_write_removes_a_killed_writers_temp_outputs(tmp_path):
    _killed_writer(
        "import os, signal\n"
        "from codellama.io import atomic_directory, atomic_write_bytes\n"
        "with atomic_directory('model') as tmp:\n"
        "    (tmp / 'model.safetensors').write_bytes(b'0' * 100000)\n"
        "    fd = os.open('.report.json.%d.x.tmp' % os.getpid(), os.O_CREAT | os.O_WRONLY)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n",
        tmp_path,
    )
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert len(leftovers) == 2 and all(name.endswith(".tmp") for name in leftovers), leftovers
    assert not (tmp_path / "model").exists()  # never a half-written output under the real name

    live = tmp_path / f".model.{os.getpid()}.live.tmp"  # a live writer's temp is left alone
    live.mkdir()
    with atomic_directory(tmp_path / "model") as tmp:
        (tmp / "config.json").write_text("{}")
    atomic_write_bytes(tmp_path / "report.json", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", "report.json", live.name])


def test_an_empty_mount_point_as_output(tmpfs):
    mount = tmpfs("mnt", "4m")
    with atomic_directory(mount) as tmp:
        (tmp / "config.json").write_text('{"a": 1}')
        (tmp / "weights.bin").write_bytes(b"w" * 1000)
    assert os.path.ismount(mount)  # still the mount point, now holding the files
    assert sorted(p.name for p in mount.iterdir()) == ["config.json", "weights.bin"]
    with atomic_directory(mount, overwrite=True) as tmp:  # replacing it (a resumed run's export) works too
        (tmp / "config.json").write_text('{"a": 2}')
    assert sorted(p.name for p in mount.iterdir()) == ["config.json"]
    assert json.loads((mount / "config.json").read_text()) == {"a": 2}


def test_model_init_into_an_empty_mount_point(tmpfs, tiny_tokenizer_dir):
    from codellama.checkpoint import load_model
    from codellama.cli import main

    mount = tmpfs("model", "16m")
    assert main(["model", "init", "--preset", "tiny", "--tokenizer", str(tiny_tokenizer_dir), "--out", str(mount)]) == 0
    assert load_model(mount).config.vocab_size == 2016


def test_unwritable_outputs_are_found_before_any_work(tmpfs, capsys):
    readonly = tmpfs("ro", "1m", readonly=True)
    with pytest.raises(PermissionError, match=f"cannot write to {readonly}"):
        check_writable(readonly / "run")
    from codellama.cli import main

    assert main(["tokenizer", "train", "--out", str(readonly / "tok")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("codellama: error:") and str(readonly) in err and "Traceback" not in err
