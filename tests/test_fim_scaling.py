"""benchmarks/fim_scaling.py: the FIM recipe at several budgets from one constant-LR run, scored and resumable."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from _bench_helpers import load_benchmark

REPO = Path(__file__).resolve().parents[1]
fim_scaling = load_benchmark("fim_scaling")

# One warm-up step, so steps 2..4 are past it: a cosine schedule would differ between a 2- and a 4-step run.
CODE = "branches.code=[seq_len=128,batch_tokens=512,micro_batch_size=2,checkpoint_every=1,schedule.warmup_steps=1]"


def _args(run: Path, src: Path) -> list[str]:
    return [
        "--run",
        str(run),
        "--config",
        "tiny",
        "--budgets",
        "1k,2k",  # 2 and 4 steps of 512 tokens (1,024 and 2,048 tokens)
        "--limit",
        "3",
        "--max-new-tokens",
        "8",
        "--set",
        f"data.sources=[{src}]",
        "--set",
        "tokenizer.vocab_size=1016",
        "--set",
        CODE,
    ]


def test_budgets_parse_with_units_and_round_up_to_whole_steps():
    assert fim_scaling.parse_budgets("250k, 750k,1.5M,3M") == [250_000, 750_000, 1_500_000, 3_000_000]
    assert fim_scaling.parse_budgets("4096") == [4096]
    plan = fim_scaling.plan_budgets([250_000, 3_000_000], 4096)
    assert [(b.steps, b.tokens) for b in plan] == [(62, 253_952), (733, 3_002_368)]  # never below the request
    assert plan[-1].name == "budget-3002368"
    with pytest.raises(ValueError, match="same 1 step"):
        fim_scaling.plan_budgets([1000, 1200], 4096)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--budgets", "0,abc"], "'0' is not positive"),
        (["--budgets", "1k,abc"], "'abc' is not a token count"),
        (["--budgets", "2k,1k"], "strictly increasing"),
        (["--limit", "0"], "--limit must be >= 1"),
        (["--config", "tiny", "--code-loss"], "--code-loss needs held-out files"),
        (["--config", "tiny", "--set", "branches.code=[optim.lr=-1]"], "optim.lr must be positive"),
    ],
)
def test_bad_input_is_a_one_line_error_before_any_write(tmp_path, capsys, args, says):
    run = tmp_path / "run"
    assert fim_scaling.main(["--run", str(run), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and err.startswith("fim_scaling: error:") and len(err.splitlines()) == 1
    assert not run.exists()


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory, stdlib_texts) -> Path:
    src = tmp_path_factory.mktemp("fim-scaling-src")
    for i, text in enumerate(stdlib_texts[:60]):
        (src / f"m{i:03d}.py").write_text(text)
    return src


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


@pytest.mark.slow  # a tokenizer, shards, 4 training steps and 3 scored models: ~25 s
def test_study_end_to_end_then_resumes_without_training(tmp_path, source_dir, capsys):
    run = tmp_path / "run"
    assert fim_scaling.main(_args(run, source_dir)) == 0
    printed = capsys.readouterr().out
    study = json.loads((run / "scaling.json").read_text())
    rows = study["rows"]
    assert [(r["tokens"], r["steps"]) for r in rows] == [(0, 0), (1024, 2), (2048, 4)]
    assert study["recipe"]["min_lr_ratio"] == 1.0 and study["recipe"]["tokens_per_step"] == 512
    for row in rows:
        assert row["problems"] == 3
        for mode in ("psm", "spm", "prefix"):
            p, nll = row["pass@1"][mode], row["nll"][mode]
            assert 0.0 <= p["low"] <= p["value"] <= p["high"] <= 1.0, (row["tokens"], mode)
            assert 0.0 < nll["low"] <= nll["value"] <= nll["high"] and nll["tokens"] > 0, (row["tokens"], mode)
        gap = row["paired"]["nll"]["psm-prefix"]
        assert gap["low"] <= gap["mean"] <= gap["high"]
    assert rows[0]["model"] == str(run / "base") and rows[0]["train_loss"] is None
    assert all(r["train_loss"] > 0 for r in rows[1:])
    # training moved the model: the middle is better predicted after 4 steps than by the base
    assert rows[2]["nll"]["prefix"]["value"] < rows[0]["nll"]["prefix"]["value"]
    table = (run / "scaling.md").read_text()
    assert "| 0 (base) | 0 |" in table and "| 2,048 | 4 |" in table and table in printed
    assert "min_lr_ratio=1" in table
    assert (run / "scaling.png").read_bytes()[:4] == b"\x89PNG"

    # The weights at 4 steps ARE a 4-step run of the recipe: the run stopped at 2 steps and resumed equals
    # one uninterrupted run (constant learning rate after warm-up; the data order depends on the step only).
    from codellama.train.loop import train_branch

    state = json.loads((run / "state.json").read_text())["finished"]
    straight = train_branch(
        "code",
        data=state["data"]["outputs"]["code"]["path"],
        base=str(run / "base"),
        out=str(tmp_path / "straight"),
        scale="tiny",
        overrides=[*CODE.split("=", 1)[1].strip("[]").split(","), "schedule.min_lr_ratio=1.0", "max_steps=4"],
        tokenizer=str(run / "tokenizer"),
        seed=0,
        progress=False,
    )
    ours, theirs = _weights(run / "budget-2048" / "model"), _weights(straight.final_dir)
    assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)

    # Rerunning the same command trains and scores nothing, and writes the same study.
    metrics = (run / "train" / "metrics.jsonl").read_text()
    summary_mtime = (run / "train" / "summary.json").stat().st_mtime_ns
    assert fim_scaling.main(_args(run, source_dir)) == 0
    assert json.loads((run / "scaling.json").read_text()) == study
    assert (run / "train" / "summary.json").stat().st_mtime_ns == summary_mtime
    assert (run / "train" / "metrics.jsonl").read_text() == metrics

    # Killed after training to a budget but before its scores: the weights come back from the checkpoint
    # (no step is trained again) and the scores are the same.
    before = _weights(run / "budget-2048" / "model")
    shutil.rmtree(run / "budget-2048" / "model")
    (run / "budget-2048" / "scores.json").unlink()
    # Meanwhile --report-only shows the budgets scored so far, says the table is partial, and does nothing else.
    capsys.readouterr()
    assert fim_scaling.main([*_args(run, source_dir), "--report-only"]) == 0
    partial = json.loads((run / "scaling.json").read_text())
    assert [r["tokens"] for r in partial["rows"]] == [0, 1024] and partial["budgets_planned"] == 3
    assert "Partial: 2 of the 3 budgets" in capsys.readouterr().out
    assert not (run / "budget-2048" / "model").exists() and not (run / "budget-2048" / "scores.json").exists()
    assert fim_scaling.main(["--run", str(tmp_path / "none"), "--config", "tiny", "--report-only"]) == 2
    assert fim_scaling.main(_args(run, source_dir)) == 0
    after = _weights(run / "budget-2048" / "model")
    assert all((before[k] == after[k]).all() for k in before)
    assert (run / "train" / "metrics.jsonl").read_text() == metrics
    assert json.loads((run / "scaling.json").read_text()) == study

    # Other evaluation settings rescore every budget (here from the samples already made), training nothing.
    fewer = _args(run, source_dir)
    fewer[fewer.index("--limit") + 1] = "2"
    assert fim_scaling.main(fewer) == 0
    rescored = json.loads((run / "scaling.json").read_text())
    assert [r["problems"] for r in rescored["rows"]] == [2, 2, 2] and rescored["eval"]["limit"] == 2
    assert (run / "train" / "metrics.jsonl").read_text() == metrics

    # Another recipe in the same run directory is refused (one line, exit 2) instead of mixing runs.
    other = _args(run, source_dir)
    other[other.index(CODE)] = CODE.replace("warmup_steps=1", "warmup_steps=2")
    capsys.readouterr()
    assert fim_scaling.main(other) == 2
    err = capsys.readouterr().err.strip()
    assert "other data, base or recipe" in err and "study.json" in err and len(err.splitlines()) == 1


def test_a_study_started_before_a_new_setting_continues_while_it_keeps_its_default(tmp_path):
    from family.config import load_config

    record = fim_scaling.study_record(load_config("smollm2", ["data.fim_unit_tokens=null"]))
    older = json.loads(json.dumps(record))
    del older["config"]["data"]["fim_unit_tokens"]  # a study.json written before the setting existed
    (tmp_path / fim_scaling.STUDY_FILE).write_text(json.dumps(older))
    fim_scaling.check_study(tmp_path, record)  # continues
    changed = fim_scaling.study_record(load_config("smollm2"))  # today's default: 256-token FIM units
    with pytest.raises(ValueError, match="differs in: config, data"):
        fim_scaling.check_study(tmp_path, changed)


def _write_budget(directory: Path, gaps: dict[str, float], ended: set[str]) -> None:
    """An infilling run directory: each problem's middle is 4 tokens, prefix-only 1 nat/token, PSM 1 + gap."""
    from codellama.io import append_jsonl

    directory.mkdir(parents=True)
    for task, gap in gaps.items():
        append_jsonl(directory / "nll.jsonl", {"task_id": task, "mode": "psm", "tokens": 4, "nll": 4 * (1 + gap)})
        append_jsonl(
            directory / "nll.jsonl", {"task_id": task, "mode": "prefix", "tokens": 4, "nll": 4.0, "split": "joint"}
        )
        for mode in ("psm", "spm"):
            reason = "stop" if f"{task}/{mode}" in ended else "length"
            append_jsonl(
                directory / "samples.jsonl",
                {"task_id": task, "mode": mode, "sample": 0, "completion": "x", "finish_reason": reason},
            )


