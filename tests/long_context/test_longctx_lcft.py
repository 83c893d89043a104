"""Long-context fine-tuning (issue 7, item 2) through the real pieces: whole-file shards from
`data prepare`, the long-context recipe of the training loop, the memory switches, the dry-run's
memory estimate, and the small-scale reproduction script (item 6) on a handful of files."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _bench_helpers import load_benchmark

pytestmark = pytest.mark.slow  # every test here takes tens of seconds (training runs, subprocesses)

REPO = Path(__file__).resolve().parents[2]


def _whole_file_shards(tokenizer, texts: list[str], out: Path, seq_len: int) -> Path:
    from codellama.data.fim import FimOptions
    from codellama.data.ingest import SourceSpec
    from codellama.data.prepare import PrepareConfig, prepare

    docs = out.parent / f"{out.name}.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    config = PrepareConfig(
        sources=(SourceSpec(str(docs)),), seq_len=seq_len, packing="whole-files", fim=FimOptions(fim_rate=0.0)
    )
    prepare(config, tokenizer, out)
    return out


def test_lcft_runs_end_to_end_on_whole_file_shards(tiny_tokenizer, tiny_model_dir, stdlib_texts, tmp_path):
    from codellama.checkpoint import load_model
    from codellama.data.shards import TokenShards
    from codellama.train.loop import train_branch

    shards_dir = _whole_file_shards(tiny_tokenizer, stdlib_texts[:40], tmp_path / "lc", seq_len=1024)
    shards = TokenShards(shards_dir)
    assert shards.has_loss_mask  # whole-file packing pads, and the padding must not be trained on
    masked = sum(int((shards.loss_mask(i) == 0).sum()) for i in range(len(shards)))
    assert masked > 0

    result = train_branch(
        "long-context",
        base=str(tiny_model_dir),
        data=str(shards_dir),
        out=str(tmp_path / "run"),
        overrides=[
            "seq_len=1024",
            "batch_tokens=2048",
            "micro_batch_size=1",
            "max_steps=2",
            "rope.max_context=1024",
            "gradient_checkpointing=true",
            "checkpoint_every=0",
            "precision=fp32",
        ],
        progress=False,
    )
    assert math.isfinite(result.last_loss) and result.tokens == 2 * 2048
    model = load_model(result.final_dir)
    assert model.config.rope_parameters["rope_theta"] == 1e6  # the recipe's Code Llama base
    assert model.config.max_position_embeddings == 1024
    # The exported rotary frequencies are the raised base's, not the base model's 10,000.
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    expected = 1.0 / (1e6 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    torch.testing.assert_close(model.model.rotary_emb.inv_freq.double(), expected, rtol=1e-6, atol=0)


def _saved_bytes(model, ids) -> int:
    """Bytes autograd keeps for backward (each storage once, parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    return sum(storages.values()), loss


def test_memory_switches_keep_the_gradients_and_free_activations():
    from codellama.model import build_model, set_gradient_checkpointing
    from codellama.presets import get_preset

    preset = get_preset("tiny").replace(vocab_size=2016, n_layers=4)
    ids = torch.randint(0, 2016, (1, 1024), generator=torch.Generator().manual_seed(0))
    results = {}
    for mode in ("plain", "checkpointing", "offload"):
        model = build_model(preset, seed=0)
        assert model.config._attn_implementation == "sdpa"
        if mode != "plain":  # offload has no accelerator here: it must fall back, not crash
            set_gradient_checkpointing(model, True, offload=mode == "offload")
        model.train()
        saved, loss = _saved_bytes(model, ids)
        loss.backward()
        results[mode] = saved, loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])
    plain_saved, plain_loss, plain_grad = results["plain"]
    for mode in ("checkpointing", "offload"):
        saved, loss, grad = results[mode]
        assert loss == pytest.approx(plain_loss, abs=1e-6)
        torch.testing.assert_close(grad, plain_grad, rtol=1e-4, atol=1e-6)
        # Only each layer's input survives the forward pass (plus the loss's own tensors): measured x0.23.
        assert saved < 0.4 * plain_saved, (mode, saved, plain_saved)


