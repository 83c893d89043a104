"""Memory per GPU for a training config, before renting the GPUs.

Model states follow the ZeRO-3 / FSDP accounting (Rajbhandari et al. 2020): fp32 master
weights (4 B), fp32 gradients (4 B) and AdamW's two moments (8 B) per parameter, all divided by
the world size, plus the bf16 copies of the layers being gathered. Activations are counted per
token and layer for a Llama block with memory-efficient attention (no s^2 scores kept):
without checkpointing every intermediate of the block is kept for backward; with it only
each block's input survives and one block is recomputed at a time. The output layer and loss
are counted as the loop runs them: one chunk of logits at a time, never the whole [tokens, vocab].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from codellama.model import count_parameters
from codellama.presets import ModelPreset
from codellama.train.loss import CHUNK_TOKENS

GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    world_size: int
    parameters: int
    params_gib: float  # fp32 master weights, sharded
    grads_gib: float  # fp32 gradients, sharded
    optimizer_gib: float  # AdamW exp_avg + exp_avg_sq, sharded
    gathered_gib: float  # unsharded compute copies of in-flight layers (FSDP prefetch)
    twin_gib: float  # precision=bf16-weights: the bf16 twin's weights and its micro-batch gradients
    activations_gib: float  # without activation checkpointing
    activations_ckpt_gib: float  # with activation checkpointing
    logits_gib: float
    total_gib: float  # with the config's checkpointing choice
    total_other_gib: float  # with the other choice

    def as_dict(self) -> dict:
        return asdict(self)


def activation_bytes_per_token_layer(preset: ModelPreset, compute_bytes: int) -> int:
    """Bytes autograd saves per token in one decoder block (transformers' Llama, SDPA attention).

    Counted from the saved-tensor hooks (tests/test_longctx_lcft.py measures it): RMSNorm keeps its
    fp32 input, normalised input and 1/rms in any precision; under bf16 autocast every projection
    keeps its own bf16 cast of its input (3 for q/k/v, 2 for gate/up), in fp32 they share one.
    SDPA keeps q, k, v, its output (o_proj's input) and a log-sum-exp per head; SwiGLU keeps gate,
    up, silu(gate) and their product. RoPE keeps only cos/sin, shared by all layers.
    """
    d, kv, f, h = preset.dim, preset.n_kv_heads * preset.head_dim, preset.ffn_dim, preset.n_heads
    b = compute_bytes
    autocast = b < 4
    norms = 2 * (4 * d + 4 * d + 4)  # input, normalised input, 1/rms; fp32
    projection_inputs = ((3 + 2) if autocast else 2) * b * d
    attention = b * (d + 2 * kv + d) + 4 * h  # q, k, v, output, log-sum-exp
    mlp = 4 * b * f  # gate, up, silu(gate), silu(gate) * up
    return norms + projection_inputs + attention + mlp


def output_layer_bytes(preset: ModelPreset, tokens: int, compute_bytes: int, chunk: int = CHUNK_TOKENS) -> int:
    """The loop's fused output layer + loss: one chunk of logits, plus the gradients it makes in forward.

    The [tokens, vocab] logits are never held (codellama/train/loss.py): one `chunk` of them in the
    compute dtype, the output weight's fp32 gradient and the hidden states' gradient, kept from
    the forward pass until backward.
    """
    v, d = preset.vocab_size, preset.dim
    return min(chunk, tokens) * v * compute_bytes + 4 * v * d + tokens * d * compute_bytes


def estimate(
    preset: ModelPreset,
    *,
    seq_len: int,
    micro_batch_size: int,
    world_size: int,
    gradient_checkpointing: bool,
    bf16: bool = True,
    twin: bool = False,
) -> MemoryEstimate:
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
    logits = output_layer_bytes(preset, tokens, compute_bytes)
    states = 16 * n / w + (4 * n if twin else 0)  # masters, grads, AdamW (sharded); a bf16 twin + its grads
    with_ckpt = states + gathered + act_ckpt + logits
    without = states + gathered + act_full + logits
    return MemoryEstimate(
        world_size=w,
        parameters=n,
        params_gib=4 * n / w / GIB,
        grads_gib=4 * n / w / GIB,
        optimizer_gib=8 * n / w / GIB,
        gathered_gib=gathered / GIB,
        twin_gib=(4 * n if twin else 0) / GIB,
        activations_gib=act_full / GIB,
        activations_ckpt_gib=act_ckpt / GIB,
        logits_gib=logits / GIB,
        total_gib=(with_ckpt if gradient_checkpointing else without) / GIB,
        total_other_gib=(without if gradient_checkpointing else with_ckpt) / GIB,
    )
