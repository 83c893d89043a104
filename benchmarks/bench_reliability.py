"""What the reliability fixes cost: the model fingerprint of a resumable eval, and the torn-tail-safe append.

1. `codellama.rundir.sampled_sha256` (what eval runs key on) against a full sha256 of the same weight
   file, read from the page cache (the full hash's best case: no disk I/O), in the same run.
2. `codellama.io.append_jsonl` (torn-tail check, unbuffered, fsync) against the plain append it replaced
   (open, write, flush, fsync), same records, same run.

    python benchmarks/bench_reliability.py --size-mib 2048 --records 2000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

from codellama.io import append_jsonl
from codellama.rundir import sampled_sha256


def full_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def plain_append(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=2048, help="weight file size (a 1B-parameter bf16 model: 2 GiB)")
    ap.add_argument("--records", type=int, default=2000, help="JSONL records appended (each fsynced)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.safetensors"
        block = os.urandom(1 << 20)
        with open(weights, "wb") as f:
            for i in range(args.size_mib):
                f.write(block[i % 997 :] + block[: i % 997])  # distinct blocks, cheap to make
        full_sha256(weights)  # warm the page cache: the baseline reads from memory
        t_full = best_of(args.repeats, lambda: full_sha256(weights))
        t_sampled = best_of(args.repeats, lambda: sampled_sha256(weights))
        print(f"fingerprint of a {args.size_mib} MiB weight file (page cache warm, best of {args.repeats}):")
        print(f"  full sha256     {t_full * 1000:9.1f} ms  ({args.size_mib / 1024 / t_full:.2f} GiB/s)")
        print(f"  sampled sha256  {t_sampled * 1000:9.1f} ms")
        print(f"  ratio full / sampled: {t_full / t_sampled:.0f}x")

        record = {"task_id": "HumanEval/0", "sample": 0, "completion": "    return sorted(x)\n" * 8}
        paths = iter(range(10**6))

        def appends(fn):
            path = Path(tmp) / f"samples-{next(paths)}.jsonl"
            for i in range(args.records):
                fn(path, {**record, "sample": i})

        t_plain = best_of(args.repeats, lambda: appends(plain_append))
        t_safe = best_of(args.repeats, lambda: appends(append_jsonl))
        print(f"{args.records} fsynced JSONL appends (best of {args.repeats}):")
        print(f"  plain append (before)  {t_plain * 1e6 / args.records:8.1f} us/record")
        print(f"  append_jsonl (now)     {t_safe * 1e6 / args.records:8.1f} us/record")
        print(f"  ratio now / before: {t_safe / t_plain:.2f}")


if __name__ == "__main__":
    main()