def test_activation_estimate_is_close_to_what_autograd_saves():
    """The dry-run's per-token, per-layer activation bytes against a measurement (one extra layer)."""
    from codellama.model import build_model
    from codellama.presets import get_preset
    from codellama.train.memory import activation_bytes_per_token_layer

    preset = get_preset("tiny").replace(vocab_size=2016)
    ids = torch.zeros((1, 1024), dtype=torch.long)
    for bf16 in (False, True):
        measured = []
        for n_layers in (1, 2):
            model = build_model(preset.replace(n_layers=n_layers), seed=0).train()
            weights = {p.numel() for p in model.parameters() if p.ndim == 2}
            params = {p.untyped_storage().data_ptr() for p in model.parameters()}
            storages: dict[int, int] = {}

            def pack(t):
                s = t.untyped_storage()
                # Autocast's bf16 weight copies are not activations (FSDP gathers bf16 weights anyway).
                if s.data_ptr() not in params and not (t.ndim == 2 and t.numel() in weights):
                    storages[s.data_ptr()] = s.nbytes()
                return t

            with (
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16),
            ):
                model.model(input_ids=ids)
            measured.append(sum(storages.values()))
        per_token_layer = (measured[1] - measured[0]) / ids.shape[1]
        estimate = activation_bytes_per_token_layer(preset, 2 if bf16 else 4)
        # Every saved tensor is modelled: within 1% (quadratic attention would be x100+).
        assert per_token_layer == pytest.approx(estimate, rel=0.01), (bf16, per_token_layer, estimate)


def _gib(text: str, label: str) -> tuple[float, float]:
    match = re.search(rf"{label}\s+([\d.]+) GiB as configured \(([\d.]+) GiB", text)
    assert match, text
    return float(match[1]), float(match[2])


def test_dry_run_states_a_sane_memory_estimate_for_7b_at_16k(capsys):
    from codellama.cli import main

    assert main(["train", "long-context", "--scale", "7b", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "seq_len: 16384" in out and "base: 1000000.0" in out
    assert re.search(r"world size\s+8\b", out)
    assert "gradient_checkpointing: true" in out
    with_ckpt, without = _gib(out, "total")
    # 16 B/param of FSDP states over 8 GPUs is 12.6 GiB; 16k tokens of checkpointed 7B activations
    # (32 fp32 layer inputs of 4096) are 8 GiB more: fits an 80 GB GPU, but not without checkpointing.
    assert 12.6 + 8 < with_ckpt < 80
    assert without > 80

    # The sequence length is a recipe field like any other: 32k doubles the activations.
    assert (
        main(
            [
                "train",
                "long-context",
                "--scale",
                "7b",
                "--dry-run",
                "--set",
                "seq_len=32768",
                "--set",
                "rope.max_context=32768",
            ]
        )
        == 0
    )
    out32 = capsys.readouterr().out
    assert "seq_len: 32768" in out32
    assert _gib(out32, "total")[0] > with_ckpt + 8


def _repro_module():
    return load_benchmark("long_context_repro")


def test_reproduction_script_runs_every_stage(tmp_path):
    repro = _repro_module()
    settings = repro.Settings(
        context=64, batch_tokens=512, pretrain_steps=2, ft_steps=1, eval_files=2, max_files=12, control=False
    )
    png = tmp_path / "copy.png"
    report = repro.run(settings, tmp_path / "work", png)

    models = report["models"]
    assert len(models) == 3
    base, raised, pi = models.values()
    assert (base["rope_parameters"]["rope_theta"], base["max_position_embeddings"]) == (10_000.0, 64)
    assert (raised["rope_parameters"]["rope_theta"], raised["max_position_embeddings"]) == (1e6, 256)
    assert pi["rope_parameters"]["rope_type"] == "linear" and pi["rope_parameters"]["factor"] == 4.0
    assert [p["length"] for p in base["ppl_by_length"]] == [32, 64, 128, 256, 512]  # up to 8x the base context
    for entry in models.values():
        assert all(np.isfinite(p["ppl"]) and p["ppl"] > 1 for p in entry["ppl_by_length"])
        # The buckets partition the scored positions of the longest pass.
        assert sum(b["tokens"] for b in entry["ppl_by_position"]) == report["eval"]["samples"] * 511
    assert report["data"]["lcft"]["packing"] == "whole-files" and report["data"]["lcft"]["seq_len"] == 256
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "work" / "repro.json").read_text())["settings"]["ft_context"] == 256
    # A finished stage is reused, not retrained: a rerun only evaluates again.
    mtime = (tmp_path / "work" / "base" / "final" / "model.safetensors").stat().st_mtime
    repro.run(settings, tmp_path / "work", None)
    assert (tmp_path / "work" / "base" / "final" / "model.safetensors").stat().st_mtime == mtime
