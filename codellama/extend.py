"""`codellama tokenizer extend`: give a tokenizer, or a whole checkpoint, Code Llama's infilling tokens.

Code Llama's recipe does not depend on the tokenizer: add four infilling tokens, grow the
embeddings, train. A SentencePiece Llama 2 tokenizer gets Code Llama's 16 pieces; a
`tokenizer.json` reuses StarCoder-style FIM tokens when it has them, else gets `<PRE>`, `<SUF>`,
`<MID>`, `<EOT>` as special tokens. For a checkpoint the embedding (and an untied output layer)
grows to the new vocabulary with every new row at the mean of the old ones, so the model does not
start out predicting the new tokens everywhere; tied embeddings stay tied. The four infilling tokens
then start from rows the model already knows (`describe_infilling_rows`): identical rows, as the mean
gives them, stayed nearly identical through 1.5M tokens of FIM training on SmolLM2 (cosine 0.96-0.98),
and a model that cannot tell `<PRE>` from `<SUF>` from `<MID>` mixes up PSM and SPM.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from codellama.checkpoint import load_model, save_checkpoint
from codellama.io import ensure_new_output_dir
from codellama.model import resize_vocab_mean_init, vocab_matrices
from codellama.tokenizer import Tokenizer, load_tokenizer, save_tokenizer_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtendResult:
    out: Path
    tokenizer: Tokenizer
    how: str  # what was done to the tokenizer, in a few words
    rows: tuple[int, int] | None  # the checkpoint's embedding rows before and after (None: a tokenizer only)


def is_checkpoint(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def extend(base: str | os.PathLike, out: str | os.PathLike) -> ExtendResult:
    """Write `out`: the tokenizer of `base` (file, tokenizer directory or checkpoint) with infilling tokens,
    and, when `base` is a checkpoint, its weights with the embedding grown to match."""
    base, out = Path(base), Path(out)
    ensure_new_output_dir(out)
    original = load_tokenizer(base, check_model=False)
    tokenizer, how = original.with_infilling_tokens()
    if not is_checkpoint(base):
        save_tokenizer_dir(tokenizer, out)
        return ExtendResult(out, tokenizer, how, None)
    model = load_model(base, dtype="auto")  # the stored precision: an extended bf16 model stays bf16
    before = model.get_input_embeddings().weight.shape[0]
    grow_embeddings(model, tokenizer, original.vocab_size)
    save_checkpoint(model, out, tokenizer)
    return ExtendResult(out, tokenizer, how, (before, model.get_input_embeddings().weight.shape[0]))


def grow_embeddings(model, tokenizer: Tokenizer, old_vocab: int) -> None:
    """Give `model` a row for every id of `tokenizer`, whose ids from `old_vocab` on are new tokens.

    Rows past the old embedding start at the mean of the old rows; so do new tokens whose ids fall
    inside an embedding that was padded past the old tokenizer (their rows were never trained). The
    new infilling tokens then start from distinct known rows (`describe_infilling_rows`)."""
    rows = model.get_input_embeddings().weight.shape[0]
    resize_vocab_mean_init(model, max(rows, tokenizer.vocab_size))
    if old_vocab < 1:
        return
    inside = list(range(old_vocab, min(rows, tokenizer.vocab_size)))
    if inside:
        with torch.no_grad():
            for weight in vocab_matrices(model):
                weight[inside] = weight[:old_vocab].mean(dim=0, keepdim=True)
        log.info("rows %d..%d of the padded embedding set to the mean of the old rows", inside[0], inside[-1])
    describe_infilling_rows(model, tokenizer, old_vocab)


# What each new infilling token starts as: the mean row of a word's pieces, or (eot) the end-of-text row.
INFILLING_DESCRIPTIONS = {"prefix": "prefix", "suffix": "suffix", "middle": "middle", "eot": "end"}


def infilling_row_sources(tokenizer: Tokenizer, old_vocab: int) -> dict[int, list[int]]:
    """For each infilling token that is new (id >= old_vocab): the old ids whose mean row it starts from.

    `<PRE>`, `<SUF>` and `<MID>` take the pieces of the words prefix, suffix and middle; `<EOT>` takes
    the end-of-text token's row, whose part it plays for a middle (a model that knows when an answer is
    complete then knows when a middle is). Tokens a base already had (StarCoder-style FIM tokens) and
    words with no old pieces are left out."""
    sources = {}
    eos = tokenizer.eos_id
    for role, word in INFILLING_DESCRIPTIONS.items():
        new_id = getattr(tokenizer, f"{role}_id")
        if new_id is None or new_id < old_vocab:
            continue
        ids = [eos] if role == "eot" and eos is not None and eos < old_vocab else tokenizer.encode(word)
        ids = [i for i in ids if i < old_vocab]
        if ids:
            sources[new_id] = ids
    return sources


def describe_infilling_rows(model, tokenizer: Tokenizer, old_vocab: int) -> None:
    """Set the new infilling tokens' embedding (and untied output) rows from `infilling_row_sources`."""
    sources = infilling_row_sources(tokenizer, old_vocab)
    if not sources:
        return
    with torch.no_grad():
        for weight in vocab_matrices(model):
            for new_id, ids in sources.items():
                weight[new_id] = weight[ids].mean(dim=0)
    log.info(
        "infilling token rows start from %s", {tokenizer.render([k]): tokenizer.render(v) for k, v in sources.items()}
    )
