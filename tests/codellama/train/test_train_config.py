"""Recipes, overrides, schedule, memory estimate and `codellama train --dry-run`."""

from __future__ import annotations

import math

import pytest

from codellama.cli import main
from codellama.config import BRANCHES, SCALES
from codellama.presets import get_preset
from codellama.train.config import resolve_config
from codellama.train.memory import count_parameters, estimate
from codellama.train.schedule import lr_factor


def test_recipes_hold_code_llamas_settings():
    code = resolve_config("code", "7b")
    assert (code.optim.lr, code.seq_len, code.batch_tokens, code.data_expect["fim_rate"]) == (
        3e-4,
        4096,
        4 * 2**20,
        0.9,
    )
    assert code.total_tokens == 500e9 and code.optim.betas == (0.9, 0.95) and code.optim.weight_decay == 0.1
    assert code.schedule.warmup_steps == 1000 and code.schedule.min_lr_ratio == pytest.approx(1 / 30, rel=1e-4)
    assert resolve_config("code", "34b").optim.lr == 1.5e-4
    python = resolve_config("python", "7b")
    assert (python.total_tokens, python.optim.lr, python.data_expect["fim_rate"]) == (100e9, 1e-4, 0.0)
    lcft = resolve_config("long-context", "7b")
    assert (lcft.rope.base, lcft.rope.max_context, lcft.seq_len, lcft.batch_tokens) == (1e6, 16384, 16384, 2 * 2**20)
    assert lcft.total_tokens == 20e9
    for branch in BRANCHES:  # every branch has every scale, and tiny runs on a CPU
        for scale in SCALES:
            config = resolve_config(branch, scale)
            assert config.steps >= 1 and config.accumulation_steps(1) >= 1
        tiny = resolve_config(branch, "tiny")
        assert tiny.base == "tiny" and tiny.tokens_per_step <= 4096 and tiny.steps <= 300


def test_overrides_are_typed_and_checked():
    config = resolve_config(
        "code",
        "tiny",
        ["optim.lr=1e-3", "max_steps=7", "total_tokens=5e9", "rope.base=500000", "gradient_checkpointing=true"],
    )
    assert (config.optim.lr, config.steps, config.total_tokens, config.rope.base) == (1e-3, 7, 5e9, 5e5)
    assert config.gradient_checkpointing is True
    with pytest.raises(ValueError, match="unknown config key optim.learning_rate"):
        resolve_config("code", "tiny", ["optim.learning_rate=1"])
    with pytest.raises(ValueError, match="config key max_steps: 'many' is not a valid int"):
        resolve_config("code", "tiny", ["max_steps=many"])
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        resolve_config("code", "tiny", ["lr"])
    with pytest.raises(ValueError, match="does not split into 3 rank"):
        resolve_config("code", "tiny").accumulation_steps(3)


def test_schedule_warms_up_then_decays_to_the_floor():
    f = [lr_factor(s, warmup_steps=10, total_steps=110, min_ratio=1 / 30) for s in range(110)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0
    assert all(a >= b for a, b in zip(f[9:], f[10:]))  # monotone decay after warmup
    assert f[60] == pytest.approx(1 / 30 + (1 - 1 / 30) / 2)  # half way: cosine midpoint
    assert lr_factor(110, warmup_steps=10, total_steps=110, min_ratio=1 / 30) == pytest.approx(1 / 30)


def test_memory_estimate_shards_model_states():
    p = get_preset("llama2-7b")
    assert count_parameters(p) == 6_738_415_616
    one = estimate(p, seq_len=4096, micro_batch_size=1, world_size=1, gradient_checkpointing=True)
    eight = estimate(p, seq_len=4096, micro_batch_size=1, world_size=8, gradient_checkpointing=True)
    assert one.params_gib + one.grads_gib + one.optimizer_gib == pytest.approx(16 * 6_738_415_616 / 2**30)
    assert eight.optimizer_gib == pytest.approx(one.optimizer_gib / 8)
    assert eight.activations_ckpt_gib < eight.activations_gib / 4  # checkpointing keeps only block inputs
    assert eight.total_gib < 80 < one.total_gib  # 7B needs sharding to fit an 80 GB GPU
    twin = estimate(p, seq_len=4096, micro_batch_size=1, world_size=1, gradient_checkpointing=True, twin=True)
    assert twin.total_gib - one.total_gib == pytest.approx(twin.twin_gib) == pytest.approx(4 * 6_738_415_616 / 2**30)


def test_dry_run_prints_plan_and_memory(capsys):
    assert main(["train", "code", "--scale", "7b", "--nodes", "4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.0003" in out and "world size          32" in out
    assert f"steps               {math.ceil(500e9 / 2**22):,}" in out
    assert "token budget        500,002,979,840" in out and "1 sequence(s) per rank" in out
    assert "AdamW moments" in out and "with checkpointing" in out
    assert (
        main(
            [
                "train",
                "long-context",
                "--scale",
                "34b",
                "--world-size",
                "16",
                "--dry-run",
                "--set",
                "micro_batch_size=2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "rope:\n    base: 1000000.0" in out and "16,384" in out and "micro_batch_size: 2" in out


def test_cli_errors_are_one_line(capsys, tmp_path):
    assert main(["train", "code", "--set", "optim.nope=1", "--dry-run"]) == 2
    assert "codellama: error: unknown config key optim.nope" in capsys.readouterr().err
    assert main(["train", "code", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "is not a finished shard directory" in capsys.readouterr().err
    assert main(["train", "code", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "is not a training run" in capsys.readouterr().err
