"""HumanEval infilling (Bavarian et al., 2022): generate the hole, run the tests in the evals sandbox.

A run directory is resumable like a HumanEval run: every generated sample is appended to
samples.jsonl and every executed one to results.jsonl as soon as it is done, so a rerun
with the same settings skips finished work. Each problem is scored in PSM and/or SPM
(Code Llama's two infilling prompt orders); pass@k uses evals' unbiased estimator.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from codellama import rundir
from codellama.generation import SamplingParams
from codellama.io import append_jsonl, atomic_write_bytes, atomic_write_json, read_jsonl
from evals.execution import build_infilling_program, result_record
from evals.report import figure_png, summarize
from evals.sandbox import SandboxConfig, SandboxPool
from infilling.inference import InfillTask, infill

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).with_name("data")
BENCHMARKS = {
    "single-line": "HumanEval-SingleLineInfilling.jsonl.gz",
    "multi-line": "HumanEval-MultiLineInfilling.jsonl.gz",
    "random-span": "HumanEval-RandomSpanInfilling.jsonl.gz",
    "random-span-light": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
}
MODES = ("psm", "spm")
CANONICAL = "canonical"  # pseudo-mode: score the reference middles (validates data + sandbox)


@dataclass(frozen=True)
class InfillingProblem:
    task_id: str
    prompt: str  # code before the hole
    suffix: str  # code after it
    canonical_solution: str
    test: str
    entry_point: str


@dataclass(frozen=True)
class BenchmarkConfig:
    benchmark: str = "single-line"
    modes: tuple[str, ...] = MODES
    samples: int = 1  # per problem and mode
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 0.95
    seed: int = 0
    syntax_truncate: bool = False
    limit: int | None = None  # first N problems only
    ks: tuple[int, ...] = (1, 10, 100)
    model: str = ""  # what generated the samples (recorded, checked on resume)
    timeout: float = 3.0  # seconds per program in the sandbox

    def __post_init__(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {self.benchmark!r} (choose from {', '.join(BENCHMARKS)})")
        bad = [m for m in self.modes if m not in MODES + (CANONICAL,)]
        if bad or not self.modes:
            raise ValueError(f"modes must be among {', '.join(MODES)} (got {', '.join(self.modes) or 'none'})")
        if self.samples < 1:
            raise ValueError("samples must be >= 1")
        if self.samples > 1 and self.temperature == 0 and CANONICAL not in self.modes:
            raise ValueError("several samples per problem need sampling: set a temperature > 0")


def data_path(benchmark: str) -> Path:
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r} (choose from {', '.join(BENCHMARKS)})")
    return DATA_DIR / BENCHMARKS[benchmark]


def load_problems(path: str | os.PathLike, limit: int | None = None) -> list[InfillingProblem]:
    """Rows of a HumanEval-infilling .jsonl(.gz) file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    problems = []
    fields = [f.name for f in dataclasses.fields(InfillingProblem)]
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                missing = [k for k in fields if not isinstance(row.get(k), str)]
                if missing:
                    raise ValueError(f"{path}:{n}: missing {', '.join(missing)}")
                problems.append(InfillingProblem(**{k: row[k] for k in fields}))
                if limit is not None and len(problems) >= limit:
                    break
    except (OSError, EOFError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a HumanEval-infilling JSONL file ({exc})") from None
    if not problems:
        raise ValueError(f"{path}: no problems")
    return problems


def build_program(problem: InfillingProblem, completion: str) -> str:

    return build_infilling_program(problem.prompt, completion, problem.suffix, problem.test, problem.entry_point)


def _key(record: dict) -> tuple[str, str, int]:
    return record["mode"], record["task_id"], record["sample"]


RESUMABLE_CHANGES = ("limit", "ks", "timeout")  # a rerun may score more problems, other k, a longer timeout


def run_fingerprint(config: BenchmarkConfig, data: str | os.PathLike | None = None) -> dict:
    """What a rerun must share to continue: the settings, the problems and the model itself (not its path)."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in RESUMABLE_CHANGES}
    fingerprint = rundir.source_fingerprint(config.model) if config.model not in ("", CANONICAL) else {}
    if "model" in fingerprint:
        settings.pop("model")
    if data is not None:
        fingerprint["problems_sha256"] = rundir.file_sha256(data)
    return {**fingerprint, "settings": settings}


def generate_samples(
    generator, problems: Sequence[InfillingProblem], config: BenchmarkConfig, out_dir: Path, *, chunk: int = 64
) -> int:
    """Generate every missing (mode, problem, sample) and append it to samples.jsonl; returns how many."""
    from tqdm.auto import tqdm

    path = out_dir / "samples.jsonl"
    done = {_key(r) for r in read_jsonl(path)}
    params = SamplingParams(
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p, seed=config.seed
    )
    todo = [
        (mode, p, s)
        for mode in config.modes
        for p in problems
        for s in range(config.samples)
        if (mode, p.task_id, s) not in done
    ]
    if not todo:
        return 0
    with tqdm(total=len(todo), desc="generating", unit="sample") as bar:
        for mode in config.modes:
            rows = [(p, s) for m, p, s in todo if m == mode]
            for start in range(0, len(rows), chunk):
                part = rows[start : start + chunk]
                if mode == CANONICAL:
                    records = [
                        {"completion": p.canonical_solution, "finish_reason": "stop", "truncated": False}
                        for p, _ in part
                    ]
                else:
                    results = infill(
                        generator,
                        [InfillTask(p.prompt, p.suffix) for p, _ in part],
                        params,
                        suffix_first=mode == "spm",
                        syntax_truncate=config.syntax_truncate,
                    )
                    records = [
                        {
                            "completion": r.middle,
                            "finish_reason": r.finish_reason,
                            "truncated": r.truncated,
                            "completion_tokens": r.completion_tokens,
                        }
                        for r in results
                    ]
                for (p, s), rec in zip(part, records):
                    append_jsonl(path, {"task_id": p.task_id, "mode": mode, "sample": s, **rec})
                bar.update(len(part))
    return len(todo)


def execute_samples(
    problems: Sequence[InfillingProblem], out_dir: Path, *, timeout: float = 3.0, workers: int | None = None
) -> tuple[int, float]:
    """Run every generated but not yet executed sample in the sandbox; returns (count, seconds)."""

    by_id = {p.task_id: p for p in problems}
    executed = {_key(r) for r in read_jsonl(out_dir / "results.jsonl")}
    todo = [r for r in read_jsonl(out_dir / "samples.jsonl") if _key(r) not in executed and r["task_id"] in by_id]
    if not todo:
        return 0, 0.0
    programs = [build_program(by_id[r["task_id"]], r["completion"]) for r in todo]
    results_path = out_dir / "results.jsonl"
    start = time.perf_counter()
    with SandboxPool(SandboxConfig(timeout=timeout, workers=workers)) as pool:
        pool.run(
            programs,
            on_result=lambda i, res: append_jsonl(results_path, result_record(todo[i], res)),
            progress="executing",
        )
    return len(todo), time.perf_counter() - start


def summarize_run(problems: Sequence[InfillingProblem], config: BenchmarkConfig, out_dir: Path) -> dict:

    wanted = {p.task_id for p in problems}
    records = [r for r in read_jsonl(out_dir / "results.jsonl") if r["task_id"] in wanted]
    report: dict = {
        "benchmark": config.benchmark,
        "model": config.model,
        "problems": len(problems),
        "samples_per_problem": config.samples,
        "temperature": config.temperature,
        "syntax_truncate": config.syntax_truncate,
        "modes": {},
    }
    for mode in config.modes:
        summary = summarize([r for r in records if r["mode"] == mode], config.ks, expected_tasks=wanted)
        summary.pop("per_problem")
        report["modes"][mode] = summary
    return report


def run_benchmark(
    config: BenchmarkConfig,
    out_dir: str | os.PathLike,
    generator=None,
    *,
    data: str | os.PathLike | None = None,
    workers: int | None = None,
) -> dict:
    """Generate (resumably), execute (resumably), and write report.json + report.png."""
    out_dir = Path(out_dir)
    problems = load_problems(data or data_path(config.benchmark), config.limit)
    if generator is None and any(m != CANONICAL for m in config.modes):
        raise ValueError("a model or endpoint is needed to generate (or score the canonical solutions)")
    hint = "a rerun continues the same model with the same settings; use another --out for a new model or settings"
    with rundir.claim(out_dir, "infilling", run_fingerprint(config, data), hint=hint):
        t0 = time.perf_counter()
        generated = generate_samples(generator, problems, config, out_dir)
        gen_s = time.perf_counter() - t0
        executed, exec_s = execute_samples(problems, out_dir, timeout=config.timeout, workers=workers)
        report = summarize_run(problems, config, out_dir)
        report["this_run"] = {
            "generated": generated,
            "generation_seconds": round(gen_s, 2),
            "executed": executed,
            "execution_seconds": round(exec_s, 2),
            "executed_per_second": round(executed / exec_s, 1) if exec_s else None,
        }
        atomic_write_json(out_dir / "report.json", report)
        atomic_write_bytes(out_dir / "report.png", render_png(report))
    return report


def render_png(report: dict) -> bytes:
    """pass@k per prompt mode, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = report["modes"]
    ks = sorted({k for m in modes.values() for k in m["pass@k"]}, key=lambda k: int(k.split("@")[1]))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(modes))
    for j, (mode, summary) in enumerate(modes.items()):
        xs = [i + j * width for i in range(len(ks))]
        bars = ax.bar(xs, [100 * summary["pass@k"].get(k, 0) for k in ks], width, label=mode.upper())
        ax.bar_label(bars, fmt="%.1f%%")
    ax.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(ks))], ks)
    ax.set_ylim(0, 105)
    ax.set_ylabel("%")
    ax.set_title(f"HumanEval {report['benchmark']} infilling: {report['problems']} problems")
    ax.legend()

    return figure_png(fig, unsandboxed=any(m.get("warnings") for m in modes.values()))


__all__ = [
    "BENCHMARKS",
    "BenchmarkConfig",
    "InfillingProblem",
    "build_program",
    "data_path",
    "execute_samples",
    "generate_samples",
    "load_problems",
    "run_benchmark",
    "summarize_run",
]
