"""Picking the next token from logits: greedy, or top-k / top-p / min-p filtering then temperature."""

from __future__ import annotations

import torch

from codellama.generation.protocol import SamplingParams


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token id from a row's logits (shape [vocab]).

    Filters work on the untempered distribution in llama.cpp's order (top_k, top_p, min_p); the temperature
    then reshapes what is left. Greedy when the temperature is 0.
    """
    if params.temperature == 0:
        return int(logits.argmax())
    logits = logits.float()
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < params.top_p  # always keeps the top token
        kept = torch.zeros_like(keep).scatter(0, order, keep)  # back to vocabulary order
        logits = logits.masked_fill(~kept, float("-inf"))
    if params.min_p > 0:
        logits = logits.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
