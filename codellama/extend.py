"""`codellama tokenizer extend`: give a tokenizer, or a whole checkpoint, Code Llama's infilling tokens.

Code Llama's recipe does not depend on the tokenizer: add four infilling tokens, grow the
embeddings, train. A SentencePiece Llama 2 tokenizer gets Code Llama's 16 pieces; a
`tokenizer.json` reuses StarCoder-style FIM tokens when it has them, else gets `<PRE>`, `<SUF>`,
`<MID>`, `<EOT>` as special tokens. For a checkpoint the embedding (and an untied output layer)
grows to the new vocabulary with every new row at the mean of the old ones, so the model does not
start out predicting the new tokens everywhere; tied embeddings stay tied.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from codellama.checkpoint import load_model, save_checkpoint
from codellama.io import ensure_new_output_dir
from codellama.model import resize_vocab_mean_init
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
    inside an embedding that was padded past the old tokenizer (their rows were never trained)."""
    rows = model.get_input_embeddings().weight.shape[0]
    resize_vocab_mean_init(model, max(rows, tokenizer.vocab_size))
    inside = list(range(old_vocab, min(rows, tokenizer.vocab_size)))
    if not inside or old_vocab < 1:
        return
    with torch.no_grad():
        weights = {id(w): w for w in (model.get_input_embeddings().weight, model.get_output_embeddings().weight)}
        for weight in weights.values():
            weight[inside] = weight[:old_vocab].mean(dim=0, keepdim=True)
    log.info("rows %d..%d of the padded embedding set to the mean of the old rows", inside[0], inside[-1])
