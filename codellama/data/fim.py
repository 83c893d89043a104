"""The fill-in-the-middle training transform (Code Llama's scheme), as pure functions.

With probability `fim_rate` a document is cut into prefix / middle / suffix and laid out
so that the model learns to generate the middle after seeing both sides:

    PSM: <PRE> enc(prefix) <SUF> enc_infilling(suffix) <MID> enc_infilling(middle) <EOT>
    SPM: <PRE> <SUF> enc_infilling(suffix) <MID> enc(prefix) enc_infilling(middle) <EOT>

(SPM with probability `spm_rate`; the layout itself is `codellama.tokenizer.layout`, shared with
inference prompts, and so is where the middle meets prefix and suffix: see `heal_whitespace`); otherwise the
document stays plain left-to-right text. The markers are single special ids, never text, and the
suffix and middle are encoded without SentencePiece's dummy leading space, so decoding the pieces
gives back exactly prefix, middle and suffix. Each document then gets BOS before (when the base has
one) and EOS after.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Literal

from codellama.data.spans import char_span, syntax_span
from codellama.tokenizer import Tokenizer, infill_layout

Mode = Literal["plain", "psm", "spm"]
SpanMode = Literal["char", "syntax"]
MODES: tuple[Mode, ...] = ("plain", "psm", "spm")
SPAN_MODES: tuple[SpanMode, ...] = ("char", "syntax")


@dataclass(frozen=True)
class FimOptions:
    fim_rate: float = 0.9  # Code Llama
    spm_rate: float = 0.5  # Code Llama
    span_mode: SpanMode = "char"

    def __post_init__(self):
        for name in ("fim_rate", "spm_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.span_mode not in SPAN_MODES:
            raise ValueError(f"span_mode must be one of {', '.join(SPAN_MODES)}, got {self.span_mode!r}")


@dataclass(frozen=True)
class FimSample:
    """A document cut for FIM; `prefix + middle + suffix` is always the original text."""

    mode: Mode
    prefix: str
    middle: str = ""
    suffix: str = ""
    span: Literal["none", "char", "syntax"] = "none"  # how the cut was chosen ("char" also = syntax fallback)

    @property
    def text(self) -> str:
        return self.prefix + self.middle + self.suffix


def fim_transform(
    text: str, rng: random.Random, options: FimOptions = FimOptions(), language: str | None = None
) -> FimSample:
    """Decide plain/PSM/SPM for one document and where to cut it. Pure: all randomness from `rng`."""
    if rng.random() >= options.fim_rate:
        return FimSample("plain", text)
    mode: Mode = "spm" if rng.random() < options.spm_rate else "psm"
    span = syntax_span(text, rng, language) if options.span_mode == "syntax" else None
    kind = "syntax" if span is not None else "char"
    start, end = span if span is not None else char_span(len(text), rng)
    if start == 0 and end > 0 and text[0] == " ":
        # An empty prefix before a middle that starts with a space gives the same tokens as an
        # SPM sample with a non-empty prefix (`▁x` = dummy space or real space); one character
        # later the tokens decode unambiguously (see parse_fim_tokens).
        start = 1
    return FimSample(mode, text[:start], text[start:end], text[end:], kind)


def document_rng(seed: int, index: int) -> random.Random:
    """The FIM randomness of document `index`: independent of batching and worker processes."""
    return random.Random(f"codellama-fim/{seed}/{index}")


def fim_tokens(sample: FimSample, tokenizer: Tokenizer, *, bos: bool = True, eos: bool = True) -> list[int]:
    """Token ids of one sample in its mode's layout (see the module docstring)."""
    return fim_tokens_batch([sample], tokenizer, bos=bos, eos=eos)[0]


def fim_tokens_batch(
    samples: list[FimSample], tokenizer: Tokenizer, *, bos: bool = True, eos: bool = True, num_threads: int = 1
) -> list[list[int]]:
    """Like fim_tokens for many samples, with two batched tokenizer calls (the fast path)."""
    samples = [heal_whitespace(s, tokenizer) for s in samples]
    heads = tokenizer.encode_batch([s.prefix for s in samples], num_threads=num_threads)
    tails = tokenizer.encode_infilling_batch(
        [t for s in samples if s.mode != "plain" for t in (s.suffix, s.middle)], num_threads=num_threads
    )
    markers = None
    start = [tokenizer.bos_id] if bos and tokenizer.bos_id is not None else []
    end = [tokenizer.eos_id] if eos else []
    out, k = [], 0
    for sample, head in zip(samples, heads):
        if sample.mode == "plain":
            out.append(start + head + end)
            continue
        if markers is None:  # a tokenizer without infilling tokens can still encode plain documents
            markers = (tokenizer.prefix_id, tokenizer.suffix_id, tokenizer.middle_id, tokenizer.eot_id)
        suffix, middle = tails[k], tails[k + 1]
        k += 2
        out.append(start + infill_layout(sample.mode, head, suffix, middle, markers, eot=True) + end)
    return out


def heal_whitespace(sample: FimSample, tokenizer: Tokenizer) -> FimSample:
    """The sample as infilling prompts cut it: the prefix's trailing whitespace and the suffix's leading
    whitespace moved to the middle where the tokenizer's infilling tokens say so (`Tokenizer.infilling_echo`,
    `Tokenizer.infilling_tail`), so training and prompts agree."""
    if sample.mode == "plain":
        return sample
    echo, tail = tokenizer.infilling_echo(sample.prefix), tokenizer.infilling_tail(sample.suffix)
    if not echo and not tail:
        return sample
    return replace(
        sample,
        prefix=sample.prefix[: len(sample.prefix) - len(echo)],
        middle=echo + sample.middle + tail,
        suffix=sample.suffix[len(tail) :],
    )


def parse_fim_tokens(ids: list[int], tokenizer: Tokenizer) -> FimSample:
    """Invert fim_tokens: recover mode and the decoded prefix / middle / suffix.

    SPM writes prefix and middle back to back, so their boundary is not in the tokens:
    the decoded prefix+middle is returned as `prefix` with an empty `middle`. Used by
    tests (exact reassembly) and by `codellama data inspect`.
    """
    ids = [int(i) for i in ids]
    if ids and tokenizer.bos_id is not None and ids[0] == tokenizer.bos_id:
        ids = ids[1:]
    if ids and ids[-1] == tokenizer.eos_id:
        ids = ids[:-1]
    pre, suf, mid, eot = tokenizer.prefix_id, tokenizer.suffix_id, tokenizer.middle_id, tokenizer.eot_id
    if not ids or ids[0] != pre:
        return FimSample("plain", tokenizer.decode(ids))
    if ids[-1] != eot or ids.count(suf) != 1 or ids.count(mid) != 1:
        raise ValueError("malformed FIM sequence: expected one <SUF>, one <MID> and a final <EOT>")
    s, m = ids.index(suf), ids.index(mid)
    if s == 1:  # SPM: <PRE> <SUF> suffix <MID> prefix+middle <EOT>
        return FimSample("spm", tokenizer.decode(ids[m + 1 : -1]), "", tokenizer.decode_infilling(ids[2:m]))
    return FimSample(
        "psm",
        tokenizer.decode(ids[1:s]),
        tokenizer.decode_infilling(ids[m + 1 : -1]),
        tokenizer.decode_infilling(ids[s + 1 : m]),
    )
