"""A llama.vim typing session replayed against the editor server: the wait the user sees, and what the
prompt cache saves.

llama.vim, while someone types a line of a real file: a warm-up request carrying the ring buffer's extra
chunks (`n_predict` 0), then one non-streaming /infill request per keystroke, each closing the previous
one (the plugin cancels by closing the connection). Here a keystroke comes every `--gap` seconds (150 ms),
with llama.vim's request body (256 lines before the cursor, 64 after, 16 ring chunks, n_predict 128,
t_max_predict_ms, n_indent, cache_prompt). Each session types at another line of the file, so it starts
with only the warm-up's chunks cached, not from what an earlier session prefilled. Measured in the same run, on
the same server:

1. latency of the last keystroke's request (the completion the user waits for), against the same request
   on an idle server (target: <= 1.5x), two ways: "alone", a fresh server that has answered only the
   warm-up (the cache state the session started from: what the abandoned requests cost the user), and
   "idle", this server right after the previous keystroke's request was answered (everything but the last
   character cached: stricter, it also charges the prefill that the typing did not leave time for);
2. time to first token of a keystroke request (streamed) with the prompt cache (the previous keystroke's
   prompt in it) against the same request with `cache_prompt: false` (target: >= 3x faster).

The server runs as its own process (`codellama serve`), as an editor sees it. With `--llama-server
MODEL.gguf` and `llama-server` on PATH, the same replay also runs against llama.cpp's server on that GGUF
(export ours with the GGUF export command; llama-server needs the GGUF's FIM token ids for /infill).

    python benchmarks/bench_typing_session.py                        # tiny preset, 4,096-token context
    python benchmarks/bench_typing_session.py --preset small --sessions 3
    python benchmarks/bench_typing_session.py --model DIR --llama-server DIR.gguf
    python benchmarks/bench_typing_session.py --smollm2 --llama-server smollm2-fim.gguf
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import httpx
from bench_server import LLAMA2_TOKENIZER, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
TYPED = "        parser = self._get_formatter_for(action, namespace)"  # the line typed, one char per keystroke


def smollm2_checkpoint(out: Path) -> Path:
    """SmolLM2-135M-Instruct (the named base `smollm2-135m`) with Code Llama's four infilling tokens added by
    `codellama tokenizer extend` (their new embedding rows start at the mean: the model is not FIM-trained,
    so this measures the server's latency, not completion quality)."""
    from codellama.bases import resolve_base
    from codellama.extend import extend

    return extend(resolve_base("smollm2-135m"), out / "smollm2-fim").out


def make_model(preset: str, context: int, out: Path) -> Path:
    """A random-weight model of `preset` with the Code Llama tokenizer (32,016 pieces)."""
    from codellama.checkpoint import save_checkpoint
    from codellama.model import build_model
    from codellama.presets import get_preset
    from codellama.tokenizer import CodeLlamaTokenizer

    tok = CodeLlamaTokenizer.extend_llama(LLAMA2_TOKENIZER)
    model = build_model(get_preset(preset).replace(vocab_size=tok.vocab_size, max_seq_len=context), seed=0)
    return save_checkpoint(model, out / preset, tok)


# -- what llama.vim sends ---------------------------------------------------------------------------


def ring_chunks(n: int = 16, lines: int = 32) -> list[dict]:
    """llama.vim's ring buffer: pieces of other files the user visited (it keeps 32-line halves of 64)."""
    files = ["json/decoder.py", "csv.py", "textwrap.py", "string.py", "shlex.py", "fnmatch.py", "glob.py", "bisect.py"]
    chunks = []
    for i in range(n):
        path = STDLIB / files[i % len(files)]
        text = path.read_text(encoding="utf-8").splitlines()
        start = (i // len(files)) * 40 + 10
        chunks.append({"text": "\n".join(text[start : start + lines]) + "\n", "time": [0, i], "filename": path.name})
    return chunks


def keystroke_bodies(
    keystrokes: int, n_predict: int, t_max_predict_ms: int, cursor: int = 1400
) -> tuple[dict, list[dict]]:
    """The warm-up body and one body per keystroke, typing the end of TYPED into argparse.py at line `cursor`
    (256 lines above it, 64 below)."""
    lines = (STDLIB / "argparse.py").read_text(encoding="utf-8").splitlines()
    above, below = lines[cursor - 256 : cursor], lines[cursor : cursor + 64]
    chunks = ring_chunks()
    warm = {
        "input_prefix": "",
        "input_suffix": "",
        "input_extra": chunks,
        "prompt": "",
        "n_predict": 0,
        "temperature": 0.0,
        "stream": False,
        "samplers": [],
        "cache_prompt": True,
        "t_max_prompt_ms": 1,
        "t_max_predict_ms": 1,
        "response_fields": [""],
    }
    bodies = []
    for k in range(len(TYPED) - keystrokes + 1, len(TYPED) + 1):
        middle = TYPED[:k]
        bodies.append(
            {
                "input_prefix": "\n".join(above) + "\n",
                "input_suffix": "\n" + "\n".join(below) + "\n",
                "input_extra": chunks,
                "prompt": middle,
                "n_predict": n_predict,
                "n_indent": len(middle) - len(middle.lstrip()),
                "top_k": 40,
                "top_p": 0.99,
                "seed": 1,  # not llama.vim's: the same suggestion in the session and in the baseline
                "stream": False,
                "samplers": ["top_k", "top_p", "infill"],
                "cache_prompt": True,
                "t_max_prompt_ms": 500,
                "t_max_predict_ms": t_max_predict_ms,
                "response_fields": ["content", "timings/prompt_n", "timings/predicted_n", "tokens_cached", "truncated"],
            }
        )
    return warm, bodies


# -- replaying it -----------------------------------------------------------------------------------


class Client:
    """One HTTP client for a replay (a plugin's curl processes start in milliseconds; so must the requests).
    Cancelling a request's task closes its connection, which is how llama.vim cancels."""

    def __init__(self, url: str):
        self.http = httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=256))

    async def post(self, body: dict | bytes) -> dict:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = await self.http.post("/infill", content=content, headers={"content-type": "application/json"})
        r.raise_for_status()
        return r.json()

    async def first_token(self, body: dict) -> float:
        """Seconds to the first streamed piece of text."""
        start = time.perf_counter()
        async with self.http.stream("POST", "/infill", json=dict(body, stream=True, t_max_predict_ms=0)) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if line.startswith("data: ") and json.loads(line[6:]).get("content"):
                    return time.perf_counter() - start
        raise RuntimeError("no text was streamed")

    async def health(self) -> dict:
        r = await self.http.get("/health")
        return r.json() if r.status_code == 200 else {}


