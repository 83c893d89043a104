"""Sandbox stage of instruct-data: pipeline throughput versus the bare sandbox pool on the same programs.

The pipeline adds program assembly, per-question journaling (an fsynced JSONL line per question)
and resumability on top of `evals.sandbox.SandboxPool.run`; this measures what that costs. The
programs are what a solver model writes: mostly correct or wrong solutions, plus a few that hang
(they cost a full timeout each and must not stall the other workers).

    python benchmarks/instruct_execute.py --questions 200 --solutions 10 --workers 2
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

from codellama.instruct.pipeline import InstructDataConfig, RunDir, stage_execute
from codellama.instruct.prompts import checked_program

GOOD = "def f(xs):\n    return sorted(xs)\n"
BAD = "def f(xs):\n    return list(xs)\n"
HANG = "def f(xs):\n    while True:\n        pass\n"
TESTS = ["assert f([3, 1, 2]) == [1, 2, 3]", "assert f([]) == []", "assert f([2, 2, 1]) == [1, 2, 2]"]


def make_solutions(questions: int, per_question: int, hang_rate: float, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for q in range(questions):
        sols = [HANG if rng.random() < hang_rate else rng.choice((GOOD, BAD)) for _ in range(per_question)]
        rows.append({"id": f"q{q:06d}", "solutions": sols})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--solutions", type=int, default=10)
    ap.add_argument("--hang-rate", type=float, default=0.005)
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    args = ap.parse_args()

    from evals.sandbox import SandboxConfig, SandboxPool

    rows = make_solutions(args.questions, args.solutions, args.hang_rate)
    tests = {r["id"]: TESTS for r in rows}
    programs = [checked_program(c, TESTS) for r in rows for c in r["solutions"]]
    hangs = sum(c == HANG for r in rows for c in r["solutions"])
    with SandboxPool(SandboxConfig(workers=args.workers, timeout=args.timeout)) as pool:
        pool.run(programs[: args.workers * 2], timeout=args.timeout)  # warm the workers up
        t0 = time.perf_counter()
        base = pool.run(programs, timeout=args.timeout)
        t_base = time.perf_counter() - t0
        cfg = InstructDataConfig(questions=args.questions, solutions_per_question=args.solutions, timeout=args.timeout)
        with tempfile.TemporaryDirectory() as tmp:
            run = RunDir(os.path.join(tmp, "run"), cfg)
            t0 = time.perf_counter()
            out = stage_execute(run, cfg, rows, tests, pool)
            t_pipe = time.perf_counter() - t0
    passed_base = sum(r.passed for r in base)
    passed_pipe = sum(x["passed"] for r in out for x in r["results"])
    n = len(programs)
    print(f"{n} programs ({hangs} hang), {args.workers} workers, timeout {args.timeout}s, isolation {pool.isolation}")
    print(f"bare SandboxPool.run : {t_base:7.2f} s  {n / t_base:8.1f} programs/s  ({passed_base} passed)")
    print(f"instruct execute     : {t_pipe:7.2f} s  {n / t_pipe:8.1f} programs/s  ({passed_pipe} passed)")
    print(f"ratio (pipeline / bare throughput): {t_base / t_pipe:.3f}")


if __name__ == "__main__":
    main()
