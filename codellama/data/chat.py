"""Chat data for the instruct branch: a JSONL of dialogs -> loss-masked token shards.

Training reads shards only; this module turns dialogs (OpenAI-style `messages` or
instruction/response records) into packed sequences whose loss mask is 1 exactly on answer
tokens, using the chat format of `codellama.chat` (Llama 2's [INST], or the base's own template).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codellama.chat import chat_format, encode_dialog, normalize, turns
from codellama.data.shards import INDEX, ShardIndex, ShardWriter
from codellama.io import atomic_directory
from codellama.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def read_chat_jsonl(path: str | os.PathLike) -> Iterator[list[dict]]:
    """Training dialogs of a JSONL file; a bad line is reported with its number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"chat data not found: {path}")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                messages = normalize(json.loads(line))
                if turns(messages)[1] is not None:
                    raise ValueError("a training dialog must end with an assistant message")
                yield messages
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: {exc}") from None


@dataclass(frozen=True)
class PackStats:
    dialogs: int
    sequences: int
    truncated: int
    dropped: int
    answer_tokens: int


def pack_dialogs(
    dialogs: Iterable[list[dict]],
    tokenizer: Tokenizer,
    out_dir: str | os.PathLike,
    seq_len: int,
    *,
    meta: dict | None = None,
) -> PackStats:
    """Pack encoded dialogs into loss-masked shards; a dialog never straddles two sequences.

    A dialog longer than `seq_len` is cut (dropped if no answer token is left); the unused
    tail of a sequence is EOS padding with mask 0. The directory is complete when index.json exists.
    """

    writer = ShardWriter(out_dir, seq_len, tokenizer.vocab_size, with_loss_mask=True)
    pad = tokenizer.eos_id
    row_tokens: list[int] = []
    row_mask: list[int] = []
    n_dialogs = truncated = dropped = answer_tokens = sequences = 0

    def flush() -> None:
        nonlocal row_tokens, row_mask, sequences
        if row_tokens:
            fill = seq_len - len(row_tokens)
            writer.add(np.array(row_tokens + [pad] * fill), np.array(row_mask + [0] * fill))
            sequences += 1
            row_tokens, row_mask = [], []

    for messages in dialogs:
        n_dialogs += 1
        tokens, mask = encode_dialog(tokenizer, messages)
        if len(tokens) > seq_len:
            tokens, mask = tokens[:seq_len], mask[:seq_len]
            truncated += 1
            if not any(mask[1:]):
                dropped += 1
                continue
        if len(row_tokens) + len(tokens) > seq_len:
            flush()
        row_tokens += tokens
        row_mask += mask
        answer_tokens += sum(mask)
    flush()
    if sequences == 0:
        raise ValueError("no dialog left to train on (all empty or too long)")
    writer.finish(
        meta={
            "kind": "chat",
            "dialogs": n_dialogs,
            "truncated": truncated,
            "dropped": dropped,
            "answer_tokens": answer_tokens,
            "template": chat_format(tokenizer),
            "tokenizer": {"sha256": tokenizer.fingerprint(), "vocab_size": tokenizer.vocab_size},
            **(meta or {}),
        }
    )
    if truncated:
        log.warning(
            "%d of %d dialogs were longer than %d tokens and were cut (%d dropped)",
            truncated,
            n_dialogs,
            seq_len,
            dropped,
        )
    return PackStats(n_dialogs, sequences, truncated, dropped, answer_tokens)


def chat_cache_dir() -> Path:
    """Where packed chat shards are cached (`$CODELLAMA_CACHE/chat-shards`, default ~/.cache/codellama)."""
    root = os.environ.get("CODELLAMA_CACHE") or Path.home() / ".cache" / "codellama"
    return Path(root) / "chat-shards"


def prepare_chat_shards(
    chat_jsonl: str | os.PathLike,
    tokenizer: Tokenizer,
    out_dir: str | os.PathLike | None,
    seq_len: int,
    *,
    main: bool = True,
    wait_seconds: float = 3600.0,
) -> Path:
    """Pack `chat_jsonl` into loss-masked shards once (atomically); a finished result is reused.

    `out_dir` None: a directory in the cache named by the chat file's and the tokenizer's sha256
    and `seq_len`, so the same inputs always map to the same shards and other inputs never collide.
    The shards record both hashes in their index. Under torchrun only the main rank packs
    (`main=True`); the others wait for its index.
    """
    source = hashlib.sha256(Path(chat_jsonl).read_bytes()).hexdigest()
    tok_sha = tokenizer.fingerprint()
    if out_dir is None:
        out_dir = chat_cache_dir() / f"{source[:16]}-{tok_sha[:16]}-{seq_len}"
    out = Path(out_dir)
    if (out / INDEX).is_file():
        meta = ShardIndex.load(out).meta
        if meta.get("source_sha256") == source and (meta.get("tokenizer") or {}).get("sha256") == tok_sha:
            return out
        if not main:
            raise FileExistsError(f"{out} holds shards of other chat data or another tokenizer")
    if not main:
        deadline = time.monotonic() + wait_seconds
        while not (out / INDEX).is_file():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the main rank did not finish packing {chat_jsonl} into {out}")
            time.sleep(1.0)
        return out
    meta = {"source": str(chat_jsonl), "source_sha256": source}
    with atomic_directory(out, overwrite=True) as tmp:  # nothing finished of these inputs to keep
        stats = pack_dialogs(read_chat_jsonl(chat_jsonl), tokenizer, tmp, seq_len, meta=meta)
    log.info(
        "packed %d dialogs into %d sequences (%d answer tokens) -> %s",
        stats.dialogs,
        stats.sequences,
        stats.answer_tokens,
        out,
    )
    return out
