"""Syntax checks of an infilled file with tree-sitter.

Models often keep generating past the hole (repeating the suffix, starting the next
function). SAFIM's "syntax-aware truncation" fixes most of that without a model: cut the
middle at a line boundary where prefix + middle + suffix parses best. We take the
*longest* cut with the fewest parse errors, so a middle that already parses as well as
it can is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import tree_sitter

from codellama.grammars import new_parser

LANGUAGES = ("python",)


def _parser(language: str) -> tree_sitter.Parser:
    # Parsers are cheap but not thread-safe: one per call keeps the server's threads apart.
    parser = new_parser(language) if language in LANGUAGES else None
    if parser is None:
        raise ValueError(f"no tree-sitter grammar for {language!r} (have: {', '.join(LANGUAGES)})")
    return parser


def error_count(code: str, language: str = "python") -> int:
    """Number of ERROR and MISSING nodes tree-sitter had to insert to parse `code`."""
    root = _parser(language).parse(code.encode("utf-8")).root_node
    if not root.has_error:
        return 0
    count, stack = 0, [root]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            count += 1
        stack.extend(c for c in node.children if c.has_error or c.is_missing)
    return count


def parses(code: str, language: str = "python") -> bool:
    """Whether `code` parses without any error."""
    return not _parser(language).parse(code.encode("utf-8")).root_node.has_error


@dataclass(frozen=True)
class Truncation:
    middle: str
    truncated: bool  # the middle was shortened
    parses: bool  # prefix + middle + suffix parses without errors


def cut_points(middle: str) -> list[int]:
    """Candidate ends of the middle: empty, after every newline, and the whole text."""
    points = {0, len(middle)}
    points.update(i + 1 for i, ch in enumerate(middle) if ch == "\n")
    return sorted(points)


def truncate_middle(prefix: str, middle: str, suffix: str, language: str = "python") -> Truncation:
    """Cut `middle` at the last line boundary where the infilled file has the fewest parse errors."""
    full = error_count(prefix + middle + suffix, language)
    if full == 0:
        return Truncation(middle, False, True)
    best_end, best_errors = len(middle), full
    for end in reversed(cut_points(middle)[:-1]):  # longest first: ties keep the longer middle
        errors = error_count(prefix + middle[:end] + suffix, language)
        if errors < best_errors:
            best_end, best_errors = end, errors
            if errors == 0:
                break
    return Truncation(middle[:best_end], best_end < len(middle), best_errors == 0)


__all__ = ["LANGUAGES", "Truncation", "cut_points", "error_count", "parses", "truncate_middle"]
