"""Memory per GPU for a training config, before renting the GPUs.

Model states follow the ZeRO-3 / FSDP accounting (Rajbhandari et al. 2020): fp32 master
weights (4 B), fp32 gradients (4 B) and AdamW's two moments (8 B) per parameter, all divided by
the world size, plus the bf16 copies of the layers being gathered. Activations are counted per
token and layer for a Llama block with memory-efficient attention (no s^2 scores kept):
without checkpointing every intermediate of the block is kept for backward; with it only
each block's input survives and one block is recomputed at a time. The output logits (fp32,
vocabulary-wide) are counted separately because at 32k vocabulary they rival a layer stack.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from codellama.model import count_parameters
from codellama.presets import ModelPreset

GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    world_size: int
    parameters: int
    params_gib: float           # fp32 master weights, sharded
    grads_gib: float            # fp32 gradients, sharded
    optimizer_gib: float        # AdamW exp_avg + exp_avg_sq, sharded
    gathered_gib: float         # unsharded compute copies of in-flight layers (FSDP prefetch)
    activations_gib: float      # without activation checkpointing
    activations_ckpt_gib: float  # with activation checkpointing
    logits_gib: float
    total_gib: float            # with the config's checkpointing choice
    total_other_gib: float      # with the other choice

    def as_dict(self) -> dict:
        return asdict(self)


def activation_bytes_per_token_layer(preset: ModelPreset, compute_bytes: int) -> int:
    """Saved tensors of one decoder block per token: residual inputs, norms, q/k/v, attention output, SwiGLU."""
    d, kv, f = preset.dim, preset.n_kv_heads * preset.head_dim, preset.ffn_dim
    b = compute_bytes
    residual = 2 * 4 * d                    # the two fp32 residual-stream inputs of the norms
    attention = b * (d + d + 2 * kv + d)    # norm output, q, k+v, attention output (o_proj input)
    mlp = b * (d + 4 * f)                   # norm output, gate, up, silu(gate), gate*up
    return residual + attention + mlp


def estimate(preset: ModelPreset, *, seq_len: int, micro_batch_size: int, world_size: int,
             gradient_checkpointing: bool, bf16: bool = True) -> MemoryEstimate:
    n = count_parameters(preset)
    w = max(1, world_size)
    compute_bytes = 2 if bf16 else 4
    head = preset.dim * preset.vocab_size * (1 if preset.tie_embeddings else 2)
    layer_params = (n - head - preset.dim) // max(1, preset.n_layers)
    # FSDP2 keeps the current and the prefetched layer unsharded (bf16 compute copies), plus their grads.
    gathered = (2 * layer_params * compute_bytes * 2) if w > 1 else 0
    tokens = seq_len * micro_batch_size
    per_layer = activation_bytes_per_token_layer(preset, compute_bytes)
    act_full = tokens * per_layer * preset.n_layers
    act_ckpt = tokens * 4 * preset.dim * preset.n_layers + tokens * per_layer  # block inputs + one recompute
    logits = tokens * preset.vocab_size * (compute_bytes + 4 + 4)  # logits, fp32 copy, its gradient
    states = 16 * n / w
    with_ckpt = states + gathered + act_ckpt + logits
    without = states + gathered + act_full + logits
    return MemoryEstimate(
        world_size=w, parameters=n, params_gib=4 * n / w / GIB, grads_gib=4 * n / w / GIB,
        optimizer_gib=8 * n / w / GIB, gathered_gib=gathered / GIB, activations_gib=act_full / GIB,
        activations_ckpt_gib=act_ckpt / GIB, logits_gib=logits / GIB,
        total_gib=(with_ckpt if gradient_checkpointing else without) / GIB,
        total_other_gib=(without if gradient_checkpointing else with_ckpt) / GIB)
