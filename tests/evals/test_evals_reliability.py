"""Evaluation reruns that must not lie: a retrained model at the same path, torn sample files, unwritable results."""

from __future__ import annotations

import json
import shutil

from codellama.cli import main
from codellama.io import read_jsonl


def _humaneval(model, out, *extra) -> list[str]:
    return [
        "eval",
        "humaneval",
        "--model",
        str(model),
        "--out",
        str(out),
        "--max-new-tokens",
        "6",
        "--k",
        "1",
        "--limit",
        "2",
        *extra,
    ]


def _retrain(model_dir) -> None:
    """ "Train more": new weights saved over the same path."""
    import torch

    from codellama.checkpoint import load_model, load_tokenizer, save_checkpoint

    model = load_model(model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_checkpoint(model, model_dir, load_tokenizer(model_dir), overwrite=True)


def test_a_retrained_model_at_the_same_path_is_not_reported_with_old_completions(tiny_model_dir, tmp_path, capsys):
    model, moved, out = tmp_path / "final", tmp_path / "moved", tmp_path / "he"
    shutil.copytree(tiny_model_dir, model)
    shutil.copytree(tiny_model_dir, moved)
    assert main(_humaneval(model, out)) == 0
    samples, report = (out / "samples.jsonl").read_text(), (out / "report.json").read_text()
    capsys.readouterr()

    _retrain(model)  # "train more, rerun the eval" on the same RUN/final
    assert main(_humaneval(model, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"codellama: error: {out} holds a run started with different settings (model.weights")
    assert err.count("\n") == 1 and "use another --out for a new model" in err
    assert (out / "samples.jsonl").read_text() == samples and (out / "report.json").read_text() == report
    assert main(_humaneval(model, tmp_path / "he-retrained")) == 0  # a new run scores the new weights

    assert main(_humaneval(moved, out)) == 0  # the first weights elsewhere: the same model, resumed as is
    assert (out / "samples.jsonl").read_text() == samples


def test_infilling_runs_are_keyed_on_the_weights_too(tiny_model_dir, tmp_path):
    from evals.infilling import BenchmarkConfig, run_fingerprint

    model = tmp_path / "final"
    shutil.copytree(tiny_model_dir, model)
    before = run_fingerprint(BenchmarkConfig(model=str(model)))
    assert run_fingerprint(BenchmarkConfig(model=str(tiny_model_dir))) == before  # the path is not the model
    _retrain(model)
    assert run_fingerprint(BenchmarkConfig(model=str(model)))["model"] != before["model"]


def test_a_torn_samples_line_does_not_make_the_run_unresumable(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "he"
    assert main(_humaneval(tiny_model_dir, out)) == 0
    complete = read_jsonl(out / "samples.jsonl")
    assert [s["task_id"] for s in complete] == ["HumanEval/0", "HumanEval/1"]
    # Disk full while the second sample was appended: a torn last line, no verdict for it yet.
    data = (out / "samples.jsonl").read_bytes()
    (out / "samples.jsonl").write_bytes(data[: data.index(b"\n") + 1 + 20])
    (out / "results.jsonl").write_text((out / "results.jsonl").read_text().splitlines(keepends=True)[0])
    for _ in range(2):  # the rerun completes the run, and every later rerun still reads it
        assert main(_humaneval(tiny_model_dir, out)) == 0, capsys.readouterr().err
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == complete  # greedy: the regenerated sample is the same
    assert json.loads((out / "report.json").read_text())["samples"] == 2


def test_score_finds_an_unwritable_output_before_running_any_sample(tmpfs, monkeypatch, capsys):
    sample = json.dumps({"task_id": "HumanEval/0", "completion": "    return False\n"}) + "\n"
    readonly = tmpfs("ro", "1m", files={"samples.jsonl": sample.encode()}, readonly=True)

    def no_sandbox(*args, **kwargs):
        raise AssertionError("samples were run before the output was checked")

    monkeypatch.setattr("evals.run.SandboxPool", no_sandbox)
    assert main(["eval", "score", str(readonly / "samples.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"codellama: error: cannot write to {readonly}") and err.count("\n") == 1


def test_a_model_smaller_than_its_tokenizer_is_one_line(tiny_model_dir, stdlib_texts, tmp_path, capsys):
    from codellama.tokenizer import CodeLlamaTokenizer, TrainOptions

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    CodeLlamaTokenizer.train(stdlib_texts[:60], TrainOptions(vocab_size=3016)).save(model)  # 3,016 > 2,016 rows
    assert main(_humaneval(model, tmp_path / "he")) == 2
    err = capsys.readouterr().err
    assert "vocab_size 2016 is smaller than its tokenizer's 3016 ids" in err and err.count("\n") == 1
    assert not (tmp_path / "he").exists()
