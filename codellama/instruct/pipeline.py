"""Self-instruct with unit tests: questions -> dedup -> tests -> solutions -> sandbox -> chat dataset.

Every stage writes one JSONL in the run directory. Work inside a stage is journaled to
`<stage>.partial.jsonl` one finished item at a time (fsynced), and renamed to `<stage>.jsonl`
when the stage is complete, so an interrupted run restarted with the same arguments skips
finished stages and finished items and redoes nothing. `run.json` records the settings and models
that determine the data (`codellama.rundir`); a rerun with different ones is refused rather than
mixing two runs. `state.json` lists the finished stages.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

from codellama import rundir
from codellama.generation import Completion, GenerationRequest, Generator, SamplingParams
from codellama.instruct import prompts
from codellama.instruct.dedup import DedupConfig, find_duplicates
from codellama.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl

log = logging.getLogger(__name__)

STAGES = ("questions", "dedup", "tests", "solutions", "execute", "dataset")
STATE = "state.json"


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 512

    def params(self, *, stop: tuple[str, ...] = (), seed: int | None = None) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p, stop=stop, seed=seed
        )


class ExecResult(Protocol):
    passed: bool  # only with positive proof that every test ran to the end
    kind: str  # passed, failed, timeout, killed:<limit>, error:<type>
    duration: float


class Executor(Protocol):
    """Runs untrusted programs in isolation, results in the programs' order: evals.sandbox.SandboxPool.

    (`codellama/` knows nothing of sandboxes; the caller hands one in.)
    """

    def run(
        self,
        programs: Sequence[str],
        *,
        timeout: float | None = None,
        on_result: Callable[[int, ExecResult], None] | None = None,
    ) -> list[ExecResult]: ...


@dataclass(frozen=True)
class InstructDataConfig:
    questions: int = 100  # questions to generate (before dedup)
    solutions_per_question: int = 10  # Code Llama sampled 10 and kept the first that passed
    prompts: prompts.PromptConfig = field(default_factory=prompts.PromptConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    question_sampling: Sampling = Sampling(temperature=0.8, top_p=0.95, max_new_tokens=2048)
    tests_sampling: Sampling = Sampling(temperature=0.0, top_p=1.0, max_new_tokens=512)
    solution_sampling: Sampling = Sampling(temperature=0.8, top_p=0.95, max_new_tokens=512)
    timeout: float = 10.0  # seconds per program in the sandbox
    system_prompt: str | None = None  # system message of every dataset example
    seed: int = 0
    max_question_rounds: int | None = None  # prompts to the question model at most (default: 4x the need)

    def validate(self) -> InstructDataConfig:
        if self.questions < 1:
            raise ValueError(f"questions must be >= 1, got {self.questions}")
        if self.solutions_per_question < 1:
            raise ValueError(f"solutions per question must be >= 1, got {self.solutions_per_question}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")
        for name in ("question_sampling", "tests_sampling", "solution_sampling"):
            sampling = getattr(self, name)
            if sampling.max_new_tokens < 1 or sampling.temperature < 0 or not 0 < sampling.top_p <= 1:
                raise ValueError(f"{name}: max_new_tokens must be >= 1, temperature >= 0, top_p in (0, 1]")
        if not 0 < self.dedup.threshold <= 1:
            raise ValueError(f"dedup threshold must be in (0, 1], got {self.dedup.threshold}")
        return self

    def fingerprint(self) -> dict:
        """The settings that decide the data (everything; how it is run is not part of the config)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


GeneratorSource = Generator | Callable[[], Generator]


class _Lazy:
    """A generator built on first use: a resumed run never loads a model whose stages are done."""

    def __init__(self, source: GeneratorSource):
        self.source, self._gen = source, None

    def __call__(self) -> Generator:
        if self._gen is None:
            self._gen = self.source if hasattr(self.source, "generate") else self.source()
        return self._gen


