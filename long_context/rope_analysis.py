"""Why raising the RoPE base helps: rotation wavelengths and attention decay with distance.

Each pair of rotary dimensions j turns by theta_j = base^(-2j/d) radians per token, so its
wavelength is 2*pi / theta_j tokens. With base 10,000 and d = 128 the slowest pair turns
once every ~54k tokens; raising the base to 1,000,000 stretches that to ~5M, so fewer pairs
complete a rotation inside the context and far tokens stay distinguishable. The decay
curve is RoFormer's (Su et al., 2021, sec. 3.4.3) upper bound on the relative attention
score at distance m, (2/d) * sum_j |sum_{k<=j} exp(i m theta_k)|: it falls with distance,
and falls much more slowly for a larger base (Code Llama's argument for base 1e6).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from codellama.io import atomic_write_bytes
from codellama.rope import set_rope


@dataclass(frozen=True)
class RopeVariant:
    """One rotary setting to analyse: a base and optionally a transformers scaling dict."""

    base: float
    scaling: dict | None = None
    context: int = 4096  # trained context (what scaling factors stretch from)

    @property
    def label(self) -> str:
        text = f"base {self.base:g}"
        if self.scaling and self.scaling.get("rope_type", "default") != "default":
            text += f", {self.scaling['rope_type']} x{self.scaling.get('factor', '?'):g}"
        return text


def inv_freq(head_dim: int, variant: RopeVariant) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and attention scaling, computed by transformers' own rotary module."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"head_dim must be even and >= 2, got {head_dim}")
    config = LlamaConfig(
        hidden_size=head_dim,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=head_dim,
        num_hidden_layers=1,
        intermediate_size=4,
        vocab_size=8,
        max_position_embeddings=variant.context,
        rope_parameters={"rope_type": "default", "rope_theta": float(variant.base)},
    )
    if variant.scaling:
        set_rope(config, scaling=variant.scaling)
    rotary = LlamaRotaryEmbedding(config)
    if rotary.rope_type == "dynamic":  # dynamic NTK picks its frequencies for the longest sequence seen
        x = torch.zeros(1)
        longest = int(variant.context * float(variant.scaling.get("factor", 1.0)))
        rotary(x, torch.tensor([[longest - 1]]))
    return rotary.inv_freq.double(), float(rotary.attention_scaling)


def wavelengths(head_dim: int, variant: RopeVariant) -> torch.Tensor:
    """Tokens per full turn of each rotary pair (fastest first)."""
    freq, _ = inv_freq(head_dim, variant)
    return 2 * math.pi / freq


def decay_bound(head_dim: int, variant: RopeVariant, distances: torch.Tensor) -> torch.Tensor:
    """RoFormer's relative upper bound on |q.k| at each distance (1 at distance 0)."""
    freq, _ = inv_freq(head_dim, variant)
    out = []
    for part in distances.double().split(8192):
        phase = part[:, None] * freq[None, :]
        partial = torch.polar(torch.ones_like(phase), phase).cumsum(dim=1)
        out.append(partial.abs().mean(dim=1))
    # At distance 0, |S_j| = j, whose mean over j = 1..n is (n + 1) / 2.
    return torch.cat(out) / ((freq.numel() + 1) / 2)


def smoothed_decay(
    head_dim: int, variant: RopeVariant, max_distance: int, bins: int = 120
) -> tuple[list[float], list[float]]:
    """The bound averaged over log-spaced distance bins: it oscillates token to token, the trend is what matters."""
    distances = torch.arange(1, max_distance + 1)
    bound = decay_bound(head_dim, variant, distances)
    edges = torch.unique(torch.logspace(0, math.log10(max_distance + 1), bins + 1).floor().long())
    xs, ys = [], []
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
        xs.append(math.sqrt(lo * hi))
        ys.append(float(bound[lo - 1 : hi - 1].mean()))
    return xs, ys


def analyse(head_dim: int, variants: Sequence[RopeVariant], max_distance: int = 100_000) -> dict:
    """Wavelengths and smoothed decay of each variant, as plain lists (the JSON beside the PNG)."""
    if max_distance < 2:
        raise ValueError(f"max distance must be at least 2 tokens, got {max_distance}")
    out = {"head_dim": head_dim, "max_distance": max_distance, "variants": []}
    for v in variants:
        waves = wavelengths(head_dim, v)
        xs, ys = smoothed_decay(head_dim, v, max_distance)
        out["variants"].append(
            {
                "label": v.label,
                "base": v.base,
                "scaling": v.scaling,
                "context": v.context,
                "wavelengths": waves.tolist(),
                "pairs_turning_within_context": int((waves <= v.context).sum()),
                "decay_distances": xs,
                "decay_bound": ys,
            }
        )
    return out


def plot(analysis: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, v in enumerate(analysis["variants"]):
        color = f"C{i}"
        left.plot(range(len(v["wavelengths"])), v["wavelengths"], color=color, label=v["label"])
        right.plot(v["decay_distances"], v["decay_bound"], color=color, label=v["label"])
    contexts = sorted({v["context"] for v in analysis["variants"]})
    for c in contexts:
        left.axhline(c, color="gray", linestyle=":", alpha=0.7)
        right.axvline(c, color="gray", linestyle=":", alpha=0.7)
    left.set_yscale("log")
    left.set_xlabel("rotary pair j (of head_dim / 2)")
    left.set_ylabel("wavelength (tokens per turn)")
    left.set_title(f"rotation wavelengths, head_dim {analysis['head_dim']}\n(dotted: trained context)")
    right.set_xscale("log")
    right.set_xlabel("relative distance (tokens)")
    right.set_ylabel("relative upper bound of attention")
    right.set_title("attention decay with distance\n(RoFormer upper bound, averaged in log bins)")
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())  # a killed run leaves no half-written PNG
