"""RoPE base/context/scaling: set on configs, models and checkpoints; logits follow transformers' rotary."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from codellama.checkpoint import load_model
from codellama.cli import main
from codellama.rope import parse_scaling, rope_set, set_rope, trained_context

TINY_CONTEXT = 512  # the tiny preset's max_position_embeddings
LONG = 700  # past the trained context, where dynamic NTK starts to act


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 2000, (1, LONG), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def original(tiny_model_dir):
    return load_model(tiny_model_dir).eval()


def _logits(model, ids, **kwargs):
    with torch.no_grad():
        return model(input_ids=ids, **kwargs).logits


def _reference(original: LlamaForCausalLM, rope_parameters: dict, max_positions: int) -> LlamaForCausalLM:
    """The same weights in a model whose config transformers builds from an explicit rope dict."""
    fields = original.config.to_dict()
    for key in ("rope_parameters", "rope_scaling", "rope_theta", "max_position_embeddings"):
        fields.pop(key, None)
    config = LlamaConfig(**fields, rope_parameters=dict(rope_parameters), max_position_embeddings=max_positions)
    model = LlamaForCausalLM(config).eval()
    model.load_state_dict(original.state_dict())
    return model


CASES = [
    # (rope_set kwargs, rope_parameters transformers must see, max_position_embeddings)
    (dict(base=1e6, max_context=2048), {"rope_type": "default", "rope_theta": 1e6}, 2048),
    (
        dict(scaling={"rope_type": "linear", "factor": 4}),
        {"rope_type": "linear", "rope_theta": 1e4, "factor": 4.0},
        2048,
    ),
    (
        dict(scaling={"rope_type": "dynamic", "factor": 4}),
        {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 4.0},
        512,
    ),
    (
        dict(max_context=2048, scaling={"rope_type": "yarn"}),
        {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "original_max_position_embeddings": 512},
        2048,
    ),
    (
        dict(base=5e5, scaling={"rope_type": "llama3", "factor": 8}),
        {
            "rope_type": "llama3",
            "rope_theta": 5e5,
            "factor": 8.0,
            "original_max_position_embeddings": 512,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
        },
        4096,
    ),
]


@pytest.mark.parametrize("kwargs,expected,max_positions", CASES, ids=lambda c: str(c)[:30])
def test_rope_set_survives_save_load_and_matches_transformers(
    tmp_path, tiny_model_dir, original, ids, kwargs, expected, max_positions
):
    out = tmp_path / "out"
    rope_set(tiny_model_dir, out, **kwargs)
    saved = json.loads((out / "config.json").read_text())
    assert saved["rope_parameters"] == expected
    assert saved["max_position_embeddings"] == max_positions
    # Weights and tokenizer are copied byte for byte: RoPE has no weights.
    for name in ("model.safetensors", "tokenizer.model"):
        assert (out / name).read_bytes() == (tiny_model_dir / name).read_bytes()

    loaded = load_model(out).eval()
    reference = _reference(original, expected, max_positions)
    got = _logits(loaded, ids)
    assert torch.equal(got, _logits(reference, ids))
    assert not torch.allclose(got, _logits(original, ids), atol=1e-4)


def test_dynamic_ntk_leaves_the_trained_context_untouched(tmp_path, tiny_model_dir, original, ids):
    rope_set(tiny_model_dir, tmp_path / "ntk", scaling={"rope_type": "dynamic", "factor": 4})
    ntk = load_model(tmp_path / "ntk").eval()
    short = ids[:, :TINY_CONTEXT]
    assert torch.equal(_logits(ntk, short), _logits(original, short))
    assert not torch.allclose(_logits(ntk, ids), _logits(original, ids), atol=1e-4)


def test_raised_base_rotates_by_the_closed_form_angle(tmp_path, tiny_model_dir):
    """cos/sin of the loaded model are RoPE's formula, position * base^(-2j/d), for the new base."""
    rope_set(tiny_model_dir, tmp_path / "m", base=1e6, max_context=16384)
    model = load_model(tmp_path / "m")
    head_dim = model.config.head_dim
    positions = torch.tensor([[0, 1, 511, 4095, 16383]])
    cos, sin = model.model.rotary_emb(torch.zeros(1, dtype=torch.float32), positions)
    angle = positions[0, :, None].double() * 1e6 ** (-torch.arange(0, head_dim, 2).double() / head_dim)
    angle = torch.cat([angle, angle], dim=-1)
    # transformers forms the angle in float32: at position 16,383 that costs ~1e-4 of phase.
    torch.testing.assert_close(cos[0].double(), angle.cos(), atol=2e-4, rtol=0)
    torch.testing.assert_close(sin[0].double(), angle.sin(), atol=2e-4, rtol=0)
    # ...and it is not the old base's rotation.
    old = positions[0, -1].double() * 1e4 ** (-torch.arange(0, head_dim, 2).double() / head_dim)
    assert (cos[0, -1, : head_dim // 2].double() - old.cos()).abs().max() > 0.5


def test_linear_interpolation_is_default_rope_at_divided_positions(original, ids):
    """Position interpolation by 4 = the unscaled model reading positions 0, 1/4, 2/4, ..."""
    scaled = _reference(original, {"rope_type": "default", "rope_theta": 1e4}, TINY_CONTEXT)
    set_rope(scaled, scaling={"rope_type": "linear", "factor": 4})
    positions = torch.arange(LONG)[None]
    torch.testing.assert_close(
        _logits(scaled, ids, position_ids=positions),
        _logits(original, ids, position_ids=positions.float() / 4),
        atol=2e-5,
        rtol=1e-5,
    )


def test_set_rope_on_a_loaded_model_equals_the_rewritten_checkpoint(tmp_path, tiny_model_dir, ids):
    rope_set(tiny_model_dir, tmp_path / "yarn", scaling={"rope_type": "yarn", "factor": 2})
    in_memory = load_model(tiny_model_dir).eval()
    set_rope(in_memory, scaling={"rope_type": "yarn", "factor": 2})
    assert in_memory.config.rope_parameters == load_model(tmp_path / "yarn").config.rope_parameters
    assert torch.equal(_logits(in_memory, ids), _logits(load_model(tmp_path / "yarn").eval(), ids))


def test_set_rope_on_configs_chains_and_validates():
    config = LlamaConfig(
        hidden_size=64,
        num_attention_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4},
    )
    set_rope(config, base=1e6, max_context=16384)  # Code Llama's LCFT setting
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 1e6}
    assert trained_context(config) == 16384
    set_rope(config, scaling={"rope_type": "linear"}, max_context=65536)  # factor derived from the context
    assert config.rope_parameters["factor"] == 4.0 and trained_context(config) == 16384
    set_rope(config, scaling={"rope_type": "default"})
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 1e6}
    with pytest.raises(ValueError, match="unknown RoPE scaling"):
        set_rope(config, scaling={"rope_type": "ntk-by-parts", "factor": 2})
    with pytest.raises(ValueError, match=">= 1"):
        set_rope(config, scaling={"rope_type": "linear", "factor": 0.5})
    with pytest.raises(ValueError, match="needs a factor"):
        set_rope(config, scaling={"rope_type": "linear"})
    with pytest.raises(ValueError, match="dynamic"):
        set_rope(config, scaling={"rope_type": "dynamic", "factor": 2}, max_context=100_000)
    with pytest.raises(ValueError, match="positive"):
        set_rope(config, base=-1)
    assert parse_scaling("yarn:4") == {"rope_type": "yarn", "factor": 4.0}
    assert parse_scaling("linear", 2) == {"rope_type": "linear", "factor": 2.0}
    with pytest.raises(ValueError):
        parse_scaling("linear:x")


