"""Atomic file and directory writes: a crash never leaves a half-written output.

Temporary outputs are hidden names beside the target that carry the writer's pid
(`.NAME.PID.RANDOM.tmp`), so the next write of the same target can tell a killed writer's
leftovers (a full model copy, for a checkpoint) from a live one's, and removes them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# `.NAME.PID.RANDOM.tmp` (temp file/dir), `.NAME.old.PID` (a replaced directory on its way out).
_OWNED_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")
_OLD = re.compile(r"^\.(?P<name>.+)\.old\.(?P<pid>\d+)$")


def ensure_new_output_dir(path: str | os.PathLike) -> None:
    """Refuse to write into an existing, non-empty output (nothing of the user's is overwritten)."""
    path = Path(path)
    if path.is_dir():
        remove_stale_temps(path)  # a killed write into this (mount point) directory
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"output {path} already exists and is not empty")
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write to {path}: {parent} is not writable")


def check_writable(directory: str | os.PathLike) -> None:
    """Fail now, with a one-line error, if files cannot be created in `directory` (read-only, full, no access)."""
    directory = Path(directory)
    probe = directory
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(f"cannot write to {directory}: {probe} is not a directory")
    try:
        fd, name = tempfile.mkstemp(prefix=f".write-check.{os.getpid()}.", suffix=".tmp", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise PermissionError(f"cannot write to {directory}: {exc.strerror or exc}") from None


def process_alive(pid: int) -> bool:
    """Whether `pid` is a live process (ours counts as alive): its temporary files are still being written."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_path(path: Path) -> None:
    """Remove a file or a directory tree; a path already gone is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_stale_temps(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove temp outputs in `directory` left by killed writers (of `name` only, if given); returns them."""
    directory = Path(directory)
    removed = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _OWNED_TEMP.match(entry.name) or _OLD.match(entry.name)
        if not match or (name is not None and match.group("name") != name) or process_alive(int(match.group("pid"))):
            continue
        remove_path(entry)
        removed.append(entry)
    if removed:
        log.info("removed %d leftover temporary output(s) of killed writes in %s", len(removed), directory)
    return removed


def _temp_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}."


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp directory beside `target`; rename it into place only on success.

    A mount point cannot be renamed (EBUSY), so an (empty) mount point as `target` gets the
    temp directory inside it, and the finished files are moved in one by one at the end.
    """
    target = Path(target)
    if not overwrite:
        ensure_new_output_dir(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target.parent, target.name)
    in_place = target.is_dir() and os.path.ismount(target)
    where = target if in_place else target.parent
    if in_place:
        remove_stale_temps(target, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target.name), suffix=".tmp", dir=where))
    try:
        yield tmp
        if in_place:
            _swap_contents(tmp, target)
        else:
            _rename_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _rename_into_place(tmp: Path, target: Path) -> None:
    try:
        if target.exists():
            old = target.with_name(f".{target.name}.old.{os.getpid()}")
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except OSError:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except OSError as exc:
        if exc.errno not in (errno.EBUSY, errno.EXDEV, errno.EPERM) or not target.is_dir():
            raise
        _swap_contents(tmp, target)  # a mount point that os.path.ismount did not see (a bind mount)


def _swap_contents(tmp: Path, target: Path) -> None:
    """Replace what `target` holds by what `tmp` holds, keeping `target` itself (a mount point)."""
    old = target / f".{target.name}.old.{os.getpid()}"
    old.mkdir()
    for entry in list(target.iterdir()):
        if entry not in (old, tmp):
            os.replace(entry, old / entry.name)
    for entry in list(tmp.iterdir()):
        shutil.move(str(entry), str(target / entry.name))
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, *, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def read_json_file(path: str | os.PathLike, *, missing: str | None = None):
    """Parse a JSON file; a missing or broken file is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(missing or f"file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a UTF-8 text file") from None


# -- JSON lines: one fsynced record per line, recovering from a torn tail ---------------------------
def _torn_tail(fd: int, size: int) -> int | None:
    """Where the last complete line of a file ends, if a partial line follows it."""
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return None
    pos, block = size, 1 << 16
    while pos > 0:
        start = max(0, pos - block)
        cut = os.pread(fd, pos - start, start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        pos = start
    return 0


def _parses(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and fsync it: finished work survives a crash.

    A torn last line (a killed or failed earlier append) is cut off first, so the new record
    never glues onto it; an append that fails (disk full) cuts its own partial line back off.
    Unbuffered on purpose: a buffered file would retry the failed write when asked to truncate.
    """
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        end = _torn_tail(fd, size)
        if end is not None:
            if _parses(os.pread(fd, size - end, end)):  # only the newline was lost: keep the record
                _write_all(fd, b"\n")
            else:
                log.warning("%s: dropped a torn last line (%d bytes) left by an interrupted write", path, size - end)
                os.ftruncate(fd, end)
            size = os.fstat(fd).st_size
        try:
            _write_all(fd, line)
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read JSON lines, dropping (with a warning) a torn last line left by a crash."""
    records = []
    path = Path(path)
    if not path.exists():
        return records
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        lines = f.read().split("\n")
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines) - 1:  # no newline after it: a torn final line from an interrupted append
                log.warning("%s:%d: ignoring a torn last line left by an interrupted write", path, n + 1)
                break
            glued = _after_fragment(line)
            if glued is None:
                raise ValueError(f"{path}:{n + 1}: not valid JSON") from None
            log.warning("%s:%d: dropped the fragment of an interrupted write glued before a record", path, n + 1)
            records.append(glued)
    return records


def _after_fragment(line: str) -> dict | None:
    """A record appended straight after a torn line (by versions before the torn-tail repair)."""
    start = line.find('{"', 1)
    while start > 0:
        try:
            record = json.loads(line[start:])
        except json.JSONDecodeError:
            start = line.find('{"', start + 1)
            continue
        return record if isinstance(record, dict) else None
    return None
