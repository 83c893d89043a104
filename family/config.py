"""The family run's configuration: typed dataclasses, with the defaults in configs/default.yaml.

A user's YAML file and `--set key=value` overrides go on top of the defaults through the toolkit's
one configuration mechanism (`codellama.config`): unknown keys and wrongly typed values are one-line
errors naming the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from codellama.config import BRANCHES, SCALES, apply_overrides, build, deep_merge, load_yaml, to_raw
from codellama.data.fim import SPAN_MODES


def default_config_path() -> Path:
    return Path(str(resources.files("family") / "configs" / "default.yaml"))


@dataclass
class TokenizerSettings:
    # a tokenizer.model / tokenizer.json (or its directory) to extend; None = the base checkpoint's own
    # tokenizer when base.model is a checkpoint, else one trained on the corpus
    base: str | None = None
    vocab_size: int = 4016  # when training: total pieces, incl. Code Llama's 16


@dataclass
class BaseSettings:
    model: str = "tiny"  # a preset, a Hugging Face checkpoint directory (any tokenizer), or a Meta directory


@dataclass
class DataSettings:
    sources: list[str] = field(default_factory=list)  # empty = the Python standard library
    fim_rate: float = 0.9
    spm_rate: float = 0.5
    span_mode: str = "char"
    max_documents: int | None = None


@dataclass
class InstructDataSettings:
    from_: str = "code"  # YAML `from`: the model that writes questions, tests and solutions
    questions: int = 16
    solutions_per_question: int = 4
    max_new_tokens: int = 256
    stdlib_pairs: int = 1500


@dataclass
class SampledSettings:
    samples: int = 20
    temperature: float = 0.8
    top_p: float = 0.95


@dataclass
class HumanEvalSettings:
    models: list[str] = field(default_factory=list)
    limit: int | None = None
    max_new_tokens: int = 128
    sampled: SampledSettings | None = None  # sampled runs for pass@10/100 besides greedy


@dataclass
class InfillingSettings:
    models: list[str] = field(default_factory=list)
    benchmarks: list[str] = field(default_factory=list)
    limit: int | None = 150
    max_new_tokens: int = 64


@dataclass
class LongContextSettings:
    models: list[str] = field(default_factory=list)
    ppl_lengths: list[int] = field(default_factory=list)
    ppl_samples: int = 4
    key_retrieval_lengths: list[int] = field(default_factory=list)
    key_retrieval_positions: list[float] = field(default_factory=list)


@dataclass
class EvalSettings:
    humaneval: HumanEvalSettings = field(default_factory=HumanEvalSettings)
    infilling: InfillingSettings = field(default_factory=InfillingSettings)
    long_context: LongContextSettings = field(default_factory=LongContextSettings)


@dataclass
class PipelineConfig:
    seed: int = 0
    scale: str = "tiny"
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)
    base: BaseSettings = field(default_factory=BaseSettings)
    data: DataSettings = field(default_factory=DataSettings)
    branches: dict[str, list[str]] = field(default_factory=dict)  # extra `key=value` overrides per branch recipe
    instruct_data: InstructDataSettings = field(default_factory=InstructDataSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    source: str = field(default="default", init=False)  # where the config came from (for the report)

    def to_dict(self) -> dict:
        raw = to_raw(self)
        raw.pop("source")
        return raw

    def validate(self) -> PipelineConfig:
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {self.scale!r}")
        unknown = set(self.branches) - set(BRANCHES)
        if unknown:
            raise ValueError(
                f"unknown branch(es) in config: {', '.join(sorted(unknown))}; branches are {', '.join(BRANCHES)}"
            )
        for section in ("humaneval", "infilling", "long_context"):
            bad = set(getattr(self.eval, section).models) - set(BRANCHES)
            if bad:
                raise ValueError(f"eval.{section}.models names unknown model(s) {', '.join(sorted(bad))}")
        if self.data.span_mode not in SPAN_MODES:
            raise ValueError(f"data.span_mode must be one of {', '.join(SPAN_MODES)}, got {self.data.span_mode!r}")
        if self.instruct_data.from_ not in BRANCHES:
            raise ValueError(
                f"instruct_data.from must be a branch ({', '.join(BRANCHES)}), got {self.instruct_data.from_!r}"
            )
        return self


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """The default config, a user file's keys on top, then `key=value` overrides."""
    raw = yaml.safe_load(default_config_path().read_text())
    if path is not None and str(path) != "default":
        raw = deep_merge(raw, load_yaml(path))
    apply_overrides(raw, overrides)
    config = build(PipelineConfig, raw).validate()
    config.source = str(path or "default") + (f" with --set {' '.join(overrides)}" if overrides else "")
    return config
