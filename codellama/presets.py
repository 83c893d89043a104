"""Model shapes as typed presets.

A preset only *describes* a model; `codellama.model` turns it into transformers'
`LlamaForCausalLM`. The Llama 2 shapes are Meta's published ones; the Code Llama
variants add the 16 infilling/reserved pieces (vocab 32,016) and, after long-context
fine-tuning, RoPE base 1,000,000 with a 16,384-token context.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

LLAMA2_VOCAB = 32000
CODELLAMA_VOCAB = 32016
LLAMA2_ROPE_THETA = 10_000.0
CODELLAMA_ROPE_THETA = 1_000_000.0


@dataclass(frozen=True)
class ModelPreset:
    """Shape of a Llama-family decoder (the fields of Meta's params.json, resolved)."""

    name: str
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int = LLAMA2_VOCAB
    norm_eps: float = 1e-5
    rope_theta: float = LLAMA2_ROPE_THETA
    max_seq_len: int = 4096
    tie_embeddings: bool = False
    description: str = dataclasses.field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"preset {self.name}: dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"preset {self.name}: n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}"
            )
        if (self.dim // self.n_heads) % 2:
            raise ValueError(f"preset {self.name}: head dim must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def replace(self, **changes) -> ModelPreset:
        return dataclasses.replace(self, **changes)

    def as_codellama(self, long_context: bool = False) -> ModelPreset:
        """The same shape with Code Llama's vocabulary (and LCFT's RoPE base/context)."""
        changes: dict = {"vocab_size": CODELLAMA_VOCAB}
        if long_context:
            changes.update(rope_theta=CODELLAMA_ROPE_THETA, max_seq_len=16384)
        return self.replace(**changes)


_LLAMA2 = {
    "llama2-7b": ModelPreset("llama2-7b", 4096, 32, 32, 32, 11008, description="Llama 2 7B (Meta)"),
    "llama2-13b": ModelPreset("llama2-13b", 5120, 40, 40, 40, 13824, description="Llama 2 13B (Meta)"),
    # Meta trained but never released Llama 2 34B; Code Llama 34B is built on its shape (GQA, 8 KV heads).
    "llama2-34b": ModelPreset(
        "llama2-34b", 8192, 48, 64, 8, 22016, description="Llama 2 34B shape (GQA), base of Code Llama 34B"
    ),
    "llama2-70b": ModelPreset("llama2-70b", 8192, 80, 64, 8, 28672, description="Llama 2 70B (Meta, GQA)"),
}

_SMALL = {
    # Trains on a 2-core CPU in seconds: for tests and the default pipeline.
    "tiny": ModelPreset(
        "tiny", 128, 2, 4, 2, 352, vocab_size=CODELLAMA_VOCAB, max_seq_len=512, description="CPU toy: trains in seconds"
    ),
    # Trains on a CPU in minutes; the smallest preset with a real learning curve.
    "small": ModelPreset(
        "small",
        512,
        8,
        8,
        4,
        1408,
        vocab_size=CODELLAMA_VOCAB,
        max_seq_len=1024,
        description="CPU model: trains in minutes",
    ),
    # ~1.1B parameters (TinyLlama's shape) for single-GPU benchmarks.
    "1b": ModelPreset(
        "1b",
        2048,
        22,
        32,
        4,
        5632,
        vocab_size=CODELLAMA_VOCAB,
        max_seq_len=4096,
        description="~1.1B single-GPU benchmark model",
    ),
}


def _codellama_presets() -> dict[str, ModelPreset]:
    out = {}
    for name, preset in _LLAMA2.items():
        size = name.split("-")[1]
        out[f"codellama-{size}"] = preset.as_codellama(long_context=True).replace(
            name=f"codellama-{size}", description=f"Code Llama {size.upper()} (after long-context fine-tuning)"
        )
    return out


PRESETS: dict[str, ModelPreset] = {**_LLAMA2, **_codellama_presets(), **_SMALL}

# Parameter counts published by Meta (the safetensors metadata of the Hugging Face
# releases). Code Llama 34B was released without infilling, so with Llama's 32,000 vocab.
PUBLISHED_PARAMETER_COUNTS = {
    "llama2-7b": 6_738_415_616,
    "llama2-13b": 13_015_864_320,
    "llama2-70b": 68_976_648_192,
    "codellama-7b": 6_738_546_688,
    "codellama-13b": 13_016_028_160,
    "codellama-34b@32000": 33_743_970_304,
    "codellama-70b": 68_976_910_336,
}


def get_preset(name: str) -> ModelPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
