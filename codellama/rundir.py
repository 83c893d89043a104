"""Resume or refuse: the one way every resumable command starts (or continues) its run directory.

A run directory records what it was started with in a marker file (`run.json`): the kind of run
and a fingerprint of everything that decides its outputs (the model's weights and config, the
tokenizer's sha256, the data's index, the options). Starting again on the same directory:

- same fingerprint: the run is continued (finished work is kept by the caller's own journal);
- different fingerprint: refused, with a one-line error naming the directory and what differs
  (keys in `allow` are the exceptions a caller permits, e.g. new data on `train --resume`);
- a directory holding only the marker (a start that failed or was killed before any work) is
  taken over by whatever starts next, so a corrected rerun is never blocked by a failed one;
- a start that fails with an error removes what it wrote (the marker, the caller's scratch files);
- temporary outputs of killed writes inside the run (`.step-N.tmp`, atomic-write temps, half
  deleted checkpoints) are removed when the run is continued.

The directory is locked (flock) while the run holds it: a second process on the same run is refused
instead of both appending to the same journals.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from codellama.io import atomic_write_json, check_writable, process_alive, read_json_file, remove_path

log = logging.getLogger(__name__)

MARKER = "run.json"
# Temporary outputs of a killed write: `.NAME...tmp` (atomic writes, checkpoints), `.NAME.deleting`
# (a checkpoint being pruned), `.NAME.old.PID` (a directory being replaced).
_TEMP = re.compile(r"^\..+(\.tmp|\.deleting|\.old\.\d+)$")
_OWNER_PID = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$|^\..+\.old\.(\d+)$")


class RunDir:
    """A claimed run directory; use it as a context manager (it holds the lock, undoes a failed start)."""

    def __init__(self, path: Path, kind: str, marker: str, scratch: Iterable[str], discard_on_error: bool):
        self.path, self.kind, self.marker = path, kind, marker
        self.scratch = tuple(scratch)
        self.discard_on_error = discard_on_error
        self.fresh = True  # nothing of an earlier run is continued
        self.created = False  # the directory itself was made by this run
        self.changed: dict[str, tuple] = {}  # allowed fingerprint keys that differ: key -> (old, new)
        self.fingerprint: dict = {}
        self._fd: int | None = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None and issubclass(exc_type, Exception) and self.fresh:
                self._undo_start()
        finally:
            self.release()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def has_work(self) -> bool:
        """Anything in the directory besides the marker, the scratch files and temp leftovers."""
        return _has_work(self.path, {self.marker, *self.scratch})

    def _undo_start(self) -> None:
        if self.discard_on_error:
            if self.created:
                shutil.rmtree(self.path, ignore_errors=True)
            else:  # an empty directory (a mount point) given by the user: keep it, empty
                for entry in list(self.path.iterdir()):
                    remove_path(entry)
            return
        if self.has_work():
            return
        for name in (self.marker, *self.scratch):
            remove_path(self.path / name)
        _remove_empty_dirs(self.path, keep_top=not self.created)
        log.info("the failed start left nothing behind in %s", self.path)


def claim(
    path: str | os.PathLike,
    kind: str,
    fingerprint: dict,
    *,
    existing: str = "resume",
    allow: Iterable[str] = (),
    marker: str = MARKER,
    scratch: Iterable[str] = (),
    discard_on_error: bool = False,
    hint: str = "rerun with the same settings to resume, or choose another --out",
) -> RunDir:
    """Start the run of `kind` in `path`, or continue the one there with the same fingerprint.

    existing: "resume" continues an earlier run with the same fingerprint; "refuse" refuses any
    earlier run that did work (`train` without --resume). Keys in `allow` (dotted; a prefix covers
    its sub-keys) may differ: the run continues with a warning and the marker records the new values.
    `scratch`: names (relative to `path`) the caller writes at the start that are not work, removed
    with the marker when the start fails. `discard_on_error`: a fresh run that fails removes all it wrote.
    """
    if existing not in ("resume", "refuse"):
        raise ValueError(f"existing must be 'resume' or 'refuse', got {existing!r}")
    path = Path(path)
    fingerprint = json.loads(json.dumps(fingerprint))  # tuples -> lists: what the marker will hold
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"output {path} exists and is not a directory")
    run = RunDir(path, kind, marker, scratch, discard_on_error)
    run.fingerprint = fingerprint
    marker_path = path / marker
    if not path.exists():
        check_writable(path.parent)
        path.mkdir(parents=True)
        run.created = True
    run._fd = _lock(path)
    try:
        record = read_json_file(marker_path) if marker_path.is_file() else None
        if record is None:
            if _has_work(path, set()):
                raise FileExistsError(f"output {path} already exists and is not {_a(kind)} run directory")
            check_writable(path)
        elif not isinstance(record, dict) or record.get("kind") != kind:
            other = record.get("kind") if isinstance(record, dict) else None
            raise FileExistsError(
                f"{path} holds {_a(other) if other else 'another'} run, not {_a(kind)} run; choose another --out"
            )
        elif not run.has_work():
            log.info("%s: the earlier %s run there never started; starting over", path, kind)
        elif existing == "refuse":
            raise FileExistsError(
                f"{path} already holds {_a(kind)} run; continue it with --resume or choose another --out"
            )
        else:
            run.fresh = False
            _compare(path, record.get("fingerprint") or {}, fingerprint, tuple(allow), run, hint)
        remove_temp_outputs(path)
        if run.fresh or run.changed:
            marker_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(marker_path, {"kind": kind, "fingerprint": fingerprint})
        if not run.fresh:
            log.info("continuing the %s run in %s", kind, path)
    except BaseException:
        if run.created:
            shutil.rmtree(path, ignore_errors=True)
        run.release()
        raise
    return run


def _a(kind: str) -> str:
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"


def read_marker(path: str | os.PathLike, marker: str = MARKER) -> dict | None:
    """The kind and fingerprint a run directory was started with (None: not a run directory)."""
    file = Path(path) / marker
    return read_json_file(file) if file.is_file() else None


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FileExistsError(
            f"{path} is in use by another running process; wait for it or choose another --out"
        ) from None
    except OSError:  # a file system without locks: run unlocked
        pass
    return fd


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:16] + "..." + text[-16:]


def _compare(path: Path, old: dict, new: dict, allow: tuple[str, ...], run: RunDir, hint: str) -> None:
    old_flat, new_flat = _flatten(old), _flatten(new)
    diffs = [k for k in sorted(set(old_flat) | set(new_flat)) if old_flat.get(k) != new_flat.get(k)]
    allowed = {k for k in diffs if any(k == a or k.startswith(a + ".") for a in allow)}
    refused = [k for k in diffs if k not in allowed]
    if refused:
        shown = "; ".join(f"{k}: {_short(old_flat.get(k))} -> {_short(new_flat.get(k))}" for k in refused[:3])
        more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
        raise FileExistsError(f"{path} holds a run started with different settings ({shown}{more}); {hint}")
    for k in sorted(allowed):
        run.changed[k] = (old_flat.get(k), new_flat.get(k))
        log.warning(
            "%s: %s changed since the run started (%s -> %s)", path, k, _short(old_flat.get(k)), _short(new_flat.get(k))
        )


def _is_temp(name: str) -> bool:
    return bool(_TEMP.match(name))


def _live_owner(name: str) -> bool:
    match = _OWNER_PID.match(name)
    if not match:
        return False
    return process_alive(int(match.group(1) or match.group(2)))


def remove_temp_outputs(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary outputs of killed writes anywhere under a run directory we hold."""
    removed = []
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            if _is_temp(name) and not _live_owner(name):
                remove_path(Path(root) / name)
                removed.append(Path(root) / name)
        dirs[:] = [d for d in dirs if not _is_temp(d)]
    if removed:
        log.info("removed %d leftover temporary output(s) of killed writes: %s", len(removed), _short(str(removed[0])))
    return removed


