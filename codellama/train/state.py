"""Resumable training checkpoints: model, optimizer, scheduler, data position, RNG, step.

Model and optimizer go through torch.distributed.checkpoint (each rank writes its own shards,
and a checkpoint can be reloaded at another world size); the rest is a small JSON file plus
one RNG file per rank. Everything is written into a hidden temp directory that is renamed
into `checkpoints/step-NNNNNNNN` only when complete, so a SIGKILL at any moment leaves either
the previous checkpoint or the new one, never half of one. Old ones are pruned by retention.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from codellama.io import atomic_write_json
from codellama.train.distributed import DistEnv, barrier

log = logging.getLogger(__name__)

TRAINER_FILE = "trainer.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def checkpoint_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and (entry / TRAINER_FILE).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    root: str | os.PathLike, step: int, *, model, optimizer, scheduler, trainer: dict, env: DistEnv, keep: int
) -> Path:
    """Write the checkpoint of `step` (collective: every rank calls it) and prune old ones."""
    root = Path(root)
    final = checkpoint_dir(root, step)
    tmp = root / f".{final.name}.tmp"
    if env.is_main:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".step-*.tmp"):  # a save that was killed: possibly a whole model's worth of disk
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    barrier(env)
    try:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        with _single_process_ok(env), _checkpoint_errors(f"cannot write checkpoint {final}", disk=root):
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
            torch.save(rng_state(), tmp / f"rng-{env.rank:05d}.pt")
            barrier(env)
            if env.is_main:
                record = {**trainer, "step": step, "world_size": env.world_size, "scheduler": scheduler.state_dict()}
                atomic_write_json(tmp / TRAINER_FILE, record)  # the completeness mark, written last
                if final.exists():
                    _remove(final)
                os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a partial checkpoint must not keep filling the disk
        raise
    if env.is_main:
        prune(root, keep)
        log.info("checkpoint %s", final)
    barrier(env)
    return final


def load(path: str | os.PathLike, *, model, optimizer, scheduler, env: DistEnv) -> dict:
    """Restore everything `save` wrote (collective); returns the trainer record."""
    path = Path(path)
    record = json.loads((path / TRAINER_FILE).read_text())
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    with _single_process_ok(env), _checkpoint_errors(f"cannot resume from {path}"):
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    scheduler.load_state_dict(record["scheduler"])
    rng_file = path / f"rng-{env.rank:05d}.pt"
    if record.get("world_size") == env.world_size and rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    else:
        log.warning(
            "checkpoint was written by %s ranks, now %d: RNG states not restored",
            record.get("world_size"),
            env.world_size,
        )
    log.info("resumed from %s (step %d)", path, record["step"])
    return record


@contextlib.contextmanager
def _single_process_ok(env: DistEnv):
    """DCP warns when no process group exists; single-process is a supported mode here."""
    with warnings.catch_warnings():
        if not env.distributed:
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        yield


@contextlib.contextmanager
def _checkpoint_errors(what: str, disk: Path | None = None):
    """One line for a checkpoint that cannot be written or read, instead of a traceback per rank.

    torch.distributed.checkpoint raises CheckpointException, a BaseException holding each rank's
    traceback; torch's writer reports a full disk as "unexpected pos" (a short write), not ENOSPC.
    """
    try:
        yield
    except (CheckpointException, RuntimeError, OSError) as exc:
        cause = exc
        if isinstance(exc, CheckpointException):
            first = next(iter(exc.failures.values()), None)
            cause = first[0] if isinstance(first, tuple) else first
        if disk is not None and _disk_full(disk):
            raise OSError(errno.ENOSPC, f"{what}: No space left on device") from None
        if isinstance(cause, OSError):
            raise type(cause)(cause.errno, f"{what}: {cause.strerror or cause}") from None
        if not isinstance(exc, CheckpointException):
            raise
        text = " ".join(str(cause).split()) if cause is not None else "unknown failure"
        if "size mismatch" in text.lower() or "shape" in text.lower():
            text = f"the checkpoint's tensors have other shapes than this model (another vocabulary?): {text[:300]}"
        raise ValueError(f"{what}: {text[:400]}") from None


def _disk_full(path: Path) -> bool:
    """Less than a block left where the checkpoint was going (its partial files are still there)."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < max(stat.f_frsize, 1 << 16)


def prune(root: Path, keep: int) -> None:
    """Retention: keep the newest `keep` checkpoints (at least one)."""
    for _, path in list_checkpoints(root)[: -max(1, keep)]:
        _remove(path)


def _remove(path: Path) -> None:
    # Rename first: a kill during rmtree must not leave a half-deleted dir under a valid name.
    doomed = path.with_name(f".{path.name}.deleting")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)
