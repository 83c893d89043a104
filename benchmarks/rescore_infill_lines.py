"""Infilling answers judged like the prefix-only baseline: each PSM / SPM answer cut to the hole's lines.

    python benchmarks/rescore_infill_lines.py runs/fim-heal/budget-122880/infilling

`codellama eval infilling` scores a PSM / SPM answer as the model ended it (at `<EOT>`, or the token limit),
while the prefix-only baseline, which cannot know where the hole ends, is cut to the true middle's number of
lines (`evals.infilling.cut_prefix_completion`). A model that writes the right line and then goes on fails
the first rule and passes the second. This reruns a finished run's PSM / SPM samples in the sandbox with the
baseline's cut, so the two can be compared like for like; it writes nothing into the run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rescore(run: Path, timeout: float = 3.0) -> dict:
    """pass@1 per mode: as scored (results.jsonl) and, for PSM / SPM, cut to the hole's lines."""
    from codellama.io import read_jsonl
    from evals.infilling import BENCHMARKS, PREFIX, build_program, cut_prefix_completion, data_path, load_problems
    from evals.sandbox import SandboxConfig, SandboxPool

    settings = json.loads((run / "run.json").read_text()).get("fingerprint", {}).get("settings", {})
    benchmark = settings.get("benchmark", "single-line")
    if benchmark not in BENCHMARKS:
        raise ValueError(f"{run}/run.json: unknown benchmark {benchmark!r}")
    problems = {p.task_id: p for p in load_problems(data_path(benchmark))}
    scored = {(r["mode"], r["task_id"], r["sample"]): bool(r["passed"]) for r in read_jsonl(run / "results.jsonl")}
    samples = [r for r in read_jsonl(run / "samples.jsonl") if r["mode"] != PREFIX and r["task_id"] in problems]
    programs = [
        build_program(
            problems[r["task_id"]], cut_prefix_completion(r["completion"], problems[r["task_id"]].canonical_solution)
        )
        for r in samples
    ]
    with SandboxPool(SandboxConfig(timeout=timeout)) as pool:
        results = pool.run(programs, progress="executing")
    table: dict[str, dict] = {}
    for (mode, _, _), passed in scored.items():
        table.setdefault(mode, {"as scored": [], "cut to the hole's lines": []})["as scored"].append(passed)
    for r, result in zip(samples, results):
        table[r["mode"]]["cut to the hole's lines"].append(bool(result.passed))
    return {
        mode: {rule: {"passed": sum(v), "of": len(v)} for rule, v in rules.items() if v}
        for mode, rules in table.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", type=Path, help="a finished `codellama eval infilling` run directory")
    args = parser.parse_args(argv)
    try:
        table = rescore(args.run)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for mode, rules in table.items():
        print(
            mode,
            "  ".join(
                f"{rule}: {v['passed']}/{v['of']} = {100 * v['passed'] / v['of']:.1f}%" for rule, v in rules.items()
            ),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