def test_the_psm_gap_trend_says_where_psm_would_catch_up(tmp_path):
    # The gap falls 0.25 nats per 10x tokens from 1.0 at 100k: it reaches 0 at 10^9 tokens.
    tasks = [f"T/{i}" for i in range(6)]
    evidence = []
    for tokens in (100_000, 1_000_000, 10_000_000):
        gap = 1.0 - 0.25 * math.log10(tokens / 100_000)
        spread = {t: gap + (0.1 if i % 2 else -0.1) for i, t in enumerate(tasks)}  # mean `gap` per budget
        _write_budget(tmp_path / str(tokens), spread, ended={"T/0/psm"} if tokens > 100_000 else set())
        evidence.append((tokens, fim_scaling.budget_evidence(tmp_path / str(tokens), [*tasks, "T/absent"])))
    trend = fim_scaling.psm_gap_trend(evidence, resamples=200)
    assert trend["problems"] == 6 and trend["budgets"] == [100_000, 1_000_000, 10_000_000]
    assert trend["gaps"] == pytest.approx([1.0, 0.75, 0.5])
    slope = trend["slope_per_decade"]
    assert slope["value"] == pytest.approx(-0.25) and slope["low"] <= slope["value"] <= slope["high"] < 0
    cross = trend["crossing_tokens"]
    assert cross["value"] == pytest.approx(1e9, rel=1e-6) and cross["low"] <= cross["value"] <= cross["high"]
    assert trend["ended_by_eot"]["1000000"] == {"psm": 1, "spm": 0}
    text = "\n".join(fim_scaling._trend_lines(trend))
    assert "-0.250 nats per 10x" in text and "at 1.0B tokens" in text

    # A gap that grows has no crossing; two budgets are too few for a trend.
    rising = [(t, {**e, "psm": [x + 4 * 0.5 * i for x in e["psm"]]}) for i, (t, e) in enumerate(evidence)]
    trend = fim_scaling.psm_gap_trend(rising, resamples=200)
    assert trend["slope_per_decade"]["value"] > 0 and trend["crossing_tokens"] == {
        "value": None,
        "low": None,
        "high": None,
    }
    assert "predicts no budget" in "\n".join(fim_scaling._trend_lines(trend))
    assert fim_scaling.psm_gap_trend(evidence[:2]) is None
