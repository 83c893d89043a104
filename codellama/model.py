"""Build transformers' `LlamaForCausalLM` from a preset, and read a preset back from a config.

The toolkit never defines its own decoder: every model is a stock `LlamaForCausalLM`, so
what we train opens anywhere Hugging Face checkpoints open.
"""

from __future__ import annotations

import logging

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from codellama.presets import PRESETS, ModelPreset

log = logging.getLogger(__name__)


def hf_config(
    preset: ModelPreset, *, bos_token_id: int = 1, eos_token_id: int = 2, attn_implementation: str = "sdpa"
) -> LlamaConfig:
    config = LlamaConfig(
        vocab_size=preset.vocab_size,
        hidden_size=preset.dim,
        intermediate_size=preset.ffn_dim,
        num_hidden_layers=preset.n_layers,
        num_attention_heads=preset.n_heads,
        num_key_value_heads=preset.n_kv_heads,
        max_position_embeddings=preset.max_seq_len,
        rms_norm_eps=preset.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(preset.rope_theta)},
        tie_word_embeddings=preset.tie_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=None,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
    )
    config._attn_implementation = attn_implementation
    # Record which preset the model came from, so `model info` can name it.
    config.codellama_preset = preset.name
    return config


def rope_theta_of(config: LlamaConfig) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10_000.0)))


def preset_from_config(config: LlamaConfig) -> ModelPreset:
    return ModelPreset(
        name=getattr(config, "codellama_preset", None) or "custom",
        dim=config.hidden_size,
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        n_kv_heads=config.num_key_value_heads or config.num_attention_heads,
        ffn_dim=config.intermediate_size,
        vocab_size=config.vocab_size,
        norm_eps=config.rms_norm_eps,
        rope_theta=rope_theta_of(config),
        max_seq_len=config.max_position_embeddings,
        tie_embeddings=bool(config.tie_word_embeddings),
    )


def match_known_preset(preset: ModelPreset) -> str | None:
    """Name of the built-in preset with exactly this shape (ignoring vocab), if any."""
    for name, known in PRESETS.items():
        if (known.dim, known.n_layers, known.n_heads, known.n_kv_heads, known.ffn_dim, known.rope_theta) == (
            preset.dim,
            preset.n_layers,
            preset.n_heads,
            preset.n_kv_heads,
            preset.ffn_dim,
            preset.rope_theta,
        ):
            return name
    return None


def build_model(
    preset: ModelPreset,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    gradient_checkpointing: bool = False,
    attn_implementation: str = "sdpa",
    seed: int | None = None,
) -> LlamaForCausalLM:
    """A freshly initialised model; on the meta device no memory is allocated."""
    config = hf_config(preset, attn_implementation=attn_implementation)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model = model.to(dtype=dtype)
    set_gradient_checkpointing(model, gradient_checkpointing)
    return model


def empty_model(config: LlamaConfig) -> LlamaForCausalLM:
    """A model's structure on the meta device (no memory), to be filled from a state dict.

    RoPE's inverse frequencies are a non-persistent buffer that no state dict carries: call
    `rebuild_rotary` once the weights are in.
    """
    with torch.device("meta"):
        return LlamaForCausalLM(config)


def rebuild_rotary(model: LlamaForCausalLM, device: str | torch.device = "cpu") -> None:
    """Recompute the RoPE buffers from the model's config (its base, scaling and context)."""
    model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config).to(device)


def set_gradient_checkpointing(model: LlamaForCausalLM, enabled: bool, *, offload: bool = False) -> None:
    """Recompute activations in backward (and optionally keep saved ones in CPU memory)."""
    if enabled and offload and not torch.accelerator.is_available():
        # Activations already live in host memory, and transformers' offload asks for pinned memory,
        # which torch cannot allocate without an accelerator: plain checkpointing is the same thing here.
        log.info("activation offload needs an accelerator; on the CPU it is plain checkpointing")
        offload = False
    if enabled:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False}, offload=offload)
        model.config.use_cache = False
    elif model.is_activation_checkpointing:
        model.activation_checkpointing_disable()


def count_parameters(preset: ModelPreset) -> int:
    """Exact parameter count without allocating weights (meta device)."""
    model = build_model(preset, device="meta")
    return sum(p.numel() for p in model.parameters())


def vocab_matrices(model: LlamaForCausalLM) -> list[torch.Tensor]:
    """The input embedding and the output layer's weights, one row per token; once when they are tied."""
    weights = (model.get_input_embeddings().weight, model.get_output_embeddings().weight)
    return list({id(w): w for w in weights}.values())


def resize_vocab_mean_init(model: LlamaForCausalLM, new_vocab_size: int) -> None:
    """Grow embedding and output rows; new rows start at the mean of the old ones.

    The mean keeps new pieces' logits in the range of existing ones, so a model that
    gains the infilling pieces does not start by predicting them everywhere.
    """
    old = model.get_input_embeddings().weight.shape[0]
    if new_vocab_size < old:
        raise ValueError(f"cannot shrink the vocabulary from {old} to {new_vocab_size}")
    if new_vocab_size == old:
        return
    model.resize_token_embeddings(new_vocab_size, mean_resizing=False)
    with torch.no_grad():
        for weight in vocab_matrices(model):
            weight[old:] = weight[:old].mean(dim=0, keepdim=True)
    log.info("resized vocabulary %d -> %d (new rows = mean of old rows)", old, new_vocab_size)
