"""Where to cut a document for fill-in-the-middle: character spans and syntax-aligned spans.

Code Llama cuts at two uniformly random character positions. Structure-aware FIM (e.g.
"Structure-Aware Fill-in-the-Middle Pretraining for Code", Gong et al. 2024) instead
makes the middle one or more whole syntax nodes (a statement, a block, an expression, a
function body), which matches what an editor asks for and helps infilling. Both return
character offsets `(start, end)` with `0 <= start <= end <= len(text)`; the middle is
`text[start:end]`.
"""

from __future__ import annotations

import random

from codellama.grammars import new_parser

STOP_PROBABILITY = 0.5  # random descent: chance to take the current node instead of going deeper
EXTEND_PROBABILITY = 0.5  # chance to add one more following sibling statement to the middle
WHOLE_LINES_PROBABILITY = 0.5  # chance that middle spanning whole lines also takes their indent and newline


def char_span(length: int, rng: random.Random) -> tuple[int, int]:
    """Code Llama's split: two independent uniform positions in [0, length], sorted."""
    a, b = rng.randint(0, length), rng.randint(0, length)
    return (a, b) if a <= b else (b, a)


def syntax_nodes(text: str, language: str | None):
    """The parse tree's root node, or None when there is no grammar or no whole node parses.

    A training row often holds a chunk of a file cut at a line end (inside a function): tree-sitter
    recovers around the cut, and the nodes without errors inside it are still whole statements."""
    parser = new_parser(language)
    if parser is None:
        return None
    root = parser.parse(text.encode("utf-8")).root_node
    if not _clean_children(root):
        return None
    return root


def syntax_span(text: str, rng: random.Random, language: str | None) -> tuple[int, int] | None:
    """Character offsets of one or more whole sibling syntax nodes, or None (caller falls back).

    A random descent from the root (stop here with probability STOP_PROBABILITY, else go
    into a random named child) picks a node in O(depth) without walking the whole tree;
    a statement may then grow over following sibling statements, so middles range from a
    single identifier to several statements or a whole function body. Nodes that fill their lines
    become, half the time, those whole lines (indentation and newline included): an editor's cursor
    sits either after the indentation or at the start of an empty line, and HumanEval's single- and
    multi-line infilling middles are whole lines; a byte-level BPE merges a newline with the indentation
    after it, so a model that never saw a prefix end at a line start does not know how to go on there.
    """
    root = syntax_nodes(text, language)
    if root is None:
        return None
    node = _random_child(_clean_children(root), rng)
    while (children := _clean_children(node)) and rng.random() >= STOP_PROBABILITY:
        node = _random_child(children, rng)
    first = last = node
    if node.parent is not None and node.parent.type in (
        "module",
        "block",
        "translation_unit",
        "compound_statement",
        "program",
        "source_file",
    ):
        while rng.random() < EXTEND_PROBABILITY and _clean(last.next_named_sibling):
            last = last.next_named_sibling
    start, end = _char_offset(text, first.start_byte), _char_offset(text, last.end_byte)
    line_start = text.rfind("\n", 0, start) + 1
    fills_lines = text[line_start:start].strip(" \t") == "" and (end == len(text) or text[end] == "\n")
    if fills_lines and rng.random() < WHOLE_LINES_PROBABILITY:
        start, end = line_start, min(len(text), end + 1)
    return start, end


def _clean(node) -> bool:
    """A whole node: parsed without errors (and not tree-sitter's error or missing placeholder)."""
    return node is not None and not node.has_error and not node.is_missing and node.type != "ERROR"


def _clean_children(node) -> list:
    return [c for c in node.named_children if _clean(c)]


def _random_child(children: list, rng: random.Random):
    """One of a node's error-free named children (`_clean_children`, not empty)."""
    return children[rng.randrange(len(children))]


def _char_offset(text: str, byte_offset: int) -> int:
    """tree-sitter reports UTF-8 byte offsets; FIM works on characters."""
    if text.isascii():
        return byte_offset
    return len(text.encode("utf-8")[:byte_offset].decode("utf-8"))
