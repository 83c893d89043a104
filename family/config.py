"""The family run's configuration: one YAML file, typed here, with the defaults in configs/default.yaml."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

BRANCHES = ("code", "python", "long-context", "instruct")


def default_config_path() -> Path:
    return Path(str(resources.files("family") / "configs" / "default.yaml"))


@dataclass
class PipelineConfig:
    seed: int = 0
    scale: str = "tiny"
    tokenizer: dict = field(default_factory=dict)
    base: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    branches: dict = field(default_factory=dict)
    instruct_data: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    source: str = "default"  # where the config came from (for the report)

    def to_dict(self) -> dict:
        return {
            k: copy.deepcopy(getattr(self, k))
            for k in ("seed", "scale", "tokenizer", "base", "data", "branches", "instruct_data", "eval")
        }


def _merge(base: dict, top: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in (top or {}).items():
        if key not in base:
            raise ValueError(f"unknown config key {where}{key!r}; known: {', '.join(base)}")
        if isinstance(base[key], dict) and isinstance(value, dict) and base[key]:
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def load_config(path: str | os.PathLike | None = None) -> PipelineConfig:
    """The default config, with a user file's keys on top (unknown keys are an error, not ignored)."""
    defaults = yaml.safe_load(default_config_path().read_text())
    user: dict = {}
    if path is not None and str(path) != "default":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            user = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(user, dict):
            raise ValueError(f"{path} must hold a mapping of settings")
    merged = _merge(defaults, user, "")
    unknown = set(merged["branches"]) - set(BRANCHES)
    if unknown:
        raise ValueError(
            f"unknown branch(es) in config: {', '.join(sorted(unknown))}; branches are {', '.join(BRANCHES)}"
        )
    for section in ("humaneval", "infilling", "long_context"):
        bad = set(merged["eval"][section]["models"]) - set(BRANCHES)
        if bad:
            raise ValueError(f"eval.{section}.models names unknown model(s) {', '.join(sorted(bad))}")
    return PipelineConfig(**merged, source=str(path or "default"))
