"""How many questions survive each stage: the funnel a user reads to tune prompts and models."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from codellama.io import atomic_write_json, read_jsonl


def summarize(run_dir: str | os.PathLike) -> dict:
    """Counts of every stage that has finished (or partly run) in `run_dir`."""
    run = Path(run_dir)

    def rows(stage: str) -> list[dict] | None:
        for name in (f"{stage}.jsonl", f"{stage}.partial.jsonl"):
            if (run / name).exists():
                return read_jsonl(run / name)
        return None

    funnel: list[tuple[str, int]] = []
    questions, unique, tests = rows("questions"), rows("dedup"), rows("tests")
    solutions, executions, dataset = rows("solutions"), rows("execute"), rows("dataset")
    if questions is not None:
        n = len(questions) if questions and "id" in questions[0] else sum(len(r["questions"]) for r in questions)
        funnel.append(("questions generated", n))
    if unique is not None:
        funnel.append(("kept after dedup", len(unique)))
    if tests is not None:
        funnel.append(("with tests", sum(1 for r in tests if r["tests"])))
    if solutions is not None:
        funnel.append(("with a parsed solution", sum(1 for r in solutions if any(r["solutions"]))))
    if executions is not None:
        funnel.append(
            ("with a passing solution", sum(1 for r in executions if any(x and x["passed"] for x in r["results"])))
        )
    stages = []
    for i, (name, count) in enumerate(funnel):
        prev = funnel[i - 1][1] if i else None
        stages.append({"stage": name, "count": count, "rate": (count / prev) if prev else None})
    out: dict = {"stages": stages}
    if solutions is not None:
        sampled = sum(len(r["solutions"]) for r in solutions)
        out["solutions"] = {"sampled": sampled, "parsed": sum(1 for r in solutions for s in r["solutions"] if s)}
    if executions is not None:
        statuses = Counter(x["status"] for r in executions for x in r["results"] if x)
        executed = sum(statuses.values())
        out["execution"] = {
            "programs": executed,
            "passed": statuses.get("passed", 0),
            "pass_rate": statuses.get("passed", 0) / executed if executed else None,
            "statuses": dict(statuses.most_common()),
        }
    if dataset is not None:
        out["dataset_examples"] = len(dataset)
    return out


def format_table(summary: dict) -> str:
    lines = [f"{'stage':<26}{'count':>8}{'pass rate':>11}"]
    for s in summary["stages"]:
        rate = f"{s['rate']:.1%}" if s["rate"] is not None else "-"
        lines.append(f"{s['stage']:<26}{s['count']:>8}{rate:>11}")
    if "solutions" in summary:
        sol = summary["solutions"]
        lines.append(f"solutions: {sol['sampled']} sampled, {sol['parsed']} parsed")
    if "execution" in summary:
        ex = summary["execution"]
        rate = f"{ex['pass_rate']:.1%}" if ex["pass_rate"] is not None else "-"
        statuses = ", ".join(f"{k} {v}" for k, v in ex["statuses"].items())
        lines.append(f"sandbox: {ex['programs']} programs, {ex['passed']} passed ({rate}); {statuses or 'none'}")
    if "dataset_examples" in summary:
        lines.append(f"dataset: {summary['dataset_examples']} examples")
    return "\n".join(lines)


def plot_funnel(summary: dict, path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["stage"] for s in summary["stages"]]
    counts = [s["count"] for s in summary["stages"]]
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(names) + 1.2))
    bars = ax.barh(names[::-1], counts[::-1], color="#4C72B0")
    for bar, s in zip(bars, summary["stages"][::-1]):
        label = f" {s['count']}" + (f" ({s['rate']:.0%})" if s["rate"] is not None else "")
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, label, va="center")
    ax.set_xlabel("questions")
    ax.set_title("self-instruct funnel")
    ax.set_xlim(0, max(counts + [1]) * 1.25)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def write_summary(run_dir: str | os.PathLike, summary: dict) -> None:
    """summary.json and summary.png next to the dataset."""
    run = Path(run_dir)
    atomic_write_json(run / "summary.json", summary)
    tmp = run / ".summary.png.tmp"
    plot_funnel(summary, tmp)
    os.replace(tmp, run / "summary.png")
