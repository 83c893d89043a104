"""The self-instruct pipeline end to end (scripted in-process models, the real sandbox): what is kept, resume."""

import json
import time

import numpy as np
import pytest
from _instruct_helpers import PASSING, QUESTIONS, SCRIPT, Script, ScriptedGenerator

from codellama.instruct import InstructDataConfig, run_pipeline
from codellama.io import read_jsonl

CFG = InstructDataConfig(
    questions=len(QUESTIONS), solutions_per_question=3, timeout=1.0, system_prompt="Answer with Python code."
)


@pytest.fixture(scope="module")
def sandbox():
    from evals.sandbox import SandboxConfig, SandboxPool

    with SandboxPool(SandboxConfig(workers=2)) as pool:
        yield pool


@pytest.fixture(scope="module")
def finished_run(sandbox, tmp_path_factory):
    out = tmp_path_factory.mktemp("instruct") / "run"
    script = Script()
    start = time.monotonic()
    dataset = run_pipeline(
        out,
        CFG,
        question_model=ScriptedGenerator(script),
        solver_model=ScriptedGenerator(script),
        executor=sandbox,
        chunk_size=6,
    )
    return out, dataset, time.monotonic() - start, script


def test_dataset_holds_exactly_the_questions_whose_solution_passed(finished_run):
    out, dataset, elapsed, _ = finished_run
    rows = read_jsonl(dataset)
    assert [r["question"] for r in rows] == [SCRIPT[name][0] for name in PASSING]
    for row, (name, first_pass) in zip(rows, PASSING.items()):
        question, tests, solutions = SCRIPT[name]
        assert row["solution"] == solutions[first_pass] and row["solution_index"] == first_pass
        assert row["tests"] == tests
        assert row["messages"] == [
            {"role": "system", "content": "Answer with Python code."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": f"```python\n{solutions[first_pass].rstrip()}\n```"},
        ]
    # The hostile solutions were run and filtered out, without stalling the run.
    results = {r["id"]: r["results"] for r in read_jsonl(out / "execute.jsonl")}
    statuses = [x["status"] for r in results.values() for x in r]
    assert statuses.count("timeout") == 6  # count_vowels loops, factorial forks forever: 3 samples each
    assert elapsed < 60


def test_summary_counts_every_stage(finished_run):
    out, *_ = finished_run
    summary = json.loads((out / "summary.json").read_text())
    counts = {s["stage"]: s["count"] for s in summary["stages"]}
    assert counts == {
        "questions generated": 9,
        "kept after dedup": 7,
        "with tests": 6,
        "with a parsed solution": 6,
        "with a passing solution": 3,
    }
    assert summary["stages"][1]["rate"] == pytest.approx(7 / 9)
    assert summary["execution"]["programs"] == 18 and summary["execution"]["passed"] == 7
    assert summary["dataset_examples"] == 3
    assert (out / "summary.png").stat().st_size > 1000
    dups = read_jsonl(out / "duplicates.jsonl")
    assert [(d["question"], d["kind"]) for d in dups] == [(QUESTIONS[1], "exact"), (QUESTIONS[2], "near")]


def test_stop_after_a_stage_then_rerun_redoes_nothing(sandbox, tmp_path):
    script = Script()
    question_model = ScriptedGenerator(script)
    run_pipeline(
        tmp_path / "run",
        CFG,
        question_model=question_model,
        solver_model=ScriptedGenerator(script),
        executor=sandbox,
        stop_after="tests",
    )
    assert script.calls["questions"] == 1 and script.calls["tests"] == 7 and script.calls["solution"] == 0
    assert not (tmp_path / "run" / "solutions.jsonl").exists()

    def no_model():
        raise AssertionError("a finished stage's model was loaded again")

    dataset = run_pipeline(
        tmp_path / "run", CFG, question_model=no_model, solver_model=ScriptedGenerator(script), executor=sandbox
    )
    assert script.calls["questions"] == 1 and script.calls["tests"] == 7 and script.calls["solution"] == 18
    assert [r["question"] for r in read_jsonl(dataset)] == [SCRIPT[name][0] for name in PASSING]


def test_interrupted_stage_resumes_at_the_first_unfinished_item(sandbox, tmp_path):
    script = Script()
    out = tmp_path / "run"
    # chunks of 6 requests = 2 questions of 3 solutions; the solver dies after the tests and the first chunk
    solver = ScriptedGenerator(script, fail_after=3)  # tests: 2 chunks (6 + 1 questions), solutions: 1 chunk
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(
            out, CFG, question_model=ScriptedGenerator(script), solver_model=solver, executor=sandbox, chunk_size=6
        )
    assert script.calls["solution"] == 6
    assert len(read_jsonl(out / "solutions.partial.jsonl")) == 2
    dataset = run_pipeline(
        out,
        CFG,
        question_model=ScriptedGenerator(script),
        solver_model=ScriptedGenerator(script),
        executor=sandbox,
        chunk_size=6,
    )
    assert script.calls["questions"] == 1 and script.calls["tests"] == 7
    assert script.calls["solution"] == 18  # 6 before the interruption + the 12 that were missing
    assert not (out / "solutions.partial.jsonl").exists()
    assert [r["question"] for r in read_jsonl(dataset)] == [SCRIPT[name][0] for name in PASSING]


class CountingSandbox:
    """The real pool, counting programs; `interrupt_after` raises KeyboardInterrupt after that many results."""

    def __init__(self, pool, interrupt_after=None):
        self.pool, self.interrupt_after, self.programs, self.results = pool, interrupt_after, 0, 0

    def run(self, programs, *, timeout=None, on_result=None):
        self.programs += len(programs)

        def counted(i, result):
            on_result(i, result)
            self.results += 1
            if self.results == self.interrupt_after:
                raise KeyboardInterrupt("interrupted in the sandbox stage")

        return self.pool.run(programs, timeout=timeout, on_result=counted)


def test_interrupted_sandbox_stage_reruns_only_unfinished_questions(sandbox, tmp_path):
    script, out = Script(), tmp_path / "run"
    models = dict(question_model=ScriptedGenerator(script), solver_model=ScriptedGenerator(script))
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(out, CFG, executor=CountingSandbox(sandbox, interrupt_after=7), **models)
    journaled = read_jsonl(out / "execute.partial.jsonl")
    assert 1 <= len(journaled) < 6
    again = CountingSandbox(sandbox)
    dataset = run_pipeline(out, CFG, executor=again, **models)
    assert again.programs == 18 - 3 * len(journaled)  # every question has 3 parsed solutions
    assert [r["question"] for r in read_jsonl(dataset)] == [SCRIPT[name][0] for name in PASSING]


def test_rerun_with_other_settings_is_refused(sandbox, tmp_path):
    script = Script()
    run_pipeline(
        tmp_path / "run",
        CFG,
        question_model=ScriptedGenerator(script),
        solver_model=ScriptedGenerator(script),
        executor=sandbox,
        stop_after="questions",
    )
    from dataclasses import replace

    with pytest.raises(FileExistsError, match="solutions_per_question: 3 -> 5"):
        run_pipeline(
            tmp_path / "run",
            replace(CFG, solutions_per_question=5),
            question_model=ScriptedGenerator(script),
            solver_model=ScriptedGenerator(script),
            executor=sandbox,
        )
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an instruct-data run"):
        run_pipeline(
            tmp_path / "other",
            CFG,
            question_model=ScriptedGenerator(script),
            solver_model=ScriptedGenerator(script),
            executor=sandbox,
        )


def test_instruct_branch_trains_on_the_dataset_with_loss_only_on_answers(
    finished_run, tiny_model_dir, tiny_tokenizer, stdlib_texts, tmp_path
):
    """`train instruct` (tiny) on the dataset plus a code rehearsal set: the loss counts answers and rehearsal code."""
    import torch
    import yaml
    from _train_helpers import write_code_shards

    from codellama.checkpoint import load_model
    from codellama.cli import main
    from codellama.data.shards import TokenShards
    from codellama.tokenizer import load_tokenizer
    from codellama.train.data import open_stream

    _, dataset, _, _ = finished_run
    out = tmp_path / "train"
    code = write_code_shards(tiny_tokenizer, stdlib_texts[:10], tmp_path / "code", seq_len=256, max_sequences=16)
    rehearsal = [{"path": str(code), "weight": 0.25}]  # the recipe's 0.08, raised so step 1 surely has some
    assert (
        main(
            [
                "train",
                "instruct",
                "--scale",
                "tiny",
                "--base",
                str(tiny_model_dir),
                "--data",
                str(dataset),
                "--rehearsal",
                f"{code}:0.25",
                "--out",
                str(out),
                "--set",
                "max_steps=2",
                "--set",
                "precision=fp32",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (out / "final" / "config.json").is_file()

    # What the loss counts: exactly the answers (and the </s> that ends each), never a question.
    tok = load_tokenizer(tiny_model_dir)
    packed = yaml.safe_load((out / "config.yaml").read_text())["data"]  # where the chat JSONL was packed
    shards = TokenShards(packed)
    spans = []
    for i in range(len(shards)):
        current = []
        for t, m in zip(shards[i].tolist(), shards.loss_mask(i).tolist()):
            if m:
                current.append(t)
            elif current:
                spans.append(current)
                current = []
    rows = read_jsonl(dataset)
    assert len(spans) == len(rows)
    for span, row in zip(spans, rows):
        assert span[-1] == tok.eos_id
        assert tok.decode(span[:-1]).strip() == row["messages"][-1]["content"]

    # The first step's loss is the base model's mean cross-entropy over the answer tokens (and the
    # rehearsal code) of its batch.
    stream = open_stream(packed, rehearsal, seq_len=256, seed=0)
    sources = [stream.locate(k)[0] for k in range(8)]  # tiny: 2048 tokens per step = 8 sequences of 256
    assert 0 in sources and 1 in sources
    batch = [stream.sample(k) for k in range(8)]
    tokens = torch.tensor(np.stack([t for t, _ in batch]).astype("int64"))
    labels = tokens.clone()
    labels[torch.tensor(np.stack([m for _, m in batch])) == 0] = -100
    labels[:, 0] = -100
    with torch.no_grad():
        logits = load_model(tiny_model_dir)(input_ids=tokens).logits
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()).item()
    first = read_jsonl(out / "metrics.jsonl")[0]
    assert first["step"] == 1 and first["loss"] == pytest.approx(expected, rel=1e-4)
