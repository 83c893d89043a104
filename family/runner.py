"""A resumable run directory: stages run in order, each recorded only when it finished.

`state.json` lists finished stages with their outputs; a rerun skips them and restarts the
first unfinished one, which resumes from its own checkpoints (training) or JSONL (evals).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from codellama.io import atomic_write_json

log = logging.getLogger(__name__)

STATE_FILE = "state.json"


@dataclass
class Stage:
    name: str
    run: Callable[[RunContext], dict]
    plan: Callable[[RunContext], dict]  # budget for --dry-run: tokens, FLOPs, what it makes
    description: str = ""
    depends: tuple[str, ...] = ()


@dataclass
class RunContext:
    run_dir: Path
    config: object
    outputs: dict[str, dict] = field(default_factory=dict)  # stage name -> what it returned

    def stage_dir(self, name: str) -> Path:
        path = self.run_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


class RunState:
    def __init__(self, run_dir: Path):
        self.path = run_dir / STATE_FILE
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {"finished": {}}

    def finished(self, name: str) -> bool:
        return name in self.data["finished"]

    def record(self, name: str, outputs: dict, seconds: float) -> None:
        self.data["finished"][name] = {
            "outputs": outputs,
            "seconds": round(seconds, 1),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write_json(self.path, self.data)

    def outputs(self) -> dict[str, dict]:
        return {name: rec["outputs"] for name, rec in self.data["finished"].items()}


def run_stages(
    stages: list[Stage],
    ctx: RunContext,
    *,
    only: set[str] | None = None,
    on_stage: Callable[[str, str], None] | None = None,
) -> dict[str, dict]:
    """Run the unfinished stages (or only `only`), in order; returns every stage's outputs."""
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    state = RunState(ctx.run_dir)
    ctx.outputs.update(state.outputs())
    known = {s.name for s in stages}
    if only and (unknown := only - known):
        raise ValueError(
            f"unknown stage(s) {', '.join(sorted(unknown))}; stages are: {', '.join(s.name for s in stages)}"
        )
    for stage in stages:
        if only and stage.name not in only:
            continue
        if state.finished(stage.name) and not only:
            (on_stage or _log_stage)(stage.name, "done earlier, skipped")
            continue
        missing = [d for d in stage.depends if d not in ctx.outputs]
        if missing:
            raise ValueError(f"stage {stage.name} needs {', '.join(missing)} to have run first")
        (on_stage or _log_stage)(stage.name, "running")
        start = time.monotonic()
        outputs = stage.run(ctx) or {}
        ctx.outputs[stage.name] = outputs
        state.record(stage.name, outputs, time.monotonic() - start)
        (on_stage or _log_stage)(stage.name, f"finished in {time.monotonic() - start:.0f}s")
    return ctx.outputs


def _log_stage(name: str, what: str) -> None:
    log.info("stage %s: %s", name, what)
