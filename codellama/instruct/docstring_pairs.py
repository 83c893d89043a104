"""Instruction pairs mined from real code: a function's docstring as the question, its code as the answer.

At the `tiny` scale a freshly trained model writes no question worth keeping, so self-instruct
alone would leave the instruct branch with no data. Documented functions of the corpus give
honest (question, answer) pairs without touching any benchmark's problems.
"""

from __future__ import annotations

import ast
import random
from collections.abc import Iterable

MAX_ANSWER_LINES = 40


def _pairs_of(source: str) -> list[dict]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines()
    pairs = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef) or node.name.startswith("_") or node.col_offset:
            continue
        doc = ast.get_docstring(node)
        if not doc or len(doc) < 30:
            continue
        end = node.end_lineno or node.lineno
        start = min([d.lineno for d in node.decorator_list] + [node.lineno])
        if end - start + 1 > MAX_ANSWER_LINES:
            continue
        code = "\n".join(lines[start - 1 : end])
        question = (
            f"Write a Python function `{node.name}` that does the following.\n\n"
            f"{doc.strip().split(chr(10) + chr(10))[0]}"
        )
        pairs.append(
            {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": f"```python\n{code}\n```"},
                ],
                "source": "docstring-pairs",
            }
        )
    return pairs


def docstring_pairs(texts: Iterable[str], *, limit: int, seed: int = 0) -> list[dict]:
    """Up to `limit` pairs, chosen deterministically for a seed."""
    pairs = [p for text in texts for p in _pairs_of(text)]
    random.Random(seed).shuffle(pairs)
    return pairs[:limit]
