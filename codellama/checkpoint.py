"""Hugging Face checkpoints (safetensors + config.json + tokenizer files), written atomically."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from codellama.io import atomic_directory, read_json_file
from codellama.tokenizer import Tokenizer, load_tokenizer  # noqa: F401  (load_tokenizer: for older callers)

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


def load_config(model_dir: str | os.PathLike) -> LlamaConfig:
    path = Path(model_dir) / "config.json"
    raw = read_json_file(path, missing=f"{model_dir} is not a checkpoint directory (no config.json)")
    if raw.get("model_type") != "llama":
        raise CheckpointError(f"{path}: model_type is {raw.get('model_type')!r}, expected 'llama'")
    return LlamaConfig.from_pretrained(str(model_dir))


def load_model(
    model_dir: str | os.PathLike,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> LlamaForCausalLM:
    load_config(model_dir)
    weights = list(Path(model_dir).glob("*.safetensors")) + list(Path(model_dir).glob("*.bin"))
    if not weights:
        raise CheckpointError(f"{model_dir} has no weights (*.safetensors)")
    try:
        model = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation=attn_implementation)
    except Exception as exc:  # corrupt/truncated safetensors, shape mismatch, ...
        raise CheckpointError(f"cannot load weights from {model_dir}: {str(exc).splitlines()[0]}") from None
    return model.to(device)