async def typing_session(client: Client, bodies: list[dict], gap: float) -> tuple[float, dict]:
    """Every keystroke's request, `gap` apart, each closing the one before; the last one's latency."""
    encoded = [json.dumps(b).encode() for b in bodies]
    pending: asyncio.Task | None = None
    for body in encoded[:-1]:
        if pending is not None:
            pending.cancel()
        pending = asyncio.create_task(client.post(body))
        await asyncio.sleep(gap)
    if pending is not None:
        pending.cancel()
    start = time.perf_counter()
    result = await client.post(encoded[-1])
    return time.perf_counter() - start, result


async def idle_latency(client: Client, previous: dict, body: dict) -> float:
    """The same last request on the idle server, right after the previous keystroke's was answered."""
    await client.post(previous)
    start = time.perf_counter()
    await client.post(body)
    return time.perf_counter() - start


async def measure(url: str, warm: dict, sessions: list[list[dict]], args) -> dict:
    """Each session types at another place of the file, so none starts from what an earlier one cached."""
    client = Client(url)
    await client.post(warm)
    finals, idles, cached, uncached, cancelled = [], [], [], [], 0
    for bodies in sessions:
        before = abandoned(await client.health())
        latency, result = await typing_session(client, bodies, args.gap)
        finals.append(latency)
        await asyncio.sleep(1.0)  # the last cancellations land
        cancelled += abandoned(await client.health()) - before
        idles.append(await idle_latency(client, bodies[-2], bodies[-1]))
    bodies = sessions[0]
    for k in range(1, len(bodies), max(1, len(bodies) // args.ttft_probes)):  # alternate, so load drift hits both
        await client.post(dict(bodies[k - 1], n_predict=1))  # the previous keystroke is in the cache
        cached.append(await client.first_token(bodies[k]))
        uncached.append(await client.first_token(dict(bodies[k], cache_prompt=False)))
    await client.http.aclose()
    return {
        "final": statistics.median(finals),
        "idle": statistics.median(idles),
        "finals": finals,
        "idles": idles,
        "ttft_cached": statistics.median(cached),
        "ttft_uncached": statistics.median(uncached),
        "cancelled": cancelled,
        "last": result,
    }


def abandoned(health: dict) -> int:
    """Requests the server dropped because their client left: before they started, or while generating."""
    return health.get("closed_before_start", 0) + health.get("finished", {}).get("cancelled", 0)


# -- servers ------------------------------------------------------------------------------------------


def start_ours(model_dir: Path, port: int, args, log: Path) -> subprocess.Popen:
    verbose = ["-v"] if args.log_dir else []  # the decoder's debug lines: what each request found cached
    cmd = [sys.executable, "-m", "codellama.cli", *verbose, "serve", "--model", str(model_dir), "--port", str(port)]
    cmd += ["--max-tokens", str(max(256, args.n_predict)), "--prefill-chunk", str(args.prefill_chunk)]
    cmd += ["--device", args.device, "--dtype", args.dtype]
    if args.prompt_cache_mb is not None:
        cmd += ["--prompt-cache-mb", str(args.prompt_cache_mb)]
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT)


def start_llama_server(gguf: Path, port: int, args, log: Path) -> subprocess.Popen:
    cmd = ["llama-server", "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-c", str(args.context)]
    cmd += ["-np", "1", "-t", str(args.threads or os.cpu_count())] + args.llama_server_args.split()
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)