class RunDir:
    """Stage files and the journal of the unfinished stage, in a directory claimed by `codellama.rundir`.

    run.json holds the fingerprint (the config and the models); state.json lists the finished stages.
    """

    def __init__(self, path: str | os.PathLike, config: InstructDataConfig, models: dict | None = None):
        self.path = Path(path)
        fingerprint = {"config": config.fingerprint()}
        if models:
            fingerprint["models"] = {role: rundir.source_fingerprint(src) for role, src in models.items()}
        self.claim = rundir.claim(self.path, "instruct-data", fingerprint, scratch=(STATE,))
        state_file = self.path / STATE
        self.state = json.loads(state_file.read_text()) if state_file.is_file() and not self.claim.fresh else None
        if self.state is None:
            self.state = {"done": []}
            atomic_write_json(state_file, self.state)
        log.info("%s: stages done: %s", self.path, ", ".join(self.state["done"]) or "none")

    def done(self, stage: str) -> bool:
        return stage in self.state["done"]

    def file(self, stage: str) -> Path:
        return self.path / f"{stage}.jsonl"

    def journal(self, stage: str) -> Path:
        return self.path / f"{stage}.partial.jsonl"

    def read(self, stage: str) -> list[dict]:
        return read_jsonl(self.file(stage))

    def resume(self, stage: str) -> list[dict]:
        """Items of `stage` finished by an interrupted run."""
        return read_jsonl(self.journal(stage))

    def log(self, stage: str, record: dict) -> None:
        append_jsonl(self.journal(stage), record)

    def finish(self, stage: str, records: list[dict]) -> None:
        atomic_write_text(self.file(stage), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self.state["done"].append(stage)
        atomic_write_json(self.path / STATE, self.state)
        self.journal(stage).unlink(missing_ok=True)
        log.info("stage %s done: %d records in %s", stage, len(records), self.file(stage).name)


def request_seed(base: int, *parts) -> int:
    """A stable per-request seed: reruns and resumed runs sample the same text."""
    return zlib.crc32(":".join(map(str, (base, *parts))).encode()) & 0x7FFFFFFF


def _tokenizer_of(generator: Generator):
    """A local model's tokenizer (its chat format is the prompts'); None for an endpoint ([INST] prompts)."""
    return getattr(generator, "tokenizer", None)


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# -- stages ---------------------------------------------------------------------------------------------
def stage_questions(run: RunDir, cfg: InstructDataConfig, model: Callable[[], Generator], chunk: int) -> list[dict]:
    """Ask the question model for numbered lists until `cfg.questions` questions are in."""
    rounds = run.resume("questions")
    have = sum(len(r["questions"]) for r in rounds)
    need_rounds = math.ceil(cfg.questions / cfg.prompts.questions_per_prompt)
    max_rounds = cfg.max_question_rounds or 4 * need_rounds + 2
    prompt = None  # in the question model's chat format: known once the model is loaded
    first = len(cfg.prompts.seed_examples) + 1
    with tqdm(total=cfg.questions, initial=min(have, cfg.questions), desc="questions", unit="q") as bar:
        while have < cfg.questions and len(rounds) < max_rounds:
            missing = math.ceil((cfg.questions - have) / cfg.prompts.questions_per_prompt)
            todo = range(len(rounds), min(max_rounds, len(rounds) + min(chunk, missing)))
            prompt = prompt or prompts.question_prompt(cfg.prompts, _tokenizer_of(model()))
            requests = [
                GenerationRequest(prompt, params=cfg.question_sampling.params(seed=request_seed(cfg.seed, "q", r)))
                for r in todo
            ]
            for r, done in zip(todo, model().generate(requests)):
                found = prompts.parse_questions(done.text, first)
                record = {"round": r, "questions": found, "finish_reason": done.finish_reason}
                run.log("questions", record)
                rounds.append(record)
                bar.update(min(len(found), cfg.questions - have))
                have += len(found)
    if have < cfg.questions:
        log.warning(
            "the question model gave %d questions in %d prompts (asked for %d)", have, len(rounds), cfg.questions
        )
    texts = [q for r in sorted(rounds, key=lambda r: r["round"]) for q in r["questions"]][: cfg.questions]
    return [{"id": f"q{i:06d}", "question": q} for i, q in enumerate(texts)]


def stage_dedup(questions: list[dict], cfg: InstructDataConfig) -> tuple[list[dict], list[dict]]:
    dups = find_duplicates([q["question"] for q in questions], cfg.dedup)
    kept = [q for i, q in enumerate(questions) if i not in dups]
    removed = [{**questions[i], "kind": kind} for i, kind in sorted(dups.items())]
    return kept, removed


def _generate_items(
    run: RunDir,
    stage: str,
    items: list[dict],
    model: Callable[[], Generator],
    chunk: int,
    make: Callable[[dict], list[GenerationRequest]],
    record: Callable[[dict, list[Completion]], dict],
) -> list[dict]:
    """Generate for each item (several requests each), journaling every finished item."""
    finished = {r["id"]: r for r in run.resume(stage)}
    todo = [it for it in items if it["id"] not in finished]
    with tqdm(total=len(items), initial=len(items) - len(todo), desc=stage, unit="q") as bar:
        per_item = max(1, len(make(todo[0]))) if todo else 1  # make() may load the model: only when needed
        for part in _chunks(todo, max(1, chunk // per_item)):
            requests = [make(it) for it in part]
            flat = [r for rs in requests for r in rs]
            out = iter(model().generate(flat))
            for it, rs in zip(part, requests):
                rec = record(it, [next(out) for _ in rs])
                run.log(stage, rec)
                finished[rec["id"]] = rec
                bar.update(1)
    return [finished[it["id"]] for it in items]


def stage_tests(run: RunDir, cfg: InstructDataConfig, questions: list[dict], model, chunk: int) -> list[dict]:
    def make(q):
        return [
            GenerationRequest(
                prompts.unit_tests_prompt(q["question"], cfg.prompts, _tokenizer_of(model())),
                params=cfg.tests_sampling.params(stop=prompts.TESTS_STOP, seed=request_seed(cfg.seed, "t", q["id"])),
            )
        ]

    def record(q, done):
        return {"id": q["id"], "tests": prompts.parse_tests(done[0].text), "raw": done[0].text}

    return _generate_items(run, "tests", questions, model, chunk, make, record)


def stage_solutions(
    run: RunDir, cfg: InstructDataConfig, questions: list[dict], tests: dict[str, list[str]], model, chunk: int
) -> list[dict]:
    def make(q):
        prompt = prompts.solution_prompt(q["question"], tests[q["id"]][0], _tokenizer_of(model()))
        return [
            GenerationRequest(
                prompt,
                params=cfg.solution_sampling.params(
                    stop=prompts.SOLUTION_STOP, seed=request_seed(cfg.seed, "s", q["id"], k)
                ),
            )
            for k in range(cfg.solutions_per_question)
        ]

    def record(q, done):
        return {
            "id": q["id"],
            "solutions": [prompts.parse_solution(d.text) for d in done],
            "raw": [d.text for d in done],
        }

    return _generate_items(run, "solutions", questions, model, chunk, make, record)


def stage_execute(
    run: RunDir,
    cfg: InstructDataConfig,
    solutions: list[dict],
    tests: dict[str, list[str]],
    executor: Executor,
    batch: int = 2048,
) -> list[dict]:
    """Every parsed solution against its question's tests, in the sandbox.

    Programs go to the pool in large batches (a hung program only holds its own worker), and a
    question is journaled as soon as its last program is back.
    """
    finished = {r["id"]: r for r in run.resume("execute")}
    todo = [s for s in solutions if s["id"] not in finished]
    total = sum(1 for s in solutions for c in s["solutions"] if c)
    done_before = total - sum(1 for s in todo for c in s["solutions"] if c)

    def finish(qid: str, results: list) -> None:
        rec = {"id": qid, "results": results}
        run.log("execute", rec)
        finished[qid] = rec

    with tqdm(total=total, initial=done_before, desc="sandbox", unit="prog") as bar:
        for part in _batches_of_programs(todo, batch):
            jobs = [
                (s["id"], k, prompts.checked_program(c, tests[s["id"]]))
                for s in part
                for k, c in enumerate(s["solutions"])
                if c
            ]
            results: dict[str, list] = {s["id"]: [None] * len(s["solutions"]) for s in part}
            pending = {s["id"]: sum(1 for c in s["solutions"] if c) for s in part}
            for qid, n in pending.items():
                if n == 0:
                    finish(qid, results[qid])

            def on_result(i: int, res: ExecResult) -> None:
                qid, k, _ = jobs[i]
                results[qid][k] = {
                    "passed": bool(res.passed),
                    "status": res.kind,
                    "duration": round(float(res.duration), 3),
                }
                bar.update(1)
                pending[qid] -= 1
                if pending[qid] == 0:
                    finish(qid, results[qid])

            executor.run([p for _, _, p in jobs], timeout=cfg.timeout, on_result=on_result)
    return [finished[s["id"]] for s in solutions]


def _batches_of_programs(items: list[dict], size: int) -> Iterator[list[dict]]:
    part, n = [], 0
    for it in items:
        part.append(it)
        n += sum(1 for c in it["solutions"] if c)
        if n >= size:
            yield part
            part, n = [], 0
    if part:
        yield part


def answer_text(solution: str) -> str:
    """The assistant turn: the solution as a Python code block."""
    return f"```python\n{solution.rstrip()}\n```"


def stage_dataset(
    cfg: InstructDataConfig,
    questions: list[dict],
    tests: dict[str, list[str]],
    solutions: dict[str, list],
    executions: dict[str, list],
) -> list[dict]:
    """One chat example per question with a passing solution: the first that passed, in sample order."""
    rows = []
    for q in questions:
        results = executions.get(q["id"]) or []
        first = next((k for k, r in enumerate(results) if r and r["passed"]), None)
        if first is None:
            continue
        solution = solutions[q["id"]][first]
        messages = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
        messages += [
            {"role": "user", "content": q["question"]},
            {"role": "assistant", "content": answer_text(solution)},
        ]
        rows.append(
            {
                "id": q["id"],
                "messages": messages,
                "question": q["question"],
                "tests": tests[q["id"]],
                "solution": solution,
                "solution_index": first,
            }
        )
    return rows


# -- the pipeline --------------------------------------------------------------------------------------
def run_pipeline(
    out: str | os.PathLike,
    cfg: InstructDataConfig,
    *,
    question_model: GeneratorSource,
    solver_model: GeneratorSource,
    executor: Executor,
    chunk_size: int = 64,
    stop_after: str | None = None,
    models: dict[str, str] | None = None,
) -> Path:
    """Run (or resume) every stage into `out`; returns the dataset path (or `out` if stopped early).

    `models`: role -> model directory or endpoint URL, fingerprinted so that a rerun with another
    (or retrained) model is refused instead of mixing its output with the first model's.
    """
    cfg.validate()
    if stop_after is not None and stop_after not in STAGES:
        raise ValueError(f"unknown stage {stop_after!r}; choose one of: {', '.join(STAGES)}")
    run = RunDir(out, cfg, models)
    with run.claim:
        return _run_stages(run, cfg, question_model, solver_model, executor, chunk_size, stop_after)


def _run_stages(
    run: RunDir,
    cfg: InstructDataConfig,
    question_model: GeneratorSource,
    solver_model: GeneratorSource,
    executor: Executor,
    chunk_size: int,
    stop_after: str | None,
) -> Path:
    qmodel, smodel = _Lazy(question_model), _Lazy(solver_model)

    def step(stage: str, work: Callable[[], list[dict]]) -> list[dict]:
        if run.done(stage):
            log.info("stage %s: already done, skipped", stage)
            return run.read(stage)
        records = work()
        run.finish(stage, records)
        return records

    stages = STAGES if stop_after is None else STAGES[: STAGES.index(stop_after) + 1]
    questions = step("questions", lambda: stage_questions(run, cfg, qmodel, chunk_size))
    if "dedup" not in stages:
        return run.path

    def dedup():
        kept, removed = stage_dedup(questions, cfg)
        atomic_write_text(run.path / "duplicates.jsonl", "".join(json.dumps(r) + "\n" for r in removed))
        return kept

    unique = step("dedup", dedup)
    if "tests" not in stages:
        return run.path
    tests_rows = step("tests", lambda: stage_tests(run, cfg, unique, smodel, chunk_size))
    tests = {r["id"]: r["tests"] for r in tests_rows}
    with_tests = [q for q in unique if tests[q["id"]]]
    if "solutions" not in stages:
        return run.path
    sol_rows = step("solutions", lambda: stage_solutions(run, cfg, with_tests, tests, smodel, chunk_size))
    if "execute" not in stages:
        return run.path
    exec_rows = step("execute", lambda: stage_execute(run, cfg, sol_rows, tests, executor))
    if "dataset" not in stages:
        return run.path
    step(
        "dataset",
        lambda: stage_dataset(
            cfg,
            with_tests,
            tests,
            {r["id"]: r["solutions"] for r in sol_rows},
            {r["id"]: r["results"] for r in exec_rows},
        ),
    )
    from codellama.instruct.summary import summarize, write_summary

    write_summary(run.path, summarize(run.path))
    return run.file("dataset")
