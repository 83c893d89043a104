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
import dataclasses
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rescore(run: Path, timeout: float = 3.0) -> dict:
    """pass@1 per mode: as scored (results.jsonl) and, for PSM / SPM, cut to the hole's lines.

    The cut is `codellama eval infilling --lines`' own (modes psm-lines / spm-lines), made and executed on a
    copy of the run's records, so nothing is written into the run and no model is needed."""
    import shutil
    import tempfile

    from codellama.io import read_jsonl
    from evals.infilling import (
        LINES,
        BenchmarkConfig,
        data_path,
        execute_samples,
        generate_samples,
        load_problems,
    )

    settings = json.loads((run / "run.json").read_text()).get("fingerprint", {}).get("settings", {})
    config = BenchmarkConfig(**{**settings, "modes": ("psm",)})  # a bad recorded setting is a ValueError here
    records = list(read_jsonl(run / "samples.jsonl"))
    own = sorted({r["mode"] for r in records} & set(LINES.values()))
    answered = [{r["task_id"] for r in records if r["mode"] == mode} for mode in own]
    sampled = set.intersection(*answered) if answered else set()  # problems answered in every mode cut
    problems = [p for p in load_problems(data_path(config.benchmark)) if p.task_id in sampled]
    config = dataclasses.replace(config, modes=(*own, *(lines for lines, mode in LINES.items() if mode in own)))
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("samples.jsonl", "results.jsonl"):
            shutil.copy(run / name, Path(tmp) / name)
        generate_samples(None, problems, config, Path(tmp))  # only the cut modes are missing: nothing to generate
        execute_samples(problems, Path(tmp), timeout=timeout)
        results = list(read_jsonl(Path(tmp) / "results.jsonl"))
    table: dict[str, dict] = {}
    for r in results:
        mode, rule = (LINES[r["mode"]], "cut to the hole's lines") if r["mode"] in LINES else (r["mode"], "as scored")
        table.setdefault(mode, {"as scored": [], "cut to the hole's lines": []})[rule].append(bool(r["passed"]))
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
    except (OSError, ValueError, KeyError, TypeError) as exc:  # TypeError: a run.json with unknown settings
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
