"""Continuous vs static batching in the editor server: how long a short completion waits behind a long one.

An editor asks for many short completions while another client's long generation runs. With static
batching a request that arrives during a batch waits for the whole batch to end; with continuous
batching (the server's default) it joins the decoding batch at the next step. Both modes serve the
same random-weight model in this process, one after the other, in alternating rounds:

    python benchmarks/bench_batching.py                      # CPU, `small` preset
    python benchmarks/bench_batching.py --preset 1b --device cuda --long-tokens 400

Each round: one streaming request of --long-tokens (the model is random, so it never stops early),
and once its first token is out, --short requests of --short-tokens each, arriving --gap seconds
apart (as an editor's keystrokes would), each timed from send to answer.
Printed: p50 latency of the short requests per mode, their ratio, and the long request's total time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch
from bench_server import LLAMA2_TOKENIZER, make_model


def one_round(url: str, args) -> tuple[list[float], float]:
    """The long request, then the short ones arriving `--gap` seconds apart while it decodes."""
    first_token, long_done = threading.Event(), []

    def long_request() -> None:
        start = time.perf_counter()
        body = {"prompt": "class Tree:\n", "max_tokens": args.long_tokens, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    first_token.set()
        long_done.append(time.perf_counter() - start)

    latencies: list[float] = []

    def short_request(i: int) -> None:
        start = time.perf_counter()
        r = httpx.post(
            f"{url}/v1/completions",
            json={"prompt": f"def f{i}(x):\n", "max_tokens": args.short_tokens, "temperature": 0},
            timeout=600,
        )
        r.raise_for_status()
        latencies.append(time.perf_counter() - start)

    worker = threading.Thread(target=long_request)
    worker.start()
    first_token.wait(600)
    shorts = []
    for i in range(args.short):
        shorts.append(threading.Thread(target=short_request, args=(i,)))
        shorts[-1].start()
        time.sleep(args.gap)
    for t in shorts:
        t.join()
    worker.join()
    if not long_done or long_done[0] < args.short * args.gap:
        raise SystemExit("the long request ended before the short ones arrived: raise --long-tokens")
    return latencies, long_done[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--long-tokens", type=int, default=300)
    p.add_argument("--short", type=int, default=6, help="short requests per round")
    p.add_argument("--gap", type=float, default=0.1, help="seconds between two short requests")
    p.add_argument("--short-tokens", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from infilling.server import ServerConfig, build_app, serve_in_thread

    shorts: dict[str, list[float]] = {"static": [], "continuous": []}
    longs: dict[str, list[float]] = {"static": [], "continuous": []}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(args.preset, Path(tmp), LLAMA2_TOKENIZER)
        for _ in range(args.rounds):
            for mode in ("static", "continuous"):
                config = ServerConfig(
                    model_name=args.preset,
                    max_tokens=max(args.long_tokens, args.short_tokens),
                    continuous=mode == "continuous",
                )
                with serve_in_thread(build_app(model_dir, config, device=args.device)) as url:
                    latencies, long_time = one_round(url, args)
                shorts[mode] += latencies
                longs[mode].append(long_time)
    print(
        f"model {args.preset} on {args.device} ({args.threads} torch threads); long request {args.long_tokens} "
        f"tokens, {args.short} short requests x {args.short_tokens} tokens {args.gap} s apart per round, "
        f"{args.rounds} rounds"
    )
    print(f"{'':28}{'static':>10}{'continuous':>12}{'ratio':>8}")
    s, c = statistics.median(shorts["static"]), statistics.median(shorts["continuous"])
    print(f"{'short request p50 (s)':28}{s:>10.3f}{c:>12.3f}{s / c:>8.2f}")
    ls, lc = statistics.median(longs["static"]), statistics.median(longs["continuous"])
    print(f"{'long request total (s)':28}{ls:>10.2f}{lc:>12.2f}{ls / lc:>8.2f}")
    print(f"continuous batching answers the short requests {s / c:.1f}x sooner; the long one takes {lc / ls - 1:+.0%}")


if __name__ == "__main__":
    main()