async def alone(url: str, warm: dict, sessions: list[list[dict]]) -> list[float]:
    """Each session's last request by itself, on a server that has answered only the warm-up (sessions type
    at different lines, so one session's request does not prefill the next one's)."""
    client = Client(url)
    await client.post(warm)
    latencies = []
    for bodies in sessions:
        start = time.perf_counter()
        await client.post(bodies[-1])
        latencies.append(time.perf_counter() - start)
    await client.http.aclose()
    return latencies


def run_against(name: str, start, url: str, warm: dict, bodies: list[list[dict]], args, log: Path) -> dict:
    """The replay on one server process, then the "alone" baseline on a fresh one."""
    with serving(start, url, log):
        measured = asyncio.run(measure(url, warm, bodies, args))
    with serving(start, url, log.with_suffix(".alone.log")):
        measured["alones"] = asyncio.run(alone(url, warm, bodies))
    measured["alone"] = statistics.median(measured["alones"])
    return measured


@contextlib.contextmanager
def serving(start, url: str, log: Path):
    proc = start(log)
    try:
        wait_healthy(proc, url, log)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def report(name: str, m: dict, keystrokes: int) -> None:
    ratio, strict = m["final"] / m["alone"], m["final"] / m["idle"]
    speedup = m["ttft_uncached"] / m["ttft_cached"]
    print(f"\n{name}: {keystrokes} keystrokes; the server dropped {m['cancelled']} abandoned requests")
    print(f"{'last keystroke latency, p50 (s)':44}{'session':>10}{'baseline':>10}{'ratio':>8}")
    print(f"{'  vs the same request alone (warm-up cached)':44}{m['final']:10.3f}{m['alone']:10.3f}{ratio:8.2f}")
    print(f"{'  vs idle after the previous keystroke':44}{m['final']:10.3f}{m['idle']:10.3f}{strict:8.2f}")
    each = ", ".join(f"{f:.2f}/{a:.2f}/{i:.2f}" for f, a, i in zip(m["finals"], m["alones"], m["idles"]))
    print(f"  each session (session/alone/idle s): {each}")
    print(f"{'':44}{'cache':>10}{'no cache':>10}{'speedup':>8}")
    print(f"{'time to first token, p50 (s)':44}{m['ttft_cached']:10.3f}{m['ttft_uncached']:10.3f}{speedup:8.1f}")
    last = m["last"]
    print(
        f"last answer: prompt_n {last.get('timings/prompt_n')}, tokens_cached {last.get('tokens_cached')}, "
        f"predicted_n {last.get('timings/predicted_n')}, truncated {last.get('truncated')}"
    )
    print(
        f"targets: latency <= 1.5x alone: {'met' if ratio <= 1.5 else 'NOT met'} "
        f"(<= 1.5x idle after the previous keystroke: {'met' if strict <= 1.5 else 'NOT met'}); "
        f"cached first token >= 3x faster: {'met' if speedup >= 3 else 'NOT met'}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="random-weight preset model (default tiny)")
    ap.add_argument("--context", type=int, default=4096, help="its context length (llama.vim's requests need ~4k)")
    ap.add_argument("--model", type=Path, help="an existing checkpoint instead of a preset model")
    ap.add_argument(
        "--smollm2",
        action="store_true",
        help="SmolLM2-135M-Instruct (named base smollm2-135m) with infilling tokens added",
    )
    ap.add_argument("--keystrokes", type=int, default=24)
    ap.add_argument("--gap", type=float, default=0.15, help="seconds between keystrokes")
    ap.add_argument(
        "--sessions", type=int, default=2, help="typing sessions, each at another line of the file (1-4; medians)"
    )
    ap.add_argument("--ttft-probes", type=int, default=6)
    ap.add_argument("--n-predict", type=int, default=128)
    ap.add_argument("--t-max-predict-ms", type=int, default=1000)
    ap.add_argument("--prefill-chunk", type=int, default=512)
    ap.add_argument("--prompt-cache-mb", type=int, help="our server's prompt cache (default: the server's own)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, help="CPU threads for the servers (OMP_NUM_THREADS)")
    ap.add_argument("--port", type=int, default=18231)
    ap.add_argument("--llama-server", type=Path, metavar="GGUF", help="also replay against llama-server on this GGUF")
    ap.add_argument("--llama-server-args", default="--cache-reuse 256", help="extra llama-server flags")
    ap.add_argument("--log-dir", type=Path, help="keep the servers' logs here (default: a temporary directory)")
    args = ap.parse_args()
    if not 1 <= args.sessions <= 4:
        ap.error("--sessions must be 1 to 4 (each types at its own line of argparse.py)")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    # Session s types at line 1400 + 300 s of argparse.py (each a place no earlier session prefilled).
    sessions = [
        keystroke_bodies(args.keystrokes, args.n_predict, args.t_max_predict_ms, cursor=1400 + 300 * s)
        for s in range(args.sessions)
    ]
    warm, bodies = sessions[0][0], [b for _, b in sessions]
    if args.log_dir:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.smollm2:
            args.model, args.context = smollm2_checkpoint(Path(tmp)), 8192
        model_dir = args.model or make_model(args.preset, args.context, Path(tmp))
        url = f"http://127.0.0.1:{args.port}"
        ours = run_against(
            "codellama serve",
            lambda log: start_ours(model_dir, args.port, args, log),
            url,
            warm,
            bodies,
            args,
            (args.log_dir or Path(tmp)) / "ours.log",
        )
        print(f"model {args.model or args.preset} (context {args.context}) on {args.device}, {os.cpu_count()} CPUs")
        report("codellama serve", ours, len(bodies[0]))
        if args.llama_server:
            if shutil.which("llama-server") is None:
                print("\nllama-server is not on PATH: the peer comparison is skipped")
                return 0
            peer = run_against(
                "llama-server",
                lambda log: start_llama_server(args.llama_server, args.port + 1, args, log),
                f"http://127.0.0.1:{args.port + 1}",
                warm,
                bodies,
                args,
                (args.log_dir or Path(tmp)) / "llama-server.log",
            )
            report("llama-server", peer, len(bodies[0]))
            print(
                f"\nours / llama-server: last keystroke {ours['final'] / peer['final']:.2f}x, "
                f"cached first token {ours['ttft_cached'] / peer['ttft_cached']:.2f}x (below 1: we are faster)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
