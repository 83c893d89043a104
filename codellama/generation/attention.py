"""Grouped-query attention without copying the KV heads, for generation on the CPU.

transformers' "sdpa" attention repeats every key/value head `num_key_value_groups` times before calling
`scaled_dot_product_attention` whenever there is a mask, and generation always has one (padding, and the
causal offset of a prompt chunk after a cached prefix). At an editor's 7k-token context that copies the
whole KV cache three times per layer and step on SmolLM2. PyTorch's kernel takes the grouped heads
directly (`enable_gqa`), with the same result, and takes the mask as an additive one in the model's dtype
(a boolean mask is converted again in every layer). `python benchmarks/bench_attention.py` times a prompt
chunk and a decode step against stock sdpa + DynamicCache on SmolLM2; this 2-core host's noise is as large as
the gain (after 6,144 cached tokens: 1.33x chunk / 1.17x step in one run, 1.01x / 1.02x in another).
tests/codellama/test_generation_kv.py checks that the logits match stock sdpa.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "codellama_gqa_sdpa"
_registered = False


def _gqa_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    causal = attention_mask is None and query.shape[2] > 1 and query.shape[2] == key.shape[2]
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, scale=scaling, is_causal=causal, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        def additive_mask(*args, dtype=torch.float32, **kwargs):
            """sdpa's mask as an additive one in the model's dtype (None where plain causal attention does):
            with a boolean mask PyTorch's CPU kernel converts it in every layer, and runs ~15% slower."""
            mask = sdpa_mask(*args, **kwargs)
            if mask is None or mask.dtype != torch.bool:
                return mask
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)

        AttentionInterface.register(NAME, _gqa_sdpa)
        AttentionMaskInterface.register(NAME, additive_mask)
        _registered = True


def use_grouped_attention(model) -> bool:
    """Switch a model that uses "sdpa" on the CPU to the grouped kernel; True if it was switched. On CUDA
    the fused kernels are left as they are (there, a mask with `enable_gqa` may fall back to the math path)."""
    config = getattr(model, "config", None)
    if not hasattr(model, "set_attn_implementation") or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if next(model.parameters()).device.type != "cpu":
        return False
    if getattr(config, "num_key_value_heads", None) in (None, config.num_attention_heads):
        return False  # no grouped heads: nothing is repeated
    _register()
    model.set_attn_implementation(NAME)
    return True
