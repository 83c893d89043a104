"""Hugging Face checkpoints (safetensors + config.json + tokenizer files), written atomically."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from codellama.io import atomic_directory, read_json_file
from codellama.tokenizer import Tokenizer, load_tokenizer, tokenizer_file
from codellama.tokenizer.load import check_model_vocab

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A directory that is not a usable checkpoint."""


def save_checkpoint(
    model: LlamaForCausalLM,
    out_dir: str | os.PathLike,
    tokenizer: Tokenizer | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write model (+ tokenizer) into `out_dir`, which appears only when complete."""
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save(tmp)
    log.info("saved checkpoint to %s", out_dir)
    return Path(out_dir)


# config.json fields whose wrong type would otherwise surface deep inside transformers as a TypeError.
_POSITIVE_INTS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
)
_POSITIVE_FLOATS = ("rms_norm_eps", "rope_theta")


def load_config(model_dir: str | os.PathLike) -> LlamaConfig:
    """The model's config.json, its types checked: a broken file is a one-line error naming it."""
    path = Path(model_dir) / "config.json"
    raw = read_json_file(path, missing=f"{model_dir} is not a checkpoint directory (no config.json)")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    if raw.get("model_type") != "llama":
        raise CheckpointError(f"{path}: model_type is {raw.get('model_type')!r}, expected 'llama'")
    for key in _POSITIVE_INTS:
        value = raw.get(key)
        if value is not None and (type(value) is not int or value < 1):
            raise CheckpointError(f"{path}: {key} must be a positive integer, got {value!r}")
    for key in _POSITIVE_FLOATS:
        value = raw.get(key)
        if value is not None and (type(value) not in (int, float) or not math.isfinite(value) or value <= 0):
            raise CheckpointError(f"{path}: {key} must be a positive number, got {value!r}")
    try:
        return LlamaConfig.from_pretrained(str(model_dir))
    except Exception as exc:  # transformers' own checks (head counts that do not divide, ...)
        raise CheckpointError(f"{path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def check_checkpoint(model_dir: str | os.PathLike) -> LlamaConfig:
    """A checkpoint directory's config, after checking it has weights and a vocabulary its tokenizer fits."""
    config = load_config(model_dir)
    if not _weight_files(model_dir):
        raise CheckpointError(f"{model_dir} has no weights (*.safetensors)")
    if tokenizer_file(model_dir) is not None:  # a garbage tokenizer is an error here too, not after training
        check_model_vocab(model_dir, load_tokenizer(model_dir, check_model=False))
    return config


def _weight_files(model_dir: str | os.PathLike) -> list[Path]:
    return list(Path(model_dir).glob("*.safetensors")) + list(Path(model_dir).glob("*.bin"))


def load_model(
    model_dir: str | os.PathLike,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> LlamaForCausalLM:
    check_checkpoint(model_dir)
    try:
        model = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation=attn_implementation)
    except Exception as exc:  # corrupt/truncated safetensors, shape mismatch, ...
        raise CheckpointError(f"cannot load weights from {model_dir}: {str(exc).splitlines()[0]}") from None
    return model.to(device)
