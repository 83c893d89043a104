"""Look inside a shard directory: its summary and a few decoded sequences with FIM pieces visible."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from codellama.data.shards import TokenShards
from codellama.tokenizer import Tokenizer, load_tokenizer, tokenizer_file


def load_shards_and_tokenizer(
    directory: str | os.PathLike, tokenizer: str | os.PathLike | None = None
) -> tuple[TokenShards, Tokenizer]:
    shards = TokenShards(directory)
    path = Path(tokenizer) if tokenizer else Path(directory)
    if not path.exists() or tokenizer_file(path) is None:
        raise FileNotFoundError(f"no tokenizer: {path} has no tokenizer.model or tokenizer.json (pass --tokenizer)")
    tok = load_tokenizer(path)
    if tok.vocab_size != shards.vocab_size:
        raise ValueError(f"tokenizer has {tok.vocab_size} pieces but the shards were written for {shards.vocab_size}")
    return shards, tok


def render_sequence(shards: TokenShards, tokenizer: Tokenizer, i: int, max_chars: int | None = None) -> str:
    """Sequence i as text, with <s>, </s>, <PRE>, <SUF>, <MID>, <EOT> shown and padding summarised."""
    tokens, mask = shards[i], shards.loss_mask(i)
    real = int(np.flatnonzero(mask)[-1]) + 1 if mask.any() else 0  # whole-files padding is the masked tail
    text = render_with_markers(tokens[:real].tolist(), tokenizer, max_chars)
    if real < len(tokens):
        text += f"\n[padding: {len(tokens) - real} tokens, not in the loss]"
    return f"[documents: {' | '.join(describe_documents(tokens[:real].tolist(), tokenizer))}]\n{text}"


def render_with_markers(ids: list[int], tokenizer: Tokenizer, max_chars: int | None = None) -> str:
    """Decode, showing special tokens; long text between markers is shortened, the markers always stay."""
    runs: list[list[int]] = [[]]
    markers: list[str] = []
    special = tokenizer.special_ids
    for i in ids:
        if i in special:
            markers.append(tokenizer.render([i]))
            runs.append([])
        else:
            runs[-1].append(i)
    texts = [tokenizer.decode(run) for run in runs]
    budget = max(40, (max_chars or 0) // len(texts)) if max_chars else None
    out = []
    for k, text in enumerate(texts):
        if budget and len(text) > budget:
            half = budget // 2
            text = f"{text[:half]}\n[... {len(text) - 2 * half} characters ...]\n{text[-half:]}"
        out.append(text)
        if k < len(markers):
            out.append(markers[k])
    return "".join(out)


def describe_documents(ids: list[int], tokenizer: Tokenizer) -> list[str]:
    """One label per document piece in a sequence: PSM, SPM or plain; '...' where it is cut."""
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    if bos is not None:
        starts = [i for i, t in enumerate(ids) if t == bos]
    else:  # a base without BOS: a document starts after the EOS (or EOS run) that ends the one before
        starts = [i for i in range(1, len(ids)) if ids[i - 1] == eos and ids[i] != eos]
    whole_start = set(starts) if bos is not None else set(starts) - {0}
    if not starts or starts[0] != 0:
        starts = [0] + starts
    labels = []
    for a, b in zip(starts, starts[1:] + [len(ids)]):
        piece = ids[a:b]
        if tokenizer.prefix_id in piece:
            k = piece.index(tokenizer.prefix_id)
            mode = "SPM" if piece[k + 1 : k + 2] == [tokenizer.suffix_id] else "PSM"
        elif a in whole_start:
            mode = "plain"
        else:
            mode = "FIM" if {tokenizer.middle_id, tokenizer.eot_id} & set(piece) else "?"
        cut_start = a not in whole_start
        cut_end = not piece or piece[-1] != eos
        labels.append(f"{'...' if cut_start else ''}{mode}{'...' if cut_end else ''}")
    return labels


def summary_lines(shards: TokenShards) -> list[str]:
    idx = shards.index
    lines = [
        f"{len(shards):,} sequences of {idx.seq_len} tokens in {len(idx.shards)} shard(s), "
        f"dtype {idx.dtype.name}, vocab {idx.vocab_size}" + (", with loss mask" if idx.has_loss_mask else "")
    ]
    stats = idx.meta.get("stats")
    if stats:
        modes = stats["fim_modes"]
        lines.append(
            f"{stats['documents']:,} documents, {stats['tokens']:,} tokens; FIM {stats['fim_fraction']:.1%} "
            f"(PSM {modes['psm']:,}, SPM {modes['spm']:,}, plain {modes['plain']:,}); "
            f"padding {stats['padding_tokens']:,}, dropped tail {stats['dropped_tail_tokens']:,}"
        )
    config = idx.meta.get("config")
    if config:
        fim = config["fim"]
        lines.append(
            f"seed {config['seed']}, packing {config['packing']}, fim_rate {fim['fim_rate']}, "
            f"spm_rate {fim['spm_rate']}, span_mode {fim['span_mode']}"
        )
    return lines
