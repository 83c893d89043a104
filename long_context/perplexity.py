"""Perplexity versus context length: does a model keep using its context past the trained length?

Every length is scored on the same token windows (each sample's first L tokens), so the
curves of different models and lengths differ only in how much context the model gets.
With a sliding window, each token is still scored exactly once but sees at most `window`
tokens: the baseline of a model that cannot use more context than that.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from codellama.checkpoint import load_model
from codellama.data.stdlib import iter_source_texts
from codellama.rope import rope_parameters
from codellama.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

DEFAULT_LENGTHS = (512, 1024, 2048, 4096, 8192, 16384)


@dataclass(frozen=True)
class PPLPoint:
    length: int
    nll: float  # mean token negative log-likelihood (nats)
    ppl: float
    tokens: int  # tokens scored (samples * (length - 1))
    window: int | None = None


def corpus_tokens(tokenizer, n_tokens: int, texts: Iterable[str] | None = None) -> torch.Tensor:
    """The first `n_tokens` of the concatenated files (each as [BOS] text EOS); default: the stdlib."""
    if texts is None:
        texts = iter_source_texts()
    out: list[int] = []
    for text in texts:
        out.extend(tokenizer.encode(text, bos=True, eos=True))
        if len(out) >= n_tokens:
            return torch.tensor(out[:n_tokens], dtype=torch.long)
    raise ValueError(f"the corpus has only {len(out)} tokens, {n_tokens} are needed")


def sample_windows(tokens: torch.Tensor, samples: int, length: int) -> torch.Tensor:
    """`samples` consecutive, non-overlapping windows of `length` tokens: [samples, length]."""
    if tokens.numel() < samples * length:
        raise ValueError(f"need {samples * length} tokens for {samples} samples of {length}, have {tokens.numel()}")
    return tokens[: samples * length].view(samples, length)


@torch.no_grad()
def _nll_of(model, input_ids: torch.Tensor, n_targets: int, chunk: int) -> torch.Tensor:
    """NLL of the last `n_targets` tokens of each row, given everything before them in the row.

    Logits are made `chunk` positions at a time: at 16k tokens and a 32k vocabulary the
    full logits alone would take 2 GB.
    """
    hidden = model.model(input_ids=input_ids, use_cache=False).last_hidden_state
    head = model.get_output_embeddings()
    targets = input_ids[:, 1:]
    hidden = hidden[:, :-1]
    start = hidden.shape[1] - n_targets
    out = []
    for s in range(start, hidden.shape[1], chunk):
        e = min(s + chunk, hidden.shape[1])
        logits = head(hidden[:, s:e]).float()
        out.append(F.cross_entropy(logits.transpose(1, 2), targets[:, s:e], reduction="none"))
    return torch.cat(out, dim=1)


@torch.no_grad()
def token_nll(
    model, input_ids: torch.Tensor, *, window: int | None = None, stride: int | None = None, chunk: int = 2048
) -> torch.Tensor:
    """Per-token NLL of tokens 1..L-1 of each row ([B, L] -> [B, L-1]).

    Without a window every token sees all tokens before it. With one, windows of `window`
    tokens advance by `stride` (default window // 2) and each token is scored once, in the
    first window that contains it beyond the part already scored.
    """
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    length = input_ids.shape[1]
    if length < 2:
        raise ValueError("need at least 2 tokens to score")
    if window is None or window >= length:
        return _nll_of(model, input_ids, length - 1, chunk).cpu()
    stride = stride or max(1, window // 2)
    if not 0 < stride <= window:
        raise ValueError(f"stride must be in [1, window={window}], got {stride}")
    pieces, scored_to = [], 1  # tokens [1, scored_to) are scored
    begin = 0
    while scored_to < length:
        end = min(begin + window, length)
        pieces.append(_nll_of(model, input_ids[:, begin:end], end - scored_to, chunk).cpu())
        scored_to = end
        begin += stride
    return torch.cat(pieces, dim=1)


LENGTH_DEPENDENT_ROPE = frozenset({"dynamic", "longrope"})  # rope types whose frequencies follow the sequence length


def rope_depends_on_length(config) -> bool:
    """Whether the model's RoPE changes with the length of the sequence it is given (dynamic NTK, LongRoPE)."""
    params = rope_parameters(config)
    nested = [v for v in params.values() if isinstance(v, dict)]  # per-layer-type parameters
    return any(p.get("rope_type") in LENGTH_DEPENDENT_ROPE for p in [params, *nested])


def prefix_token_nll(model, row: torch.Tensor, lengths: Sequence[int]) -> dict[int, torch.Tensor]:
    """Per-token NLL of the first n tokens of `row` ([L]) for each n in `lengths` ({n: [n-1]}).

    Attention is causal, so a token's NLL depends only on the tokens before it: one forward over the
    longest length scores every shorter one. A RoPE that rescales with the sequence length (dynamic
    NTK, LongRoPE) would see another length than the one named, so it gets one forward per length.
    """
    lengths = sorted(set(lengths))
    if rope_depends_on_length(model.config):
        return {n: token_nll(model, row[None, :n])[0] for n in lengths}
    longest = token_nll(model, row[None, : lengths[-1]])[0]
    return {n: longest[: n - 1] for n in lengths}


def long_ppl(
    model,
    windows: torch.Tensor,
    lengths: Sequence[int],
    *,
    window: int | None = None,
    stride: int | None = None,
    progress: bool = True,
    desc: str = "long-ppl",
) -> list[PPLPoint]:
    """Perplexity at each context length over the same sample windows ([samples, >= max(lengths)])."""
    from tqdm.auto import tqdm

    if max(lengths) > windows.shape[1]:
        raise ValueError(f"length {max(lengths)} exceeds the sample windows ({windows.shape[1]} tokens)")
    model.eval()
    points = []
    totals = {n: [0.0, 0] for n in sorted(lengths)}  # length -> [summed NLL, tokens]
    bar = tqdm(total=len(totals) * windows.shape[0], desc=desc, disable=not progress, unit="seq")
    for row in windows:
        if window is None:  # one forward scores every length (see prefix_token_nll)
            nlls = prefix_token_nll(model, row, lengths)
        else:  # a sliding window's last window depends on where the row ends
            nlls = {n: token_nll(model, row[None, :n], window=window, stride=stride) for n in totals}
        for n, nll in nlls.items():
            totals[n][0] += nll.double().sum().item()
            totals[n][1] += nll.numel()
        bar.update(len(totals))
    for length, (total, count) in totals.items():
        mean = total / count
        points.append(PPLPoint(length, mean, math.exp(mean), count, window))
        log.debug("%s: length %d ppl %.3f", desc, length, math.exp(mean))
    bar.close()
    return points


def evaluate_models(
    models: dict[str, str],
    *,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    samples: int = 4,
    window: int | None = None,
    stride: int | None = None,
    texts: Iterable[str] | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> dict:
    """Score several checkpoints (label -> directory) on the same tokens; the JSON report.

    Tokens come from the first model's tokenizer; all models must share it.
    """

    labels = list(models)
    tokenizer = load_tokenizer(models[labels[0]])
    tokens = corpus_tokens(tokenizer, samples * max(lengths), texts)
    windows = sample_windows(tokens, samples, max(lengths))
    report: dict = {
        "lengths": sorted(lengths),
        "samples": samples,
        "window": window,
        "stride": (stride or max(1, window // 2)) if window else None,
        "models": {},
    }
    for label in labels:
        other = load_tokenizer(models[label])
        if other.fingerprint() != tokenizer.fingerprint():
            raise ValueError(
                f"model {label!r} has a different tokenizer from {labels[0]!r}; perplexities would not be comparable"
            )
        model = load_model(models[label], dtype=dtype, device=device)
        points = long_ppl(model, windows, lengths, window=window, stride=stride, progress=progress, desc=label)
        report["models"][label] = {
            "path": str(models[label]),
            "rope_parameters": dict(model.config.rope_parameters),
            "max_position_embeddings": model.config.max_position_embeddings,
            "points": [asdict(p) for p in points],
        }
        del model
    return report


def plot_long_ppl(report: dict, path) -> None:
    """Perplexity against context length, one line per model, its trained context dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, entry) in enumerate(report["models"].items()):
        color = f"C{i}"
        xs = [p["length"] for p in entry["points"]]
        ys = [p["ppl"] for p in entry["points"]]
        ax.plot(xs, ys, marker="o", color=color, label=label)
        ax.axvline(entry["max_position_embeddings"], color=color, linestyle=":", alpha=0.6)
    ax.set_xscale("log", base=2)
    ax.set_xticks(report["lengths"], [f"{n // 1024}k" if n % 1024 == 0 else str(n) for n in report["lengths"]])
    ax.minorticks_off()
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity")
    title = "perplexity vs context length"
    if report.get("window"):
        title += f" (sliding window {report['window']}, stride {report['stride']})"
    ax.set_title(title + "\ndotted: each model's max_position_embeddings")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
