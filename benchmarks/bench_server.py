"""Server overhead: time to first token and decode tokens/s through `codellama serve` versus the bare
in-process HFGenerator, on the same model and the same HumanEval-infilling prompts, in the same run.

The server runs as its own process (as an editor would see it) and is called through streaming
/v1/completions (SSE); the baseline calls HFGenerator.generate with a streaming Sink in this
process. Requests alternate between the two paths so machine load drifts hit both alike.

    python benchmarks/bench_server.py                       # CPU, `small` preset, 24 prompts
    python benchmarks/bench_server.py --preset 1b --device cuda --requests 32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
# the shared data folder next to the checkout (a worktree sits one level deeper)
SHARED = next((p / "shared" for p in ROOT.parents if (p / "shared" / "data").is_dir()), ROOT.parent / "shared")
LLAMA2_TOKENIZER = SHARED / "data" / "llama2-tokenizer" / "tokenizer.model"


def make_model(preset: str, out: Path, tokenizer_path: Path) -> Path:
    from codellama.checkpoint import save_checkpoint
    from codellama.model import build_model
    from codellama.presets import get_preset
    from codellama.tokenizer import CodeLlamaTokenizer

    tok = CodeLlamaTokenizer.extend_llama(tokenizer_path)
    model = build_model(get_preset(preset).replace(vocab_size=tok.vocab_size), seed=0)
    return save_checkpoint(model, out / preset, tok)


def prompts(n: int, max_chars: int) -> list[tuple[str, str]]:
    from evals.infilling import data_path, load_problems

    problems = load_problems(data_path("single-line"))[:: max(1, 1033 // n)][:n]
    return [(p.prompt[-max_chars:], p.suffix[: max_chars // 2]) for p in problems]


def bare_once(gen, prefix: str, suffix: str, max_new: int) -> tuple[float, float, int]:
    from codellama.generation import GenerationRequest, SamplingParams, Sink

    first = []

    class FirstText(Sink):
        def text(self, delta: str) -> None:
            if not first:
                first.append(time.perf_counter())

    start = time.perf_counter()
    [out] = gen.generate(
        [GenerationRequest(prefix, suffix=suffix, params=SamplingParams(max_new_tokens=max_new))], [FirstText()]
    )
    end = time.perf_counter()
    return first[0] - start, end - first[0], len(out.token_ids)


def server_once(http: httpx.Client, prefix: str, suffix: str, max_new: int) -> tuple[float, float, int]:
    body = {
        "prompt": prefix,
        "suffix": suffix,
        "max_tokens": max_new,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    first, tokens = None, 0
    start = time.perf_counter()
    with http.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if first is None and event["choices"] and event["choices"][0]["text"]:
                first = time.perf_counter()
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    end = time.perf_counter()
    return first - start, end - first, tokens


def start_server(model_dir: Path, port: int, device: str, log_path: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-c",
        "import sys; from codellama.cli import main; sys.exit(main())",
        "serve",
        "--model",
        str(model_dir),
        "--port",
        str(port),
        "--device",
        device,
        "--max-tokens",
        "1024",
    ]
    proc = subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    wait_healthy(proc, f"http://127.0.0.1:{port}", log_path, timeout=300)
    return proc


def wait_healthy(proc: subprocess.Popen, url: str, log_path: Path, timeout: float = 600) -> None:
    """Poll `url`/health until it answers 200; the server's log tail in the error if it exits or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"the server at {url} did not become healthy:\n{log_path.read_text()[-3000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--model", type=Path, help="existing checkpoint instead of a random preset model")
    ap.add_argument("--tokenizer", type=Path, default=LLAMA2_TOKENIZER)
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--prompt-chars", type=int, default=1200)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--port", type=int, default=18123)
    ap.add_argument("--threads", type=int, help="torch CPU threads for both paths (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the server process
        torch.set_num_threads(args.threads)

    from codellama.generation import HFGenerator

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or make_model(args.preset, Path(tmp), args.tokenizer)
        gen = HFGenerator.from_pretrained(model_dir, device=args.device, batch_size=1)
        server = start_server(model_dir, args.port, args.device, Path(tmp) / "server.log")
        try:
            work = prompts(args.requests, args.prompt_chars)
            bare, served = [], []
            with httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=600) as http:
                for prefix, suffix in work[:2]:  # warm-up both paths
                    bare_once(gen, prefix, suffix, 8)
                    server_once(http, prefix, suffix, 8)
                for i, (prefix, suffix) in enumerate(work):
                    order = (0, 1) if i % 2 == 0 else (1, 0)
                    for which in order:
                        if which == 0:
                            bare.append(bare_once(gen, prefix, suffix, args.max_new_tokens))
                        else:
                            served.append(server_once(http, prefix, suffix, args.max_new_tokens))
        finally:
            server.terminate()
            server.wait(30)

    def p50(rows, f):
        return statistics.median(f(r) for r in rows)

    ttft_b, ttft_s = p50(bare, lambda r: r[0]), p50(served, lambda r: r[0])
    tps_b = p50(bare, lambda r: (r[2] - 1) / r[1])
    tps_s = p50(served, lambda r: (r[2] - 1) / r[1])
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    print(
        f"model {args.model or args.preset} on {device}, torch threads {torch.get_num_threads()}; "
        f"{len(work)} prompts, {args.max_new_tokens} new tokens each"
    )
    print(f"{'':24}{'bare':>10}{'server':>10}{'ratio':>8}")
    print(f"{'TTFT p50 (ms)':24}{ttft_b * 1e3:10.1f}{ttft_s * 1e3:10.1f}{ttft_s / ttft_b:8.3f}")
    print(f"{'decode tokens/s p50':24}{tps_b:10.1f}{tps_s:10.1f}{tps_s / tps_b:8.3f}")
    ttft_over, tps_over = ttft_s / ttft_b - 1, tps_b / tps_s - 1
    ok = ttft_over <= 0.2 and tps_over <= 0.2
    print(
        f"server overhead at p50: TTFT {100 * ttft_over:+.1f}%, tokens/s {100 * tps_over:+.1f}% "
        f"(target <= 20%: {'met' if ok else 'NOT met'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
