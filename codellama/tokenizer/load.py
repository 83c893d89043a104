"""`load_tokenizer(path)`: the backend a directory or file calls for, chosen by the file it holds."""

from __future__ import annotations

import json
import os
from pathlib import Path

from codellama.tokenizer.base import Tokenizer
from codellama.tokenizer.hf import HF_TOKENIZER_FILE, HFTokenizer
from codellama.tokenizer.sentencepiece import TOKENIZER_FILE, CodeLlamaTokenizer


def tokenizer_file(path: str | os.PathLike) -> Path | None:
    """The file `load_tokenizer` would read for `path` (None: there is none)."""
    path = Path(path)
    if path.is_file():
        return path
    for name in (TOKENIZER_FILE, HF_TOKENIZER_FILE):  # a SentencePiece checkpoint also carries a tokenizer.json
        if (path / name).is_file():
            return path / name
    return None


def load_tokenizer(path: str | os.PathLike, *, check_model: bool = True) -> Tokenizer:
    """A tokenizer or checkpoint directory (tokenizer.model -> SentencePiece, tokenizer.json -> Hugging Face),
    or one of those files. In a checkpoint, a vocabulary smaller than the tokenizer's is an error
    (`check_model=False` skips that: `tokenizer extend` is what fixes it)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer not found: {path}")
    file = tokenizer_file(path)
    if file is None:
        raise FileNotFoundError(f"{path} has neither {TOKENIZER_FILE} nor {HF_TOKENIZER_FILE}")
    if file.suffix == ".json":
        tokenizer: Tokenizer = HFTokenizer.load(file)
    elif file.suffix == ".model":
        tokenizer = CodeLlamaTokenizer.load(file)
    else:
        raise ValueError(f"{file} is neither a SentencePiece .model nor a tokenizer.json")
    if check_model:
        check_model_vocab(file.parent, tokenizer)
    return tokenizer


def check_model_vocab(directory: str | os.PathLike, tokenizer: Tokenizer) -> None:
    """A checkpoint's embedding must have a row for every id its tokenizer makes."""
    config = Path(directory) / "config.json"
    if not config.is_file():
        return
    try:
        vocab = json.loads(config.read_text(encoding="utf-8")).get("vocab_size")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return  # not ours to judge here: loading the model reports a broken config.json
    if isinstance(vocab, int) and vocab < tokenizer.vocab_size:
        raise ValueError(
            f"{config}: vocab_size {vocab} is smaller than its tokenizer's {tokenizer.vocab_size} ids "
            f"({tokenizer.file_name}): the model has no embedding row for some of its ids"
        )
