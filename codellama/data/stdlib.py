"""The embedded default corpus: the Python standard library's own sources."""

from __future__ import annotations

import logging
import sysconfig
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_python_files() -> list[Path]:
    """Every `.py` file of this interpreter's standard library, in a stable order."""
    root = stdlib_root()
    return sorted(p for p in root.rglob("*.py") if not EXCLUDED_DIRS & set(p.relative_to(root).parts))


def read_source(path: Path) -> str | None:
    """A file's text, or None for files that are not UTF-8 (a few stdlib test fixtures)."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        log.debug("skipping non-UTF-8 file %s", path)
        return None


def iter_source_texts(paths: list[Path] | None = None, suffixes: tuple[str, ...] = (".py",)) -> Iterator[str]:
    """Texts of source files under `paths` (files or directories); default: the stdlib."""
    if not paths:
        files = stdlib_python_files()
    else:
        files = []
        for path in paths:
            if path.is_dir():
                files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in suffixes))
            elif path.is_file():
                files.append(path)
            else:
                raise FileNotFoundError(f"source not found: {path}")
    for path in files:
        text = read_source(path)
        if text is not None:
            yield text
