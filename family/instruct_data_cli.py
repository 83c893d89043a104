"""`codellama instruct-data generate`: self-instruct data with unit tests checked in the sandbox.

It lives in `family/` because it composes the core pipeline (codellama/instruct) with the
sandbox (evals/); `codellama/` itself knows nothing of sandboxes.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from codellama.commands.args import model_spec

log = logging.getLogger(__name__)

EXAMPLES = """examples:
  # both models local (one is loaded once if they are the same directory)
  codellama instruct-data generate --question-model runs/tiny --solver-model runs/tiny --questions 20 \\
      --solutions-per-question 4 --question-tokens 256 --answer-tokens 128 --out runs/instruct-data

  # questions from a vLLM server, solutions from a local checkpoint, Code Llama's 10 samples
  codellama instruct-data generate --question-model http://localhost:8000/v1 --question-model-name llama-2-70b \\
      --solver-model runs/python/final --device cuda --questions 62000 --out runs/self-instruct

  # stop after the questions to read them, then rerun the same command to continue
  codellama instruct-data generate ... --stop-after dedup

An interrupted run continues where it stopped when rerun with the same arguments and --out.
The output holds one JSONL per stage, dataset.jsonl ({"messages": [...], "question", "tests",
"solution"}, read by `codellama train instruct --data`), summary.json and summary.png."""


def register(cli) -> None:
    cli.group("instruct-data", help="build instruction data (self-instruct with unit tests)")
    p = cli.command(
        "generate",
        parent="instruct-data",
        epilog=EXAMPLES,
        help="questions -> dedup -> unit tests -> solutions -> sandbox -> chat dataset",
    )
    p.add_argument(
        "--question-model",
        type=model_spec,
        required=True,
        help="checkpoint, named base or OpenAI-compatible URL (.../v1)",
    )
    p.add_argument(
        "--solver-model",
        type=model_spec,
        required=True,
        help="checkpoint, named base or OpenAI-compatible URL (.../v1)",
    )
    p.add_argument("--question-model-name", help="model name at the question endpoint (default: its first)")
    p.add_argument("--solver-model-name", help="model name at the solver endpoint (default: its first)")
    p.add_argument("--questions", type=int, default=100, help="questions to generate, before dedup (default 100)")
    p.add_argument("--solutions-per-question", type=int, default=10, help="solutions sampled per question (default 10)")
    p.add_argument("--out", type=Path, required=True, help="run directory (rerun with the same one to resume)")
    p.add_argument("--system-prompt", help="system message added to every dataset example")
    p.add_argument("--seed-prompt", type=Path, help="text file: the request for questions ({count} = how many)")
    p.add_argument("--questions-per-prompt", type=int, default=50, help="questions asked for per prompt (default 50)")
    p.add_argument("--tests-per-question", type=int, default=5, help="unit tests asked for per question (default 5)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature of questions and solutions")
    p.add_argument("--question-tokens", type=int, default=2048, help="max new tokens per list of questions")
    p.add_argument("--answer-tokens", type=int, default=512, help="max new tokens per set of tests or solution")
    p.add_argument("--dedup-threshold", type=float, default=0.7, help="Jaccard similarity of near-duplicates")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per solution in the sandbox (default 10)")
    p.add_argument("--workers", type=int, help="parallel sandboxes (default: all cores)")
    p.add_argument(
        "--require-isolation",
        action="store_true",
        help="refuse to run solutions if bubblewrap cannot isolate them (default: warn and use rlimits)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="device of local models (cpu, cuda)")
    p.add_argument("--batch-size", type=int, default=8, help="batch size of local models")
    p.add_argument("--chunk-size", type=int, default=64, help="requests per checkpointed chunk")
    p.add_argument(
        "--stop-after",
        choices=("questions", "dedup", "tests", "solutions", "execute"),
        help="stop after this stage (rerun without it to continue)",
    )
    p.set_defaults(func=cmd_generate)


def _is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def _generator_factory(spec: str, name: str | None, args: argparse.Namespace, cache: dict):
    """A zero-argument function building the generator on first use (shared when specs are equal)."""
    from codellama.generation import load_generator

    if not _is_url(spec) and not Path(spec).is_dir():
        raise FileNotFoundError(f"model {spec!r} is neither a checkpoint directory nor an http(s) URL")

    def build():
        key = (spec, name)
        if key not in cache:
            log.info("loading %s", spec)
            cache[key] = (
                load_generator(endpoint=spec, endpoint_model=name)
                if _is_url(spec)
                else load_generator(spec, device=args.device, batch_size=args.batch_size)
            )
        return cache[key]

    return build


def cmd_generate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from codellama.instruct.dedup import DedupConfig
    from codellama.instruct.pipeline import InstructDataConfig, run_pipeline
    from codellama.instruct.prompts import PromptConfig
    from codellama.instruct.summary import format_table, summarize

    prompt_cfg = PromptConfig(
        questions_per_prompt=args.questions_per_prompt, tests_per_question=args.tests_per_question
    )
    if args.seed_prompt:
        if not args.seed_prompt.is_file():
            raise FileNotFoundError(f"seed prompt not found: {args.seed_prompt}")
        prompt_cfg = replace(prompt_cfg, seed_prompt=args.seed_prompt.read_text().strip())
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    base = InstructDataConfig()
    cfg = InstructDataConfig(
        questions=args.questions,
        solutions_per_question=args.solutions_per_question,
        prompts=prompt_cfg,
        dedup=DedupConfig(threshold=args.dedup_threshold),
        question_sampling=replace(
            base.question_sampling, temperature=args.temperature, max_new_tokens=args.question_tokens
        ),
        tests_sampling=replace(base.tests_sampling, max_new_tokens=args.answer_tokens),
        solution_sampling=replace(
            base.solution_sampling, temperature=args.temperature, max_new_tokens=args.answer_tokens
        ),
        timeout=args.timeout,
        system_prompt=args.system_prompt,
        seed=args.seed,
    ).validate()
    cache: dict = {}
    from evals.sandbox import LazySandboxPool, SandboxConfig

    sandbox = LazySandboxPool(
        SandboxConfig(timeout=args.timeout, workers=args.workers, require_isolation=args.require_isolation)
    )
    question_model = _generator_factory(args.question_model, args.question_model_name, args, cache)
    solver_model = _generator_factory(args.solver_model, args.solver_model_name, args, cache)
    try:
        result = run_pipeline(
            args.out,
            cfg,
            chunk_size=args.chunk_size,
            stop_after=args.stop_after,
            question_model=question_model,
            solver_model=solver_model,
            executor=sandbox,
            models={"question": args.question_model, "solver": args.solver_model},
        )
    finally:
        sandbox.close()
    summary = summarize(args.out)
    print(format_table(summary))
    if args.stop_after:
        print(f"stopped after {args.stop_after}; rerun without --stop-after to continue: {args.out}")
    else:
        print(f"dataset: {result}\nsummary: {args.out / 'summary.json'} {args.out / 'summary.png'}")
        if summary.get("dataset_examples") == 0:
            log.warning("no question got a passing solution: the dataset is empty")
    log.debug("summary %s", json.dumps(summary))
    return 0
