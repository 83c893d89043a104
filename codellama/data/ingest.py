"""Ingest: code from directories, git checkouts, JSONL/Parquet files and Hugging Face datasets.

Every source becomes the same `datasets.Dataset` of documents with the columns
`text`, `path`, `language`, `source` and `hash` (SHA-256 of the UTF-8 text), so the later
stages never care where a document came from. Source specs:

    stdlib                 the Python standard library's .py files (the default)
    DIR                    a git checkout (files git does not ignore) or a plain directory
                           (honouring .gitignore files found in it)
    FILE.jsonl[.gz] / .json / .parquet   one row per document
    DIR saved with Dataset.save_to_disk, or  hf:NAME[:CONFIG][@SPLIT]  (already in the local cache)
    FILE.py (any known extension)        a single source file
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import datasets

from codellama.data.stdlib import read_source, stdlib_python_files, stdlib_root

log = logging.getLogger(__name__)

COLUMNS = ("text", "path", "language", "source", "hash")
LANGUAGES = {
    ".py": "python",
    ".pyi": "python",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".hpp": "cpp",
    ".hh": "cpp",
    ".hxx": "cpp",
    ".java": "java",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".mts": "typescript",
    ".go": "go",
    ".rs": "rust",
    ".sh": "shell",
    ".bash": "shell",
    ".zsh": "shell",
    ".md": "markdown",
    ".markdown": "markdown",
    ".rb": "ruby",
    ".php": "php",
    ".cs": "csharp",
    ".kt": "kotlin",
    ".swift": "swift",
    ".scala": "scala",
    ".lua": "lua",
    ".sql": "sql",
    ".r": "r",
    ".jl": "julia",
}
TEXT_COLUMNS = ("text", "content", "code")
PATH_COLUMNS = ("path", "max_stars_repo_path", "file_path", "filename")
LANGUAGE_COLUMNS = ("language", "lang")
DATA_FILE_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def language_of(path: str) -> str:
    """Language from the file extension ("unknown" when it is not a known code/doc type)."""
    return LANGUAGES.get(os.path.splitext(path)[1].lower(), "unknown")


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class SourceSpec:
    """One source: where it is, its name in stats and mixes, and how to read table rows."""

    location: str = "stdlib"
    name: str | None = None
    text_column: str | None = None  # default: the first of TEXT_COLUMNS present
    language: str | None = None  # force a language (e.g. "text" for natural language)
    languages: tuple[str, ...] = ()  # directories: keep only these languages (default: every known one)

    @property
    def label(self) -> str:
        return self.name or self.location


def load_source(spec: SourceSpec) -> datasets.Dataset:
    """Read one source into a documents Dataset (columns COLUMNS). Raises FileNotFoundError/ValueError."""
    loc = spec.location
    path = Path(loc).expanduser()
    if loc == "stdlib":
        root = stdlib_root()
        ds = _from_files(root, stdlib_python_files(), spec)
    elif path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()):
        ds = _from_table(datasets.load_from_disk(str(path)), spec)
    elif path.is_dir():
        ds = _from_files(path, list_code_files(path, spec.languages), spec)
    elif path.is_file():
        builder = _data_file_builder(path)
        if builder:
            ds = _from_table(datasets.load_dataset(builder, data_files=str(path), split="train"), spec)
        elif language_of(path.name) != "unknown" or spec.language:
            ds = _from_files(path.parent, [path], spec)
        else:
            raise ValueError(
                f"source {loc}: unknown file type (expected a directory, .jsonl, .json, .parquet "
                f"or a source file with a known extension)"
            )
    elif loc.startswith("hf:") or ("/" in loc and not loc.startswith((".", "/"))):
        ds = _from_table(_load_hub_dataset(loc.removeprefix("hf:")), spec)
    else:
        raise FileNotFoundError(f"source not found: {loc}")
    log.info("source %s: %d documents", spec.label, len(ds))
    return ds


def load_documents(specs: Iterable[SourceSpec]) -> datasets.Dataset:
    """All sources, concatenated in the given order."""
    parts = [load_source(s) for s in specs]
    if not parts:
        parts = [load_source(SourceSpec())]
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def list_code_files(root: Path, languages: Iterable[str] = ()) -> list[Path]:
    """Files under `root` with a known language, without what git/.gitignore ignores, sorted."""
    wanted = set(languages)
    files = _git_files(root)
    if files is None:
        files = _walk_honouring_gitignore(root)
    keep = []
    for f in files:
        lang = language_of(f.name)
        if lang != "unknown" and (not wanted or lang in wanted):
            keep.append(f)
    return sorted(keep)


def _git_files(root: Path) -> list[Path] | None:
    """Tracked + untracked-but-not-ignored files, if `root` is inside a git checkout.

    A directory the enclosing checkout ignores (say a Python install under a dotfiles repo)
    is not part of that checkout: None, so it is walked like any plain directory.
    """
    try:
        if subprocess.run(["git", "-C", str(root), "check-ignore", "-q", "."], capture_output=True).returncode == 0:
            return None
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    files = [root / p for p in out.decode("utf-8", "surrogateescape").split("\0") if p]
    return [f for f in files if f.is_file()]  # deleted-but-tracked files are listed too


def _walk_honouring_gitignore(root: Path) -> list[Path]:
    import pathspec

    specs: list[tuple[Path, pathspec.GitIgnoreSpec]] = []
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        gitignore = here / ".gitignore"
        if gitignore.is_file():
            specs.append((here, pathspec.GitIgnoreSpec.from_lines(gitignore.read_text(errors="replace").splitlines())))

        def ignored(p: Path, is_dir: bool) -> bool:
            for base, spec in specs:
                if base == p or base not in p.parents:
                    continue
                rel = p.relative_to(base).as_posix() + ("/" if is_dir else "")
                if spec.match_file(rel):
                    return True
            return False

        dirnames[:] = sorted(d for d in dirnames if d != ".git" and not ignored(here / d, True))
        out.extend(here / f for f in filenames if not ignored(here / f, False))
    return out


def _from_files(root: Path, files: list[Path], spec: SourceSpec) -> datasets.Dataset:
    from tqdm.auto import tqdm

    rows: dict[str, list] = {c: [] for c in COLUMNS}
    skipped = 0
    for f in tqdm(files, desc=f"read {spec.label}", unit="file", leave=False, disable=len(files) < 200):
        text = read_source(f)
        if text is None:
            skipped += 1
            continue
        rel = f.relative_to(root).as_posix() if f.is_relative_to(root) else str(f)
        _add_row(rows, text, rel, spec.language or language_of(f.name), spec.label)
    if skipped:
        log.info("source %s: skipped %d files that are not UTF-8 text", spec.label, skipped)
    return datasets.Dataset.from_dict(rows, features=_features())


def _from_table(table: datasets.Dataset, spec: SourceSpec) -> datasets.Dataset:
    if isinstance(table, datasets.DatasetDict):
        raise ValueError(f"source {spec.location} has several splits ({', '.join(table)}); name one with @SPLIT")
    cols = table.column_names
    text_col = spec.text_column or next((c for c in TEXT_COLUMNS if c in cols), None)
    if text_col not in cols:
        raise ValueError(
            f"source {spec.location}: no text column (looked for {spec.text_column or TEXT_COLUMNS}; "
            f"columns are {cols})"
        )
    path_col = next((c for c in PATH_COLUMNS if c in cols), None)
    lang_col = next((c for c in LANGUAGE_COLUMNS if c in cols), None)

    def normalise(batch, indices):
        paths = batch[path_col] if path_col else [f"{spec.label}#{i}" for i in indices]
        rows: dict[str, list] = {c: [] for c in COLUMNS}
        for i, text in enumerate(batch[text_col]):
            if not isinstance(text, str):
                continue
            path = str(paths[i])
            language = spec.language or (str(batch[lang_col][i]).lower() if lang_col else language_of(path))
            _add_row(rows, text, path, language, spec.label)
        return rows

    return table.map(
        normalise,
        batched=True,
        with_indices=True,
        remove_columns=cols,
        features=_features(),
        desc=f"read {spec.label}",
        load_from_cache_file=False,
    )


def _add_row(rows: dict[str, list], text: str, path: str, language: str, source: str) -> None:
    rows["text"].append(text)
    rows["path"].append(path)
    rows["language"].append(language)
    rows["source"].append(source)
    rows["hash"].append(content_hash(text))


def _features() -> datasets.Features:
    return datasets.Features({c: datasets.Value("string") for c in COLUMNS})


def _data_file_builder(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz", ".zst"):
        suffixes = suffixes[:-1]
    return DATA_FILE_SUFFIXES.get(suffixes[-1]) if suffixes else None


def _load_hub_dataset(name: str) -> datasets.Dataset:
    """A Hugging Face dataset that is already in the local cache (we never download here)."""
    name, _, split = name.partition("@")
    name, _, config = name.partition(":")
    try:
        return datasets.load_dataset(name, config or None, split=split or "train")
    except (FileNotFoundError, ConnectionError, ValueError) as exc:
        raise FileNotFoundError(
            f"source {name!r} is not a path and not a cached Hugging Face dataset "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
