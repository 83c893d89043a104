"""The family's document split and FIM units: pure functions over documents.

Held-out files are chosen by a hash of their relative path, so the split is the same on every machine and
for every run with the same fraction, and a file stays on its side when other files are added. No
training stage (tokenizer, code, no-FIM, Python, long context, instruct pairs) sees a held-out file; the
held-out code loss is scored on them.

A "row" FIM unit cuts a training document at line boundaries into chunks that fit one training row, so
each FIM example (prefix, suffix, middle and its sentinels) lies inside one row and is never cut
across rows; "document" applies FIM to whole documents and packs them end to end (today's tiny run).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

FIM_UNITS = ("document", "row")
# Tokens a FIM example adds to its text: BOS, EOS and the three sentinels, plus room for the line
# pieces not tokenizing exactly as the joined chunk does.
ROW_MARGIN = 16


def is_heldout(path: str, fraction: float) -> bool:
    """Whether a file (by its relative path) is held out: the first 8 bytes of SHA-256(path) below fraction."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def split_documents(rows: Iterable[dict], fraction: float) -> tuple[list[dict], list[dict]]:
    """(training rows, held-out rows) of document rows with a `path` key, each side in input order."""
    train, heldout = [], []
    for row in rows:
        (heldout if is_heldout(row["path"], fraction) else train).append(row)
    return train, heldout


def row_chunks(text: str, count_tokens: Callable[[list[str]], list[int]], row_tokens: int) -> list[str]:
    """`text` cut at line ends into consecutive chunks of at most about `row_tokens` tokens.

    `count_tokens` maps a list of lines to their token counts (one batched call per document). A
    single line longer than a row stays a chunk of its own. The chunks join back to `text`.
    """
    budget = max(1, row_tokens - ROW_MARGIN)
    lines = text.splitlines(keepends=True)
    if not lines:
        return []
    chunks: list[str] = []
    current: list[str] = []
    used = 0
    for line, n in zip(lines, count_tokens(lines)):
        if current and used + n > budget:
            chunks.append("".join(current))
            current, used = [], 0
        current.append(line)
        used += n
    chunks.append("".join(current))
    return chunks


def chunk_rows(rows: Iterable[dict], count_tokens: Callable[[list[str]], list[int]], row_tokens: int) -> list[dict]:
    """Every document row cut into row-sized chunks; a chunk keeps its document's columns, path `PATH#k`."""
    out = []
    for row in rows:
        pieces = row_chunks(row["text"], count_tokens, row_tokens)
        for k, piece in enumerate(pieces):
            out.append({**row, "text": piece, "path": f"{row['path']}#{k}" if len(pieces) > 1 else row["path"]})
    return out
