"""Learning-rate schedule: linear warmup, then cosine decay to a fraction of the peak (Llama 2 / Code Llama)."""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate used for optimizer step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_schedule(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR (so its state checkpoints like any torch scheduler) following `lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _Factor(warmup_steps, total_steps, min_ratio))


class _Factor:
    """Picklable lambda: LambdaLR stores callable objects' __dict__ in its state_dict."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float):
        self.warmup_steps, self.total_steps, self.min_ratio = warmup_steps, total_steps, min_ratio

    def __call__(self, step: int) -> float:
        return lr_factor(step, warmup_steps=self.warmup_steps, total_steps=self.total_steps, min_ratio=self.min_ratio)
