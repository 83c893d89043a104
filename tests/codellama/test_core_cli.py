"""The `codellama` command as a new user meets it: help, model init/info, tokenizer, bad input."""

import re
import subprocess
import sys

import pytest

from codellama.cli import build_parser, main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "codellama.cli", *args], capture_output=True, text=True, timeout=300)


def _subcommands(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subcommands(sub))


def test_every_command_has_help_with_an_example():
    leaves = [
        (name, p)
        for name, p in _subcommands(build_parser())
        if not any(isinstance(a, type(build_parser()._subparsers._group_actions[0])) for a in p._actions)
    ]
    assert {"tokenizer train", "tokenizer extend", "model init", "model info", "convert meta-to-hf"} <= {
        n for n, _ in leaves
    }
    for name, parser in leaves:
        assert parser.epilog and "codellama " in parser.epilog, f"`codellama {name} --help` has no example"


def test_every_help_page_renders():
    """Group pages too (`codellama eval --help` once failed on a bare % in one subcommand's summary)."""
    for name, parser in [("", build_parser()), *_subcommands(build_parser())]:
        text = parser.format_help()
        assert text.startswith("usage: codellama"), f"`codellama {name} --help`"


@pytest.mark.parametrize("name", ["llama2-7b", "llama2-13b", "llama2-34b", "llama2-70b"])
def test_model_info_prints_meta_parameter_counts(name, capsys):
    from codellama.presets import PUBLISHED_PARAMETER_COUNTS

    assert main(["model", "info", name]) == 0
    out = capsys.readouterr().out
    count = int(re.search(r"^parameters\s+([\d,]+)", out, re.M).group(1).replace(",", ""))
    expected = PUBLISHED_PARAMETER_COUNTS.get(name, 33_743_970_304)  # 34B: Meta's Code Llama 34B release
    assert count == expected


def test_model_init_opens_with_auto_classes(tiny_tokenizer_dir, tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "tiny"
    assert main(["model", "init", "--preset", "tiny", "--tokenizer", str(tiny_tokenizer_dir), "--out", str(out)]) == 0
    assert re.search(r"^vocab_size\s+2016$", capsys.readouterr().out, re.M)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.vocab_size == len(tok) == 2016
    assert tok.convert_tokens_to_ids(["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"]) == [2007, 2008, 2009, 2010]
    ids = tok("def f(x):\n    return x", return_tensors="pt").input_ids
    with torch.no_grad():
        assert model(ids).logits.shape == (1, ids.shape[1], 2016)


def test_model_init_extends_a_llama2_tokenizer(llama2_tokenizer_path, tmp_path, capsys):
    assert (
        main(
            [
                "model",
                "init",
                "--preset",
                "tiny",
                "--tokenizer",
                str(llama2_tokenizer_path),
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    assert re.search(r"^vocab_size\s+32016$", capsys.readouterr().out, re.M)


def test_tokenizer_train_and_extend_commands(tmp_path, llama2_tokenizer_path):
    src = tmp_path / "src"
    src.mkdir()
    import random

    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "value",
        "result",
        "index",
        "count",
        "items",
        "return",
        "lambda",
        "self",
        "class",
        "import",
        "while",
        "yield",
        "buffer",
        "parser",
        "token",
        "stream",
    ]
    rng = random.Random(0)
    for i in range(40):
        (src / f"m{i}.py").write_text(
            "\n".join(
                f"def {rng.choice(words)}_{rng.choice(words)}({rng.choice(words)}):\n    return {rng.choice(words)}"
                f".{rng.choice(words)}({rng.randint(0, 999)})"
                for _ in range(50)
            )
        )
    (src / "util.c").write_text("int count(int *items, int n) { return n; }\n")
    (src / ".gitignore").write_text("build/\n")
    (src / "build").mkdir()
    (src / "build" / "generated.py").write_text("x = 1\n")
    res = run_cli("tokenizer", "train", "--source", str(src), "--vocab-size", "400", "--out", str(tmp_path / "tok"))
    assert res.returncode == 0, res.stderr
    # Read as `data prepare` reads: every language (the .c file), .gitignore honoured (not build/).
    assert "on 41 documents: 400 pieces, <PRE>=391 <SUF>=392 <MID>=393 <EOT>=394" in res.stdout
    res = run_cli("tokenizer", "train", "--source", str(src), "--languages", "rust", "--out", str(tmp_path / "t0"))
    assert res.returncode == 2 and "no documents found" in res.stderr and not (tmp_path / "t0").exists()
    res = run_cli("tokenizer", "train", "--source", str(src), "--vocab-size", "30000", "--out", str(tmp_path / "t2"))
    assert res.returncode == 2 and "tokenizer training failed" in res.stderr and not (tmp_path / "t2").exists()
    res = run_cli("tokenizer", "extend", "--base", str(llama2_tokenizer_path), "--out", str(tmp_path / "ext"))
    assert res.returncode == 0 and "▁<PRE>=32007 ▁<SUF>=32008 ▁<MID>=32009 ▁<EOT>=32010" in res.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["model", "info", "no-such-thing"], "neither a checkpoint directory nor a preset"),
        (["model", "init", "--preset", "huge", "--tokenizer", "x", "--out", "o"], "unknown preset 'huge'"),
        (["model", "init", "--preset", "tiny", "--tokenizer", "missing.model", "--out", "o"], "tokenizer not found"),
        (["tokenizer", "extend", "--base", "missing.model", "--out", "o"], "tokenizer not found"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_corrupt_checkpoint_and_unwritable_output(tiny_model_dir, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    (bad / "model.safetensors").write_bytes(b"\x00" * 64)
    from codellama.checkpoint import CheckpointError, load_model

    with pytest.raises(CheckpointError, match="cannot load weights"):
        load_model(bad)
    (bad / "config.json").write_text("{not json")
    assert main(["model", "info", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        res = run_cli(
            "model", "init", "--preset", "tiny", "--tokenizer", str(tiny_model_dir), "--out", str(locked / "m")
        )
        import os

        if os.geteuid() != 0:  # root ignores directory permissions
            assert res.returncode == 2 and "not writable" in res.stderr
    finally:
        locked.chmod(0o700)


def test_existing_output_is_never_overwritten(tiny_tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["model", "init", "--preset", "tiny", "--tokenizer", str(tiny_tokenizer_dir), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_help_runs_fast_without_torch():
    res = run_cli("--help")
    assert res.returncode == 0 and "tokenizer" in res.stdout and "model" in res.stdout
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from codellama.cli import build_parser; build_parser(); print('torch' in sys.modules)",
        ],
        capture_output=True,
        text=True,
    )
    assert probe.stdout.strip() == "False"


def test_serving_dtype_is_bf16_where_the_cpu_multiplies_bf16_natively(monkeypatch):
    import torch

    from codellama.config import serving_dtype

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert serving_dtype("auto", "cpu") == torch.bfloat16
    assert serving_dtype("float32", "cpu") == torch.float32  # an explicit choice is kept
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert serving_dtype("auto", "cpu") == torch.float32
    assert serving_dtype("auto", "cuda") == torch.bfloat16
