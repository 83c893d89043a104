"""Reports: pass@k, per-problem verdicts and failure kinds as JSON, plus a PNG people can glance at."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from codellama.io import atomic_write_bytes, atomic_write_json
from evals.intervals import bootstrap_mean
from evals.passk import DEFAULT_KS, mean_pass_at_k


def summarize(records: Sequence[dict], ks: Iterable[int] = DEFAULT_KS, *, expected_tasks: Iterable[str] = ()) -> dict:
    """Aggregate result records (task_id, passed, kind, isolation[, warning]) into the report dict.

    `pass@1_interval` is the 95% bootstrap interval over problems of pass@1 (each problem's fraction of
    passing samples; 0 or 1 when greedy): how far the score could move on another draw of problems.
    """
    per_task: dict[str, dict] = defaultdict(lambda: {"n": 0, "passed": 0, "kinds": Counter()})
    for r in records:
        t = per_task[r["task_id"]]
        t["n"] += 1
        t["passed"] += bool(r["passed"])
        t["kinds"][r["kind"]] += 1
    counts = [(t["n"], t["passed"]) for t in per_task.values()]
    ns = [n for n, _ in counts]
    warnings = sorted({r["warning"] for r in records if r.get("warning")})
    interval = bootstrap_mean([c / n for n, c in counts]) if counts else None
    return {
        "pass@k": mean_pass_at_k(counts, ks),
        "pass@1_interval": [round(interval.low, 6), round(interval.high, 6)] if interval else None,
        "problems": len(per_task),
        "samples": len(records),
        "samples_per_problem": {"min": min(ns, default=0), "max": max(ns, default=0)},
        "missing_problems": sorted(set(expected_tasks) - per_task.keys()),
        "failure_kinds": dict(Counter(r["kind"] for r in records).most_common()),
        "isolation": sorted({r.get("isolation", "unknown") for r in records}),
        "warnings": warnings,
        "per_problem": {
            tid: {"n": t["n"], "passed": t["passed"], "kinds": dict(t["kinds"])} for tid, t in per_task.items()
        },
    }


def write_report(report: dict, json_path: str | os.PathLike, png_path: str | os.PathLike | None = None) -> None:
    """report.json (atomically) and, next to it, report.png with pass@k bars and failure kinds."""
    atomic_write_json(json_path, report)
    png_path = Path(png_path) if png_path else Path(json_path).with_suffix(".png")
    atomic_write_bytes(png_path, render_png(report))


def figure_png(fig, *, unsandboxed: bool = False) -> bytes:
    """PNG bytes of a finished figure; results from unisolated runs say so in red on the picture."""
    import io

    import matplotlib.pyplot as plt

    if unsandboxed:
        fig.suptitle("WARNING: code ran WITHOUT sandbox isolation", color="red")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def render_png(report: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1, 2]})
    names, values = list(report["pass@k"]), [100 * v for v in report["pass@k"].values()]
    bars = ax1.bar(names, values, color="tab:green")
    ax1.bar_label(bars, fmt="%.1f%%")
    ax1.set_ylim(0, 105)
    ax1.set_ylabel("%")
    ax1.set_title(f"pass@k ({report['problems']} problems, {report['samples']} samples)")
    kinds = report["failure_kinds"]
    colors = ["tab:green" if k == "passed" else "tab:red" if k == "failed" else "tab:orange" for k in kinds]
    bars = ax2.barh(list(kinds)[::-1], list(kinds.values())[::-1], color=colors[::-1])
    ax2.bar_label(bars)
    ax2.set_xlabel("samples")
    ax2.set_title("verdicts and failure kinds")
    return figure_png(fig, unsandboxed=bool(report.get("warnings")))
