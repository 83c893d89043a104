"""The family run's configuration: typed dataclasses, with named configs in configs/NAME.yaml.

`--config NAME` picks a built-in config (`tiny`: the smoke run from scratch; `smollm2`: the recipe on a
real pretrained base); `--config FILE` puts a user's YAML on top of the default one, or on top of the
built-in config its `extends: NAME` key names. `--set key=value`
overrides go last, through the toolkit's one configuration mechanism (`codellama.config`): unknown keys
and wrongly typed values are one-line errors naming the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from codellama.config import BRANCHES, DTYPES, SCALES, apply_overrides, build, deep_merge, load_yaml, to_raw
from codellama.data.fim import SPAN_MODES
from family.split import FIM_UNITS

# The config `codellama pipeline` runs without --config (and `default` names).
DEFAULT_CONFIG = "smollm2"
# Models a family run can hold: the branches plus the controls (the base itself, code training without FIM).
MODELS = ("base", "code-nofim", *BRANCHES)


def named_configs() -> list[str]:
    """The built-in configs (family/configs/*.yaml), by name."""
    return sorted(
        p.name[:-5] for p in resources.files("family").joinpath("configs").iterdir() if p.name.endswith(".yaml")
    )


def config_path(name: str) -> Path:
    """The file of a built-in config (`default` = DEFAULT_CONFIG)."""
    name = DEFAULT_CONFIG if name == "default" else name
    if name not in named_configs():
        raise ValueError(f"no built-in config {name!r}; built-in configs are: {', '.join(named_configs())}")
    return Path(str(resources.files("family") / "configs" / f"{name}.yaml"))


def default_config_path() -> Path:
    return config_path(DEFAULT_CONFIG)


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
    fim_unit: str = "document"  # document: FIM per whole file, packed end to end | row: per row-sized chunk
    # with fim_unit row: the chunk size in tokens (None: one row); smaller chunks pack several FIM examples
    # into a row, so a token budget holds more of them
    fim_unit_tokens: int | None = None
    max_documents: int | None = None
    # prepare a uniform sample of the documents, about this many times each branch's training tokens (a byte
    # count at 4 bytes a token, above code's ~3), instead of the whole corpus: a 120k-token run then tokenizes
    # a few percent of the stdlib, not all of it. None: every document (what the scaling study trains on)
    sample_factor: float | None = None
    # files kept out of every training stage (by a hash of their relative path), for held-out code loss
    heldout_fraction: float = 0.0


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
    chat_max_new_tokens: int = 384  # chat-format prompts: the answer restates the whole function
    sampled: SampledSettings | None = None  # sampled runs for pass@10/100 besides greedy


@dataclass
class InfillingSettings:
    models: list[str] = field(default_factory=list)
    benchmarks: list[str] = field(default_factory=list)
    limit: int | None = 150
    limits: dict[str, int] = field(default_factory=dict)  # per benchmark, over `limit` (e.g. multi-line: 40)
    max_new_tokens: int = 64
    # + prefix: the left-to-right baseline; + psm-lines / spm-lines: PSM / SPM answers judged like it
    modes: list[str] = field(default_factory=lambda: ["psm", "spm"])
    nll: bool = False  # also the NLL per token of the true middle in every mode (needs no generation)

    def limit_for(self, benchmark: str) -> int | None:
        return self.limits.get(benchmark, self.limit)


@dataclass
class LongContextSettings:
    models: list[str] = field(default_factory=list)
    ppl_lengths: list[int] = field(default_factory=list)
    ppl_samples: int = 4
    key_retrieval_lengths: list[int] = field(default_factory=list)
    key_retrieval_positions: list[float] = field(default_factory=list)
    # also these multiples of the long-context fine-tuning length (for the RoPE comparison: 1x, 2x, 4x)
    ppl_factors: list[int] = field(default_factory=list)


@dataclass
class CodeLossSettings:
    """Held-out code loss (the paper's test loss for "FIM costs little") on the held-out files."""

    models: list[str] = field(default_factory=list)
    seq_len: int = 1024
    max_tokens: int | None = 200_000  # scored tokens at most (the first held-out files, in path order)


@dataclass
class EvalSettings:
    humaneval: HumanEvalSettings = field(default_factory=HumanEvalSettings)
    infilling: InfillingSettings = field(default_factory=InfillingSettings)
    long_context: LongContextSettings = field(default_factory=LongContextSettings)
    code_loss: CodeLossSettings = field(default_factory=CodeLossSettings)
    # every scored model in this dtype (one dtype for all, so their scores compare); bfloat16 is faster on CPUs
    # with AMX and close enough for means (evals measured NLL/token within 0.002 of float32); auto: bfloat16
    # on GPUs and AMX CPUs, float32 elsewhere (an AVX2-only CPU emulates bf16 products ~100x slower)
    dtype: str = "float32"
    # rows decoding together (continuous batching): on a CPU a larger batch reads the weights once for more rows
    # (SmolLM2 bf16 greedy HumanEval, 164 prompts x 128 tokens: 141 tokens/s at 16 rows, 178 at 64)
    batch_size: int = 64


@dataclass
class ControlSettings:
    """The extra models and scores that make the report's claims testable (off = a shorter run).

    The base and the no-FIM model are scored wherever the code model is (eval.*.models naming "code")."""

    no_fim: bool = False  # train-code-nofim: train-code's documents, budget, seed and recipe at FIM rate 0
    base: bool = False  # eval-base: the untouched base, scored like the code model
    rope_scaling: bool = False  # eval-rope: the code model untouched / linear / dynamic NTK / YaRN vs the LCFT model
    chat: bool = False  # HumanEval with chat-format prompts for the code and instruct models


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
    controls: ControlSettings = field(default_factory=ControlSettings)
    notes: str = ""  # why this recipe and these budgets: printed under the report's Recipe table
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
        for section in ("humaneval", "infilling", "long_context", "code_loss"):
            bad = set(getattr(self.eval, section).models) - set(MODELS)
            if bad:
                raise ValueError(
                    f"eval.{section}.models names unknown model(s) {', '.join(sorted(bad))}; "
                    f"models are {', '.join(MODELS)}"
                )
        from evals.infilling import BENCHMARKS as INFILLING_BENCHMARKS  # not at import: it loads torch (--help)
        from evals.infilling import check_modes

        known = set(INFILLING_BENCHMARKS)
        for key, names in (("benchmarks", self.eval.infilling.benchmarks), ("limits", self.eval.infilling.limits)):
            bad = set(names) - known
            if bad:  # a typo in `limits` would otherwise be ignored and the benchmark run at full size
                raise ValueError(
                    f"eval.infilling.{key} names unknown benchmark(s) {', '.join(sorted(bad))}; "
                    f"benchmarks are {', '.join(INFILLING_BENCHMARKS)}"
                )
        bad_limits = {k: v for k, v in self.eval.infilling.limits.items() if not isinstance(v, int) or v < 1}
        if bad_limits:
            raise ValueError(f"eval.infilling.limits must be problem counts >= 1, got {bad_limits}")
        check_modes(self.eval.infilling.modes, "eval.infilling.modes")
        if not 0.0 <= self.data.heldout_fraction < 1.0:
            raise ValueError(f"data.heldout_fraction must be in [0, 1), got {self.data.heldout_fraction}")
        if self.eval.code_loss.models and not self.data.heldout_fraction:
            raise ValueError("eval.code_loss needs held-out files: set data.heldout_fraction (e.g. 0.05)")
        if self.data.sample_factor is not None and not self.data.sample_factor > 0:
            raise ValueError(f"data.sample_factor must be > 0 or null, got {self.data.sample_factor!r}")
        if self.eval.dtype not in DTYPES:
            raise ValueError(f"eval.dtype must be one of {', '.join(DTYPES)}, got {self.eval.dtype!r}")
        if self.eval.batch_size < 1:
            raise ValueError(f"eval.batch_size must be >= 1, got {self.eval.batch_size}")
        if self.data.fim_unit not in FIM_UNITS:
            raise ValueError(f"data.fim_unit must be one of {', '.join(FIM_UNITS)}, got {self.data.fim_unit!r}")
        if self.data.fim_unit_tokens is not None:
            if self.data.fim_unit != "row":
                raise ValueError("data.fim_unit_tokens needs data.fim_unit=row (it sizes the row chunks)")
            if not isinstance(self.data.fim_unit_tokens, int) or self.data.fim_unit_tokens < 64:
                raise ValueError(f"data.fim_unit_tokens must be a token count >= 64, got {self.data.fim_unit_tokens!r}")
        if self.data.span_mode not in SPAN_MODES:
            raise ValueError(f"data.span_mode must be one of {', '.join(SPAN_MODES)}, got {self.data.span_mode!r}")
        if self.instruct_data.from_ not in BRANCHES:
            raise ValueError(
                f"instruct_data.from must be a branch ({', '.join(BRANCHES)}), got {self.instruct_data.from_!r}"
            )
        return self


def with_new_settings(old: dict, new: dict) -> dict:
    """`old` (a run's recorded config, or part of one) with the settings added to the toolkit since it was
    written, at their defaults: a run started before a setting existed continues while it keeps its default."""
    return _fill_missing(old, new, PipelineConfig().to_dict())


def _fill_missing(old: dict, new: dict, defaults: dict) -> dict:
    """`old` with each key `new` has and `old` lacks set to its default, at every depth."""
    filled = dict(old)
    for key, value in new.items():
        default = defaults.get(key)
        if key not in filled:
            if key in defaults:
                filled[key] = default
        elif isinstance(value, dict) and isinstance(filled[key], dict) and isinstance(default, dict):
            filled[key] = _fill_missing(filled[key], value, default)
    return filled


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """A built-in config by name, or the default one with a user file's keys on top; then `key=value` overrides."""
    name = str(path or "default")
    if name == "default" or name in named_configs():
        raw = yaml.safe_load(config_path(name).read_text())
    elif not Path(name).exists() and Path(name).suffix not in (".yaml", ".yml", ".json"):
        raise ValueError(f"--config {name}: no such file, and not a built-in config ({', '.join(named_configs())})")
    else:
        user = load_yaml(path)
        extends = str(user.pop("extends", "default"))  # the built-in config the file changes
        if extends != "default" and extends not in named_configs():
            raise ValueError(f"{path}: extends {extends!r}, not a built-in config ({', '.join(named_configs())})")
        raw = deep_merge(yaml.safe_load(config_path(extends).read_text()), user)
    apply_overrides(raw, overrides)
    config = build(PipelineConfig, raw).validate()
    config.source = str(path or "default") + (f" with --set {' '.join(overrides)}" if overrides else "")
    return config
