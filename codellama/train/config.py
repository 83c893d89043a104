"""Training configuration: typed dataclasses resolved from a branch recipe + scale + overrides.

A recipe (`codellama/train/recipes/<branch>.yaml`) holds Code Llama's published settings for
every scale; `--set key=value` (dotted keys, YAML values) changes any field on top. The resolved
config is written next to the run, so a run can always be explained and resumed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from codellama.config import BRANCHES, apply_overrides, build, deep_merge
from codellama.presets import PRESETS
from codellama.train.precision import PRECISIONS


@dataclass
class OptimConfig:
    """AdamW as Llama 2 / Code Llama use it."""

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping


@dataclass
class ScheduleConfig:
    """Linear warmup, then cosine decay to `min_lr_ratio` of the peak."""

    warmup_steps: int = 1000
    min_lr_ratio: float = 1 / 30


@dataclass
class RopeConfig:
    """RoPE change applied to the base model before training (long-context branch); None = keep."""

    base: float | None = None
    max_context: int | None = None
    scaling: dict | None = None


@dataclass
class TrainConfig:
    branch: str
    scale: str = "tiny"
    base: str = "tiny"  # checkpoint directory, or a preset name for a fresh model
    data: str | None = None  # shard directory (or a chat JSONL for the instruct branch)
    out: str | None = None
    tokenizer: str | None = None  # exported with the final weights (default: the base checkpoint's)
    rehearsal: list[dict] = field(default_factory=list)  # [{"path": shard dir, "weight": fraction}]
    seq_len: int = 4096
    batch_tokens: int = 4 * 2**20  # global batch, in tokens
    micro_batch_size: int = 1  # sequences per forward pass on one rank
    total_tokens: float = 500e9  # the token budget; steps = ceil(total / batch)
    max_steps: int | None = None  # overrides total_tokens
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    rope: RopeConfig = field(default_factory=RopeConfig)
    precision: str = "auto"  # auto = bf16 autocast where the device supports it; see train/precision.py
    gradient_checkpointing: bool = False
    activation_offload: bool = False  # with checkpointing: keep saved layer inputs in host memory (GPU only)
    compile: bool = False  # decoder layers through torch.compile: +14% on `small`, ~+5% on tiny
    fsdp_shard_size: int = 0  # ranks sharing one model copy; 0 = one node's (HSDP across nodes)
    checkpoint_every: int = 1000  # steps; 0 = only at the end
    keep_checkpoints: int = 2  # retention: newest N are kept
    log_every: int = 1
    seed: int = 0
    device: str = "auto"
    data_expect: dict = field(default_factory=dict)  # what the recipe expects of the shards (fim_rate, ...)
    description: str = ""

    # -- derived ------------------------------------------------------------------------
    @property
    def base_kind(self) -> str:
        """ "checkpoint" (a directory) or "preset" (fresh weights); anything else is a one-line error."""

        if Path(self.base).is_dir():
            return "checkpoint"
        if self.base in PRESETS:
            return "preset"
        raise FileNotFoundError(
            f"base {self.base!r} is neither a checkpoint directory nor a preset ({', '.join(PRESETS)})"
        )

    @property
    def batch_sequences(self) -> int:
        return max(1, self.batch_tokens // self.seq_len)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_sequences * self.seq_len

    @property
    def steps(self) -> int:
        if self.max_steps is not None:
            return int(self.max_steps)
        return max(1, math.ceil(float(self.total_tokens) / self.tokens_per_step))

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per rank per step; the global batch must split evenly over ranks."""
        per_rank, rem = divmod(self.batch_sequences, world_size)
        if rem or per_rank % self.micro_batch_size:
            raise ValueError(
                f"global batch of {self.batch_sequences} sequences ({self.batch_tokens} tokens / seq_len "
                f"{self.seq_len}) does not split into {world_size} rank(s) x micro-batches of "
                f"{self.micro_batch_size}; change batch_tokens or micro_batch_size"
            )
        return per_rank // self.micro_batch_size

    def validate(self) -> TrainConfig:
        if self.branch not in BRANCHES:
            raise ValueError(f"unknown branch {self.branch!r}; choose one of: {', '.join(BRANCHES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("seq_len", "batch_tokens", "micro_batch_size", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_tokens < self.seq_len:
            raise ValueError(f"batch_tokens ({self.batch_tokens}) is smaller than one sequence ({self.seq_len})")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if not 0 <= self.schedule.min_lr_ratio <= 1:
            raise ValueError(f"schedule.min_lr_ratio must be in [0, 1], got {self.schedule.min_lr_ratio}")
        if self.fsdp_shard_size < 0:
            raise ValueError(f"fsdp_shard_size must be >= 0 (0 = automatic), got {self.fsdp_shard_size}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0 = only at the end), got {self.checkpoint_every}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.total_tokens <= 0:
            raise ValueError(f"total_tokens must be positive, got {self.total_tokens}")
        if self.schedule.warmup_steps < 0:
            raise ValueError(f"schedule.warmup_steps must be >= 0, got {self.schedule.warmup_steps}")
        optim = self.optim
        if optim.lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {optim.lr}")
        if optim.eps <= 0 or optim.weight_decay < 0 or optim.grad_clip < 0:
            raise ValueError(
                f"optim.eps must be > 0, weight_decay and grad_clip >= 0 "
                f"(got {optim.eps}, {optim.weight_decay}, {optim.grad_clip})"
            )
        if not all(0 <= b < 1 for b in optim.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {list(optim.betas)}")
        if self.rope.base is not None and self.rope.base <= 0:
            raise ValueError(f"rope.base must be positive, got {self.rope.base}")
        if self.rope.max_context is not None and self.rope.max_context < 1:
            raise ValueError(f"rope.max_context must be >= 1, got {self.rope.max_context}")
        weights = [float(r.get("weight", 0)) for r in self.rehearsal]
        if any(not r.get("path") for r in self.rehearsal) or any(w <= 0 for w in weights) or sum(weights) >= 1:
            raise ValueError("rehearsal entries need a path and a weight > 0, with weights summing to < 1")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- recipes -----------------------------------------------------------------------------
def recipe_path(branch: str) -> Path:
    if branch not in BRANCHES:
        raise ValueError(f"unknown branch {branch!r}; choose one of: {', '.join(BRANCHES)}")
    return Path(str(resources.files("codellama.train") / "recipes" / f"{branch}.yaml"))


def load_recipe(branch: str, scale: str) -> dict:
    """The recipe's defaults merged with its `scale` section, as a plain dict."""
    raw = yaml.safe_load(recipe_path(branch).read_text())
    scales = raw.get("scales", {})
    if scale not in scales:
        raise ValueError(f"branch {branch!r} has no scale {scale!r}; choose one of: {', '.join(scales)}")
    merged = deep_merge(raw.get("defaults", {}), scales[scale] or {})
    merged.update(branch=branch, scale=scale, description=raw.get("description", ""))
    return merged


def resolve_config(
    branch: str, scale: str = "tiny", overrides: list[str] | tuple[str, ...] = (), **fields
) -> TrainConfig:
    """Recipe -> keyword fields (CLI options such as data/out/base; None is ignored) -> `key=value` overrides."""
    raw = load_recipe(branch, scale)
    raw.update({k: v for k, v in fields.items() if v is not None})
    return from_dict(apply_overrides(raw, overrides))


def from_dict(raw: dict) -> TrainConfig:
    return build(TrainConfig, raw).validate()