def test_rope_set_cli(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "lcft"
    assert main(["rope", "set", "--base", "1e6", "--max-context", "16384", str(tiny_model_dir), str(out)]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1]) == {
        "rope_type": "default",
        "rope_theta": 1e6,
        "max_position_embeddings": 16384,
    }
    # Refuses to overwrite, refuses nonsense; one line, exit 2, nothing half-written.
    assert main(["rope", "set", "--base", "1e5", str(tiny_model_dir), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["rope", "set", "--scaling", "cubic:2", str(tiny_model_dir), str(tmp_path / "bad")]) == 2
    assert capsys.readouterr().err.startswith("codellama: error: unknown RoPE scaling")
    assert main(["rope", "set", "--base", "1e6", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert not (tmp_path / "bad").exists() and not (tmp_path / "x").exists()


def test_rope_plot_cli(tmp_path, capsys):
    png = tmp_path / "rope.png"
    assert (
        main(
            [
                "rope",
                "plot",
                "--head-dim",
                "128",
                "--base",
                "1e4",
                "--base",
                "1e6",
                "--scaling",
                "linear:4",
                "--context",
                "4096",
                "--max-distance",
                "20000",
                "--out",
                str(png),
            ]
        )
        == 0
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    analysis = json.loads(png.with_suffix(".json").read_text())
    base4, base6, linear = analysis["variants"]
    # The slowest pair: 2*pi * base^((d-2)/d) tokens per turn.
    assert base4["wavelengths"][-1] == pytest.approx(2 * math.pi * 1e4 ** (126 / 128), rel=1e-6)
    assert base6["wavelengths"][-1] == pytest.approx(2 * math.pi * 1e6 ** (126 / 128), rel=1e-6)
    assert linear["wavelengths"][0] == pytest.approx(4 * 2 * math.pi, rel=1e-6)
    # A larger base: fewer pairs complete a turn inside the context, and attention decays more slowly.
    assert base6["pairs_turning_within_context"] < base4["pairs_turning_within_context"]
    far = [i for i, d in enumerate(base4["decay_distances"]) if 100 <= d <= 4096]
    assert all(base6["decay_bound"][i] > base4["decay_bound"][i] for i in far)
    assert main(["rope", "plot", "--out", str(png)]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err