def _has_work(path: Path, ignore: set[str]) -> bool:
    ignore = {os.path.normpath(name) for name in ignore}
    for root, dirs, files in os.walk(path):
        rel = os.path.relpath(root, path)
        dirs[:] = [d for d in dirs if not _is_temp(d) and os.path.normpath(os.path.join(rel, d)) not in ignore]
        if any(not _is_temp(f) and os.path.normpath(os.path.join(rel, f)) not in ignore for f in files):
            return True
    return False


def _remove_empty_dirs(path: Path, *, keep_top: bool) -> None:
    for root, _, _ in sorted(os.walk(path), key=lambda entry: -len(entry[0])):
        if keep_top and Path(root) == path:
            continue
        with contextlib.suppress(OSError):
            os.rmdir(root)


# -- fingerprints ------------------------------------------------------------------------------------
SAMPLE_EDGE = 1 << 20  # bytes hashed at each end of a weight file
SAMPLE_BLOCK = 1 << 16  # bytes hashed at each of SAMPLE_BLOCKS evenly spaced offsets in between
SAMPLE_BLOCKS = 64
_WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")
_TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")
_CONFIG_NOISE = ("transformers_version", "_name_or_path")


def file_sha256(path: str | os.PathLike) -> str:
    """The full sha256 of a (small) file: tokenizers, indexes, problem files."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sampled_sha256(path: str | os.PathLike) -> str:
    """sha256 of a weight file's size, first and last MiB and 64 evenly spaced 64 KiB blocks.

    Why not the whole file: at this machine's ~0.6 GB/s a full sha256 takes 20 s for a 7B fp16
    checkpoint and 4 min for 70B, at every eval start; this reads about 6 MiB whatever the size.
    Why it still tells trained weights apart: training updates every parameter, so every sampled
    block changes, and a different shape changes the size and the safetensors header (first MiB).
    Not mtimes: a copied checkpoint is the same model and resumes.
    """
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= 2 * SAMPLE_EDGE + SAMPLE_BLOCKS * SAMPLE_BLOCK:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
            return digest.hexdigest()
        digest.update(f.read(SAMPLE_EDGE))
        span = size - 2 * SAMPLE_EDGE - SAMPLE_BLOCK
        for i in range(SAMPLE_BLOCKS):
            f.seek(SAMPLE_EDGE + span * i // (SAMPLE_BLOCKS - 1))
            digest.update(f.read(SAMPLE_BLOCK))
        f.seek(size - SAMPLE_EDGE)
        digest.update(f.read(SAMPLE_EDGE))
    return digest.hexdigest()


def model_fingerprint(model_dir: str | os.PathLike) -> dict:
    """What identifies a checkpoint directory's model: its config, weights and tokenizer files."""
    model_dir = Path(model_dir)
    out: dict = {}
    config = model_dir / "config.json"
    if config.is_file():
        raw = read_json_file(config)
        if isinstance(raw, dict):
            raw = {k: v for k, v in raw.items() if k not in _CONFIG_NOISE}
        out["config"] = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()
    weights = sorted({p for pattern in _WEIGHTS for p in model_dir.glob(pattern)})
    out["weights"] = {p.name: sampled_sha256(p) for p in weights}
    for name in _TOKENIZER_FILES:
        if (model_dir / name).is_file():
            out[name] = file_sha256(model_dir / name)
    return out


def source_fingerprint(source: str | os.PathLike | None) -> dict:
    """A model directory's fingerprint, or an endpoint's address (its weights cannot be seen from here)."""
    if source is None or str(source) == "":
        return {}
    if Path(source).is_dir():
        return {"model": model_fingerprint(source)}
    return {"endpoint": str(source)}
