"""`codellama train` as a demanding user breaks it: other tokenizers' data, bad bases, full disks, bad numbers."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import pytest
from _train_helpers import metric_losses, write_code_shards

from codellama.cli import main
from codellama.tokenizer import CodeLlamaTokenizer, TrainOptions, save_tokenizer_dir
from codellama.train import state

ARGS = [
    "--set",
    "max_steps=2",
    "--set",
    "seq_len=64",
    "--set",
    "batch_tokens=256",
    "--set",
    "micro_batch_size=4",
    "--set",
    "checkpoint_every=1",
    "--set",
    "schedule.warmup_steps=1",
    "--no-progress",
]


def _shards(tokenizer, texts, out):
    sha = hashlib.sha256(tokenizer.proto_bytes).hexdigest()  # what `data prepare` records in index.json
    return write_code_shards(tokenizer, texts, out, 64, meta={"tokenizer": {"sha256": sha}})


@pytest.fixture(scope="module")
def data(tiny_tokenizer, stdlib_texts, tmp_path_factory):
    """Shards of the tiny tokenizer, of another tokenizer with the same vocabulary size, and of a larger one."""
    root = tmp_path_factory.mktemp("tokenizers")
    other = CodeLlamaTokenizer.train(stdlib_texts[::3], TrainOptions(vocab_size=2016))
    larger = CodeLlamaTokenizer.train(stdlib_texts, TrainOptions(vocab_size=3016))
    assert other.proto_bytes != tiny_tokenizer.proto_bytes and other.vocab_size == tiny_tokenizer.vocab_size
    return {
        "mine": _shards(tiny_tokenizer, stdlib_texts[:20], root / "mine"),
        "mine-too": _shards(tiny_tokenizer, stdlib_texts[20:40], root / "mine-too"),
        "other": _shards(other, stdlib_texts[:20], root / "other"),
        "other-tokenizer": save_tokenizer_dir(other, root / "other-tokenizer"),
        "larger": _shards(larger, stdlib_texts[:20], root / "larger"),
        "larger-tokenizer": save_tokenizer_dir(larger, root / "larger-tokenizer"),
    }


def _train(*args, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["train", "code", *ARGS, *args])
    err = capsys.readouterr().err
    return code, err


def _one_line_error(err: str, *needles: str) -> None:
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith("codellama: error:") and "Traceback" not in err, err[-3000:]
    for needle in needles:
        assert needle in last, last


@pytest.mark.slow
def test_data_of_another_tokenizer_is_refused_before_any_work(data, tiny_model_dir, tmp_path, capsys, caplog):
    out = tmp_path / "run"
    code, err = _train("--base", str(tiny_model_dir), "--data", str(data["other"]), "--out", str(out), capsys=capsys)
    assert code == 2
    _one_line_error(err, f"{data['other']} was tokenized with another tokenizer", "--allow-tokenizer-mismatch")
    assert not out.exists()
    # --tokenizer (what the model ships with) differing from the data's: refused too
    code, err = _train(
        "--tokenizer", str(data["other-tokenizer"]), "--data", str(data["mine"]), "--out", str(out), capsys=capsys
    )
    assert code == 2 and not out.exists()
    _one_line_error(err, f"than the tokenizer {data['other-tokenizer']}")
    # an explicit override trains (and says so)
    code, err = _train(
        "--base",
        str(tiny_model_dir),
        "--data",
        str(data["other"]),
        "--out",
        str(out),
        "--allow-tokenizer-mismatch",
        capsys=capsys,
    )
    assert code == 0 and "allowed by --allow-tokenizer-mismatch" in caplog.text
    assert len(metric_losses(out)) == 2


@pytest.mark.slow
def test_resume_with_data_of_another_tokenizer_is_refused(data, tiny_model_dir, tmp_path, capsys, caplog):
    out = tmp_path / "run"
    assert _train("--base", str(tiny_model_dir), "--data", str(data["mine"]), "--out", str(out), capsys=capsys)[0] == 0
    before = (metric_losses(out), state.list_checkpoints(out / "checkpoints"))
    resume = ["--out", str(out), "--resume", "--set", "max_steps=3"]
    code, err = _train(*resume, "--data", str(data["other"]), capsys=capsys)
    assert code == 2
    _one_line_error(err, "was tokenized with another tokenizer")
    assert (metric_losses(out), state.list_checkpoints(out / "checkpoints")) == before
    # Other shards made with the same tokenizer are fine (the run records the change).
    code, err = _train(*resume, "--data", str(data["mine-too"]), capsys=capsys)
    assert code == 0 and "data changed since the run started" in caplog.text
    assert [s for s, _ in metric_losses(out)] == [1, 2, 3]


def test_resume_refuses_another_tokenizer_even_when_the_base_has_none(data, tmp_path, capsys):
    out = tmp_path / "run"  # a fresh preset model: only the run's own record knows the tokenizer
    assert _train("--base", "tiny", "--data", str(data["mine"]), "--out", str(out), capsys=capsys)[0] == 0
    code, err = _train("--out", str(out), "--resume", "--data", str(data["other"]), capsys=capsys)
    assert code == 2
    _one_line_error(err, f"{out} holds a run started with different settings (tokenizer_sha256:")


def test_resume_with_another_vocabulary_is_one_line(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train("--base", "tiny", "--data", str(data["mine"]), "--out", str(out), capsys=capsys)[0] == 0
    # Forced past the tokenizer check, the checkpoint (2,016 rows) cannot load into a 3,016-row model:
    # torch.distributed.checkpoint's CheckpointException (a BaseException) becomes one line.
    code, err = _train(
        "--out",
        str(out),
        "--resume",
        "--set",
        "max_steps=3",
        "--data",
        str(data["larger"]),
        "--allow-tokenizer-mismatch",
        capsys=capsys,
    )
    assert code == 2
    _one_line_error(err, "cannot resume from", "other shapes")


def test_a_base_with_a_smaller_vocabulary_than_the_data_is_one_line(data, tiny_model_dir, tmp_path, capsys):
    code, err = _train(
        "--base",
        str(tiny_model_dir),
        "--tokenizer",
        str(data["larger-tokenizer"]),
        "--data",
        str(data["larger"]),
        "--out",
        str(tmp_path / "run"),
        capsys=capsys,
    )
    assert code == 2 and not (tmp_path / "run").exists()
    _one_line_error(err, "has a vocabulary of 2016 but the data uses 3016")


def test_a_garbage_tokenizer_in_the_base_is_found_before_training(data, tiny_model_dir, tmp_path, capsys):
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    (base / "tokenizer.model").write_bytes(b"definitely not a sentencepiece model")
    code, err = _train("--base", str(base), "--data", str(data["mine"]), "--out", str(tmp_path / "run"), capsys=capsys)
    assert code == 2 and not (tmp_path / "run").exists()
    _one_line_error(err, f"{base / 'tokenizer.model'} is not a valid SentencePiece model")


def test_a_failed_start_leaves_nothing_that_blocks_the_corrected_rerun(data, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    typed = tmp_path / "typed"
    shutil.copytree(tiny_model_dir, typed)
    config = json.loads((typed / "config.json").read_text())
    (typed / "config.json").write_text(json.dumps({**config, "hidden_size": "128"}))
    code, err = _train("--base", str(typed), "--data", str(data["mine"]), "--out", str(out), capsys=capsys)
    assert code == 2 and not out.exists()
    _one_line_error(err, f"{typed / 'config.json'}: hidden_size must be a positive integer")

    corrupt = tmp_path / "corrupt"  # found only when the weights load, after the run directory is claimed
    shutil.copytree(tiny_model_dir, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\0" * 64)
    code, err = _train("--base", str(corrupt), "--data", str(data["mine"]), "--out", str(out), capsys=capsys)
    assert code == 2
    _one_line_error(err, "cannot load weights")
    assert not out.exists()  # no config.yaml / run.json left to refuse the rerun with

    code, err = _train("--base", str(tiny_model_dir), "--data", str(data["mine"]), "--out", str(out), capsys=capsys)
    assert code == 0, err[-2000:]


@pytest.mark.parametrize(
    "override,message",
    [
        ("checkpoint_every=-1", "checkpoint_every must be >= 0"),
        ("optim.lr=nan", "config key optim.lr: 'nan' is not a finite number"),
        ("optim.betas=[0.9, 1.5]", "optim.betas must be two numbers in [0, 1)"),
    ],
)
def test_out_of_range_numbers_are_refused(override, message, data, tmp_path, capsys):
    code, err = _train("--data", str(data["mine"]), "--out", str(tmp_path / "run"), "--set", override, capsys=capsys)
    assert code == 2 and not (tmp_path / "run").exists()
    _one_line_error(err, message)


def test_a_checkpoint_on_a_full_disk_is_one_line_and_leaves_no_partial(data, tiny_tokenizer_dir, tmpfs, capsys):
    disk = tmpfs("disk", "6m")  # room for the run's files, not for a checkpoint (~11 MB: weights + AdamW)
    out = disk  # the empty mount point itself as the run directory
    args = ["--tokenizer", str(tiny_tokenizer_dir), "--data", str(data["mine"]), "--out", str(out)]
    code, err = _train(*args, capsys=capsys)
    assert code == 2
    _one_line_error(err, f"cannot write checkpoint {out / 'checkpoints' / 'step-00000001'}", "No space left on device")
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # the partial checkpoint is gone
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # the user frees space
    code, err = _train(*args, "--resume", capsys=capsys)
    assert code == 0, err[-2000:]
    assert [s for s, _ in metric_losses(out)] == [1, 2] and (out / "final" / "model.safetensors").is_file()
