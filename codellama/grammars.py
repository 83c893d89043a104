"""tree-sitter grammars: the one place that finds and loads a language's parser.

Used by the data layer (syntax-aligned FIM spans) and by infilling inference (syntax-aware
truncation). A grammar is a separately installed package (`tree_sitter_python`, ...); a
language whose package is missing simply has no parser, and callers fall back.
"""

from __future__ import annotations

import functools
import importlib
import logging

import tree_sitter

log = logging.getLogger(__name__)

# tree-sitter grammar package per language.
GRAMMARS = {
    "python": "tree_sitter_python",
    "c": "tree_sitter_c",
    "cpp": "tree_sitter_cpp",
    "java": "tree_sitter_java",
    "javascript": "tree_sitter_javascript",
    "go": "tree_sitter_go",
    "rust": "tree_sitter_rust",
    "shell": "tree_sitter_bash",
}


@functools.cache
def language(name: str | None) -> tree_sitter.Language | None:
    """The tree-sitter language for `name`, or None when it is unknown or its grammar is not installed."""
    module = GRAMMARS.get(name or "")
    if module is None:
        return None
    try:
        return tree_sitter.Language(importlib.import_module(module).language())
    except (ImportError, AttributeError, ValueError) as exc:
        log.debug("no tree-sitter grammar for %s (%s)", name, exc)
        return None


def new_parser(name: str | None) -> tree_sitter.Parser | None:
    """A fresh parser (parsers are cheap but not thread-safe), or None when there is no grammar."""
    lang = language(name)
    return None if lang is None else tree_sitter.Parser(lang)


def installed_languages() -> tuple[str, ...]:
    return tuple(name for name in GRAMMARS if language(name) is not None)
