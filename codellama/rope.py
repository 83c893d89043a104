"""Change a model's RoPE base period, context and scaling through transformers' own `rope_parameters`.

Code Llama's long-context recipe only raises the base period (10,000 -> 1,000,000) and the
context (4,096 -> 16,384); the alternatives people compare it with (linear position
interpolation, dynamic NTK, YaRN, Llama 3) are rope types transformers already implements
in `ROPE_INIT_FUNCTIONS`. So this module only edits the config: the rotary maths stays
transformers', and a checkpoint changed here opens anywhere Hugging Face models open.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from transformers import PretrainedConfig, PreTrainedModel

from codellama.checkpoint import load_config
from codellama.io import atomic_directory, ensure_new_output_dir
from codellama.model import rebuild_rotary

log = logging.getLogger(__name__)

SCALING_TYPES = ("linear", "dynamic", "yarn", "llama3")
# Llama 3.1's published smoothing band (transformers requires both keys for "llama3").
LLAMA3_DEFAULTS = {"low_freq_factor": 1.0, "high_freq_factor": 4.0}


def rope_parameters(config: PretrainedConfig) -> dict:
    """A copy of the config's RoPE parameters, standardised (rope_type and rope_theta always present)."""
    config.standardize_rope_params()
    return dict(config.rope_parameters)


def trained_context(config: PretrainedConfig) -> int:
    """The context the rotary frequencies were trained at (before any scaling)."""
    params = rope_parameters(config)
    if params.get("original_max_position_embeddings"):
        return int(params["original_max_position_embeddings"])
    if params["rope_type"] == "linear":
        return int(round(config.max_position_embeddings / float(params["factor"])))
    return int(config.max_position_embeddings)


def set_rope(
    config_or_model, *, base: float | None = None, max_context: int | None = None, scaling: dict | None = None
):
    """Set RoPE base, context and scaling on a config or a loaded model (in place); returns the config.

    `scaling` is transformers' rope_parameters vocabulary: {"rope_type": "linear"|"dynamic"|"yarn"|
    "llama3", "factor": f, ...}; {"rope_type": "default"} removes scaling, None keeps the current one.
    A missing factor is max_context / trained context; a missing max_context is trained context * factor.
    For a model, the rotary embedding module is rebuilt so its frequencies follow the new config.
    """
    model = config_or_model if isinstance(config_or_model, PreTrainedModel) else None
    config = model.config if model is not None else config_or_model
    params = rope_parameters(config)
    original = trained_context(config)

    if base is not None:
        if not base > 0:
            raise ValueError(f"RoPE base must be positive, got {base}")
        params["rope_theta"] = float(base)
    if max_context is not None and int(max_context) < 1:
        raise ValueError(f"max context must be a positive number of tokens, got {max_context}")

    if scaling is not None:
        params, max_context = _apply_scaling(params, dict(scaling), original, max_context)
    elif params["rope_type"] == "dynamic" and max_context not in (None, config.max_position_embeddings):
        raise ValueError(
            "this model uses dynamic NTK scaling, which stretches from max_position_embeddings: "
            "change the factor (or the scaling) instead of the max context"
        )
    if max_context is not None:
        config.max_position_embeddings = int(max_context)

    config.rope_parameters = params
    config.standardize_rope_params()
    config.validate_rope()
    if model is not None:
        rebuild_rotary(model, model.model.rotary_emb.inv_freq.device)
    log.debug("RoPE set to %s, context %d", config.rope_parameters, config.max_position_embeddings)
    return config


def _apply_scaling(params: dict, scaling: dict, original: int, max_context: int | None) -> tuple[dict, int | None]:
    rope_type = scaling.pop("rope_type", scaling.pop("type", None)) or "default"
    theta = params["rope_theta"]
    if rope_type == "default":
        if scaling:
            raise ValueError(f"rope_type 'default' takes no scaling parameters, got {sorted(scaling)}")
        return {"rope_type": "default", "rope_theta": theta}, max_context
    if rope_type not in SCALING_TYPES:
        raise ValueError(f"unknown RoPE scaling {rope_type!r}; choose one of: default, {', '.join(SCALING_TYPES)}")

    original = int(scaling.pop("original_max_position_embeddings", original))
    factor = scaling.pop("factor", None)
    if rope_type == "dynamic" and max_context is not None and max_context != original:
        # transformers' dynamic NTK rescales from config.max_position_embeddings on the fly, so that
        # field must stay the trained context; the factor alone says how far to stretch.
        raise ValueError(
            "dynamic NTK scaling stretches past the trained context by itself: give a factor, not a new max context"
        )
    if factor is None:
        if max_context is None:
            raise ValueError(f"{rope_type} scaling needs a factor (or a max context to derive it from)")
        factor = max_context / original
    factor = float(factor)
    if factor < 1:
        raise ValueError(f"scaling factor must be >= 1, got {factor:g}")
    if rope_type == "dynamic":
        max_context = original
    elif max_context is None:
        max_context = int(round(original * factor))

    new = {"rope_type": rope_type, "rope_theta": theta, "factor": factor, **scaling}
    if rope_type in ("yarn", "llama3"):
        new["original_max_position_embeddings"] = original
    if rope_type == "llama3":
        for key, value in LLAMA3_DEFAULTS.items():
            new.setdefault(key, value)
    return new, max_context


def rope_set(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    base: float | None = None,
    max_context: int | None = None,
    scaling: dict | None = None,
) -> dict:
    """Write a copy of a checkpoint with new RoPE settings; `out_dir` appears only when complete.

    RoPE has no weights (inv_freq is a non-persistent buffer), so only config.json changes;
    every other file (weights, tokenizer) is copied as is. Returns the new rope_parameters.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    ensure_new_output_dir(out_dir)
    config = load_config(model_dir)
    set_rope(config, base=base, max_context=max_context, scaling=scaling)
    with atomic_directory(out_dir) as tmp:
        for entry in model_dir.iterdir():
            if entry.name == "config.json":
                continue
            if entry.is_dir():
                shutil.copytree(entry, tmp / entry.name)
            else:
                shutil.copy2(entry, tmp / entry.name)
        config.save_pretrained(tmp)
    log.info("wrote %s with RoPE %s, context %d", out_dir, config.rope_parameters, config.max_position_embeddings)
    return {**config.rope_parameters, "max_position_embeddings": config.max_position_embeddings}


def parse_scaling(spec: str | None, factor: float | None = None) -> dict | None:
    """CLI helper: 'linear' / 'yarn:4' / 'default' (+ optional factor) -> a scaling dict."""
    if spec is None:
        if factor is not None:
            raise ValueError("--factor needs --scaling (linear, dynamic, yarn or llama3)")
        return None
    rope_type, _, inline = spec.partition(":")
    out: dict = {"rope_type": rope_type}
    if inline:
        try:
            out["factor"] = float(inline)
        except ValueError:
            raise ValueError(f"bad scaling {spec!r}: expected TYPE or TYPE:FACTOR, e.g. linear:4") from None
    if factor is not None:
        out["factor"] = float(factor)
    return out
