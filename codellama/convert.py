"""Meta's native checkpoint layout -> Hugging Face `LlamaForCausalLM` (safetensors).

Meta ships `params.json` plus `consolidated.NN.pth`, one file per model-parallel rank
(1 for 7B, 2 for 13B, 4 for 34B, 8 for 70B). Column-parallel weights (wq, wk, wv, w1,
w3, output) are split along their output rows, row-parallel ones (wo, w2) along their
input columns, the embedding along its hidden dimension; norms are replicated.
Meta's rotary embedding pairs adjacent channels (complex numbers) while transformers'
rotates the two halves of each head, so q/k rows are permuted.

Conversion streams layer by layer from memory-mapped shards and writes safetensors
shards as it goes, so a 70B model does not need 140 GB of RAM.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from codellama.io import atomic_directory, atomic_write_json, read_json_file
from codellama.model import hf_config, match_known_preset
from codellama.presets import ModelPreset
from codellama.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

COLUMN_PARALLEL = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3")
ROW_PARALLEL = ("attention.wo", "feed_forward.w2")
HF_NAMES = {
    "attention.wq": "self_attn.q_proj",
    "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def permute_for_hf(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Interleaved (Meta) rotary channel order -> half-split (transformers) order."""
    rows, cols = weight.shape
    return weight.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def read_params(meta_dir: Path) -> dict:
    path = meta_dir / "params.json"
    params = read_json_file(path, missing=f"{meta_dir} is not a Meta checkpoint (no params.json)")
    for key in ("dim", "n_layers", "n_heads"):
        if key not in params:
            raise ValueError(f"{path} lacks {key!r}")
    return params


def shard_paths(meta_dir: Path) -> list[Path]:
    paths = sorted(meta_dir.glob("consolidated.*.pth"), key=lambda p: int(re.findall(r"\d+", p.name)[0]))
    if not paths:
        raise FileNotFoundError(f"{meta_dir} has no consolidated.NN.pth files")
    return paths


def _load_shard(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None


def preset_from_params(params: dict, shards: list[dict[str, torch.Tensor]], name: str = "meta") -> ModelPreset:
    embed_rows = shards[0]["tok_embeddings.weight"].shape[0]
    ffn_dim = sum(s["layers.0.feed_forward.w1.weight"].shape[0] for s in shards)
    vocab = params.get("vocab_size", -1)
    return ModelPreset(
        name=name,
        dim=params["dim"],
        n_layers=params["n_layers"],
        n_heads=params["n_heads"],
        n_kv_heads=params.get("n_kv_heads") or params["n_heads"],
        ffn_dim=ffn_dim,
        vocab_size=vocab if vocab and vocab > 0 else embed_rows,
        norm_eps=params.get("norm_eps", 1e-5),
        rope_theta=float(params.get("rope_theta", 10_000.0)),
        max_seq_len=int(params.get("max_seq_len", 4096)),
    )


def _merge(shards: list[dict[str, torch.Tensor]], key: str, dim: int | None) -> torch.Tensor:
    parts = [s[key] for s in shards]
    if dim is None or len(parts) == 1:
        return parts[0].clone()
    return torch.cat(parts, dim=dim)


def _layer_tensors(shards, preset: ModelPreset, i: int, dtype) -> dict[str, torch.Tensor]:
    out = {}
    for meta_name in COLUMN_PARALLEL + ROW_PARALLEL:
        w = _merge(shards, f"layers.{i}.{meta_name}.weight", 0 if meta_name in COLUMN_PARALLEL else 1)
        if meta_name == "attention.wq":
            w = permute_for_hf(w, preset.n_heads)
        elif meta_name == "attention.wk":
            w = permute_for_hf(w, preset.n_kv_heads)
        out[f"model.layers.{i}.{HF_NAMES[meta_name]}.weight"] = w
    for norm in ("attention_norm", "ffn_norm"):
        out[f"model.layers.{i}.{HF_NAMES[norm]}.weight"] = _merge(shards, f"layers.{i}.{norm}.weight", None)
    return {k: v.to(dtype).contiguous() for k, v in out.items()}


def convert_meta_to_hf(
    meta_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    tokenizer_path=None,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = 5 * 2**30,
    max_seq_len: int | None = None,
) -> Path:
    """Convert; `out_dir` appears only when the whole checkpoint is written."""
    meta_dir = Path(meta_dir)
    params = read_params(meta_dir)
    paths = shard_paths(meta_dir)
    shards = [_load_shard(p) for p in paths]
    preset = preset_from_params(params, shards)
    preset = preset.replace(name=match_known_preset(preset) or "custom")
    if max_seq_len:
        preset = preset.replace(max_seq_len=max_seq_len)
    dtype = dtype or shards[0]["tok_embeddings.weight"].dtype
    log.info(
        "converting %d-shard Meta checkpoint: %d layers, dim %d, vocab %d, %s",
        len(paths),
        preset.n_layers,
        preset.dim,
        preset.vocab_size,
        dtype,
    )

    tokenizer = None
    if tokenizer_path is not None:
        tokenizer = load_tokenizer(tokenizer_path)
        if tokenizer.vocab_size + 16 == preset.vocab_size and tokenizer.backend == "sentencepiece":
            tokenizer, _ = tokenizer.with_infilling_tokens()  # Llama 2's file for a Code Llama checkpoint
        if tokenizer.vocab_size != preset.vocab_size:
            raise ValueError(
                f"tokenizer has {tokenizer.vocab_size} pieces but the model's vocabulary is {preset.vocab_size}"
            )

    with atomic_directory(out_dir) as tmp:
        writer = _ShardWriter(tmp, max_shard_bytes)
        writer.add(
            {
                "model.embed_tokens.weight": _merge(shards, "tok_embeddings.weight", 1).to(dtype),
                "model.norm.weight": _merge(shards, "norm.weight", None).to(dtype),
                "lm_head.weight": _merge(shards, "output.weight", 0).to(dtype),
            }
        )
        for i in tqdm(range(preset.n_layers), desc="layers", unit="layer", disable=preset.n_layers < 8):
            writer.add(_layer_tensors(shards, preset, i, dtype))
        writer.finish()
        config = hf_config(preset)
        config.dtype = dtype
        config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save(tmp)
    return Path(out_dir)


class _ShardWriter:
    """Writes `model-0000i-of-0000n.safetensors` files plus the index transformers reads."""

    def __init__(self, out_dir: Path, max_bytes: int):
        self.out_dir, self.max_bytes = Path(out_dir), max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.files: list[list[str]] = []
        self.total_bytes = 0

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, t in tensors.items():
            size = t.numel() * t.element_size()
            if self.pending and self.pending_bytes + size > self.max_bytes:
                self._flush()
            self.pending[name] = t
            self.pending_bytes += size
            self.total_bytes += size

    def _flush(self) -> None:
        index = len(self.files)
        save_file(self.pending, str(self.out_dir / f"part-{index}.safetensors"), metadata={"format": "pt"})
        self.files.append(list(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> None:
        if self.pending:
            self._flush()
        n = len(self.files)
        if n == 1:
            os.replace(self.out_dir / "part-0.safetensors", self.out_dir / "model.safetensors")
            return
        weight_map = {}
        for i, names in enumerate(self.files):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self.out_dir / f"part-{i}.safetensors", self.out_dir / final)
            weight_map.update({name: final for name in names})
        atomic_write_json(
            self.out_dir / "model.safetensors.index.json",
            {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map},
        )
