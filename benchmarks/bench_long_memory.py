"""Peak memory of one forward+backward pass versus sequence length: SDPA against eager attention.

Each point runs in a fresh process (ru_maxrss is a high-water mark) and reports how much the
pass adds to the peak RSS of a process that has already built the model. Eager attention
(the baseline, measured in the same run) materialises the L x L score matrix per head;
SDPA's memory-efficient CPU kernel does not, so its cost grows linearly with L.

    python benchmarks/bench_long_memory.py                       # tiny preset, vocab 2,016
    python benchmarks/bench_long_memory.py --vocab 32016 --lengths 4096,16384 --eager-max 0
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

SCRIPT = r"""
import json, os, resource, sys, time, torch
from codellama.model import build_model
from codellama.presets import get_preset

preset, vocab, n, impl = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
model = build_model(get_preset(preset).replace(vocab_size=vocab), seed=0, attn_implementation=impl)
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
with open("/proc/self/statm") as f:  # current RSS: start-up may have peaked higher
    base = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
ids = torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(0))
start = time.perf_counter()
model(input_ids=ids, labels=ids).loss.backward()
print(json.dumps({"mb": peak() - base, "s": time.perf_counter() - start, "base_mb": base}))
"""


def measure(preset: str, vocab: int, length: int, impl: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, preset, str(vocab), str(length), impl],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--vocab", type=int, default=2016)
    parser.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    parser.add_argument("--eager-max", type=int, default=4096, help="longest length run with eager attention")
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    print(f"preset {args.preset}, vocab {args.vocab}, fp32, batch 1: MB added to peak RSS by forward+backward")
    print(
        f"{'tokens':>7} {'sdpa MB':>9} {'sdpa s':>7} {'eager MB':>9} {'eager s':>8} {'eager/sdpa':>11} {'sdpa MB/token':>14}"
    )
    first = None
    for n in lengths:
        sdpa = measure(args.preset, args.vocab, n, "sdpa")
        first = first or (n, sdpa["mb"])
        eager = measure(args.preset, args.vocab, n, "eager") if n <= args.eager_max else None
        e_mb, e_s, ratio = (
            (f"{eager['mb']:.0f}", f"{eager['s']:.2f}", f"{eager['mb'] / sdpa['mb']:.2f}") if eager else ("-", "-", "-")
        )
        print(
            f"{n:>7} {sdpa['mb']:>9.0f} {sdpa['s']:>7.2f} {e_mb:>9} {e_s:>8} {ratio:>11} "
            f"{sdpa['mb'] / n * 1024:>12.1f}KB"
        )
    print(
        f"sdpa growth {first[0]} -> {lengths[-1]} tokens: x{sdpa['mb'] / first[1]:.2f} "
        f"for x{lengths[-1] / first[0]:.0f} tokens (linear = equal factors)"
    )


if __name__ == "__main__":
    main()
