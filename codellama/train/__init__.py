"""Continued training of Llama models into the Code Llama family: one loop, four branch recipes.

    config = resolve_config("code", "tiny", ["optim.lr=1e-3"], data="shards/", out="runs/code")
    result = train(config)        # same call single-process or under torchrun (FSDP2)
    train_branch("code", data="shards/", base="runs/tiny", out="runs/code")   # the pipeline's one-liner

Modules: config (dataclasses + YAML recipes), data (which rank trains on what), schedule,
distributed (process group, FSDP2), state (resumable checkpoints), memory (per-GPU estimate),
metrics (JSONL, TensorBoard, PNG), loop (the loop itself).
"""

from codellama.config import BRANCHES, SCALES
from codellama.train.config import TrainConfig, resolve_config
from codellama.train.loop import TrainResult, resume_config, train, train_branch

__all__ = [
    "BRANCHES",
    "SCALES",
    "TrainConfig",
    "TrainResult",
    "resolve_config",
    "resume_config",
    "train",
    "train_branch",
]
