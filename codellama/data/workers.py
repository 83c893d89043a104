"""Worker processes of `datasets.map`: how many, and never outliving a killed job."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Iterator

PR_SET_PDEATHSIG = 1
_state = {"registered": False, "active": False, "parent": 0}


def procs(num_proc: int | None, rows: int, *, min_rows_per_proc: int = 256) -> int | None:
    """datasets' num_proc, but never more processes than the rows justify (starting one costs ~1 s)."""
    if not num_proc or num_proc <= 1 or rows < min_rows_per_proc * num_proc:
        return None
    return num_proc


def _arm_in_child() -> None:
    if not _state["active"]:
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != _state["parent"]:  # the job died before the signal was armed
        os._exit(1)


@contextlib.contextmanager
def children_die_with_us() -> Iterator[None]:
    """Processes forked inside this block (datasets' pool workers and its queue manager) get
    SIGKILL when the forking thread dies, so a SIGKILLed `data prepare` leaves no orphans
    that would keep running, or write into the checkpoint next to the resumed run. Linux only."""
    if not sys.platform.startswith("linux"):
        yield
        return
    if not _state["registered"]:
        os.register_at_fork(after_in_child=_arm_in_child)
        _state["registered"] = True
    previous = dict(_state)
    _state.update(active=True, parent=os.getpid())
    try:
        yield
    finally:
        _state.update(active=previous["active"], parent=previous["parent"])
