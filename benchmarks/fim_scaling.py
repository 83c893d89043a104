"""At which token budget does infilling appear? The main job's FIM recipe at several budgets (issue 16).

    nice -n 19 python benchmarks/fim_scaling.py --run runs/fim-scaling --checkpoint-every 25   # hours (below)
    python benchmarks/fim_scaling.py --run runs/fim-scaling --budgets 100k,500k,1M,3M,6M
    python benchmarks/fim_scaling.py --run runs/s --config tiny --budgets 1k,2k --limit 3   # smoke run

What it runs (nothing re-implemented; the pipeline's own pieces):
1. the `codellama pipeline` stages tokenizer, base and data of `--config` (default smollm2, with any
   `--set` overrides) into RUN: SmolLM2's tokenizer with the four FIM tokens, the base with them added,
   and the row-sized FIM shards of the stdlib (the stage also makes its Python and long-context shards;
   the no-FIM control's are not made: not needed here);
2. ONE training run (RUN/train) of that config's `branches.code` recipe from the base, with one change:
   the learning rate is constant after its warm-up (`schedule.min_lr_ratio=1.0`). The data order is a
   function of the step alone, so the weights at step N ARE the recipe's run of N steps, and one run
   gives every budget. The run stops at each budget (`max_steps`, rounded up to whole steps; the exact
   token counts are reported), exports its weights as a model directory RUN/budget-<tokens>/model (the
   loop's own export) and resumes from that checkpoint for the next budget. A cosine decay would make
   each budget a different schedule, which is why the study does not use one;
3. at budget 0 (the base with the FIM tokens added) and every budget: HumanEval-infilling single-line,
   greedy pass@1 in PSM, SPM and prefix-only (left-to-right) mode and the NLL per token of the true
   middle under PSM / SPM / prefix-only (`evals.infilling.run_benchmark` with `nll`), with 95% bootstrap
   intervals over problems, and the paired PSM - prefix gaps; `--code-loss` adds the held-out code loss.

Writes RUN/scaling.json, RUN/scaling.md (the table, also printed) and RUN/scaling.png (pass@1 and middle
NLL per mode against training tokens). With three or more trained budgets it also fits the PSM - prefix-only
gap as a line in log10(tokens) and says where that line reaches 0, with an interval from resampling the
problems (`psm_gap_trend`): where infilling would appear if the trend held, an extrapolation that says where
to train next, not a measurement. Killed at any point, the same command continues: training from
its last checkpoint, evaluation from its last finished sample; a budget whose scores.json matches the
evaluation settings is not scored again. Budgets may be added later (a larger budget continues the run).
Cost on a quiet 2-core CPU: training to 3M tokens ~100 min (520 tokens/s measured for this recipe), plus
the data stage (minutes) and scoring five models; disk ~7 GB (two 1.6 GB training checkpoints with the
optimizer, 0.5 GB per budget's model directory, the base and the shards).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from codellama.commands.args import add_set_option  # noqa: E402
from codellama.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_jsonl  # noqa: E402

log = logging.getLogger("fim_scaling")

DEFAULT_BUDGETS = "250k,750k,1.5M,3M"
MODES = ("psm", "spm", "prefix")
# pass@1 also with PSM / SPM answers cut to the hole's lines, as the prefix-only baseline's are (no generation)
# (evals.infilling.SCORED_MODES, spelled here because this script imports evals, and torch, only when it runs)
PASS_MODES = (*MODES, "psm-lines", "spm-lines")
BENCHMARK = "single-line"
STUDY_FILE = "study.json"
SCORES_FILE = "scores.json"
TRAIN_DIR = "train"
# The study's one change to the recipe: a constant learning rate after warm-up (see the docstring).
CONSTANT_LR = "schedule.min_lr_ratio=1.0"
PREPARE_STAGES = ("tokenizer", "base", "data")
_UNITS = {"": 1, "k": 1_000, "m": 1_000_000}


@dataclass(frozen=True)
class Budget:
    requested: int  # tokens asked for (0: the base)
    steps: int  # optimizer steps: ceil(requested / tokens per step), as the recipe rounds total_tokens
    tokens: int  # steps x tokens per step: what was trained on (row tokens, padding included)

    @property
    def name(self) -> str:
        return f"budget-{self.tokens}"


@dataclass(frozen=True)
class Settings:
    run: Path
    config: str = "smollm2"
    overrides: tuple[str, ...] = ()
    budgets: tuple[int, ...] = ()
    limit: int | None = 150
    pick: str = "spread"  # which `limit` problems: spread over the benchmark or the first (evals.infilling)
    max_new_tokens: int | None = None  # None: the config's eval.infilling.max_new_tokens
    code_loss: bool = False
    checkpoint_every: int | None = None  # None: the recipe's
    report_only: bool = False  # only render the budgets scored so far (nothing is trained or scored)


# -- budgets -----------------------------------------------------------------------------------
def parse_budgets(text: str) -> list[int]:
    """'250k,750k,1.5M,3M' -> token counts; positive and strictly increasing."""
    budgets = []
    for part in text.split(","):
        item = part.strip()
        match = re.fullmatch(r"(\d+(?:\.\d*)?)([kKmM]?)", item)
        if not match:
            raise ValueError(f"--budgets: {item!r} is not a token count (e.g. 250k, 1.5M, 3000000)")
        tokens = round(float(match[1]) * _UNITS[match[2].lower()])
        if tokens <= 0:
            raise ValueError(f"--budgets: {item!r} is not positive (the base, 0 tokens, is always scored)")
        budgets.append(tokens)
    if any(b <= a for a, b in zip(budgets, budgets[1:])):
        raise ValueError(f"--budgets must be strictly increasing, got {text!r}")
    return budgets


def plan_budgets(budgets: list[int], tokens_per_step: int) -> list[Budget]:
    """Each budget in whole steps (rounded up); two budgets on the same step are an error."""
    plan = []
    for tokens in budgets:
        steps = math.ceil(tokens / tokens_per_step)
        if plan and steps == plan[-1].steps:
            raise ValueError(
                f"--budgets {plan[-1].requested} and {tokens} are the same {steps} step(s) of "
                f"{tokens_per_step} tokens: space them further apart"
            )
        plan.append(Budget(tokens, steps, steps * tokens_per_step))
    return plan


# -- the recipe --------------------------------------------------------------------------------
def recipe_overrides(cfg) -> list[str]:
    """The config's code recipe (as `train-code` runs it) with the constant learning rate after warm-up."""
    return [*cfg.branches.get("code", []), CONSTANT_LR]


def train_overrides(cfg, settings: Settings, steps: int) -> list[str]:
    """The recipe, stopped at `steps` (and checkpointed as asked: that changes no weight)."""
    extra = [f"checkpoint_every={settings.checkpoint_every}"] if settings.checkpoint_every else []
    return [*recipe_overrides(cfg), *extra, f"max_steps={steps}"]


def code_recipe(cfg):
    from codellama.train.config import resolve_config

    return resolve_config("code", cfg.scale, recipe_overrides(cfg))


def eval_settings(cfg, settings: Settings) -> dict:
    """What a budget's scores depend on besides its weights: scores made otherwise are redone."""
    from evals.infilling import JOINT

    return {
        "benchmark": BENCHMARK,
        "modes": list(PASS_MODES),
        "limit": settings.limit,
        "pick": settings.pick,
        "max_new_tokens": settings.max_new_tokens or cfg.eval.infilling.max_new_tokens,
        "dtype": cfg.eval.dtype,
        "seed": cfg.seed,
        "prefix_nll": JOINT,  # prefix-only NLL on jointly tokenized text: scores from before are redone
        "code_loss": settings.code_loss,
    }


def study_record(cfg) -> dict:
    """What the trained weights depend on: the data, tokenizer and base settings and the code recipe.
    (Evaluation settings are not in it: a budget scored otherwise is simply scored again.)"""
    raw = cfg.to_dict()
    return {
        "config": {k: raw[k] for k in ("seed", "scale", "tokenizer", "base", "data")},
        "recipe_overrides": recipe_overrides(cfg),
    }


def check_study(run: Path, record: dict) -> None:
    """A run directory holds one training run: its data, base and recipe must match to continue it
    (budgets may change: each is a prefix of the same run)."""
    from family.config import with_new_settings

    path = run / STUDY_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        old["config"] = with_new_settings(old.get("config", {}), record.get("config", {}))
        if old != record:
            changed = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
            config = record.get("config", {})
            changed += sorted(k for k in config if old.get("config", {}).get(k) != config[k])
            raise ValueError(
                f"{path}: this run directory was started with other data, base or recipe "
                f"(differs in: {', '.join(changed)}); use a new --run directory"
            )
    else:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, record)


# -- the steps ---------------------------------------------------------------------------------
def prepare(cfg, run: Path) -> dict:
    """The pipeline's own tokenizer, base and data stages into RUN (each skipped once finished)."""
    from family.runner import RunContext, run_stages
    from family.stages import build_stages

    stages = [s for s in build_stages(cfg) if s.name in PREPARE_STAGES]
    return run_stages(stages, RunContext(run, cfg))


def latest_step(train_dir: Path) -> int:
    from codellama.train.loop import CHECKPOINTS
    from codellama.train.state import list_checkpoints

    found = list_checkpoints(train_dir / CHECKPOINTS)
    return found[-1][0] if found else 0


def train_to(cfg, settings: Settings, outputs: dict, budget: Budget, target: Path) -> None:
    """Continue the one training run to `budget.steps` and move its exported weights to `target`."""
    from codellama.train.loop import CONFIG_FILE, FINAL, train_branch

    train_dir = settings.run / TRAIN_DIR
    done = latest_step(train_dir)
    if done > budget.steps:
        raise ValueError(
            f"{train_dir} is already at step {done}, past budget {budget.requested} ({budget.steps} steps) whose "
            f"weights were never exported; budgets below {done} steps need a new --run directory"
        )
    log.info("training to %s tokens (step %d of the run; at step %d now)", f"{budget.tokens:,}", budget.steps, done)
    result = train_branch(
        "code",
        data=outputs["data"]["code"]["path"],
        base=outputs["base"]["path"],
        out=str(train_dir),
        scale=cfg.scale,
        overrides=train_overrides(cfg, settings, budget.steps),
        resume=(train_dir / CONFIG_FILE).is_file(),
        tokenizer=outputs["tokenizer"]["path"],
        seed=cfg.seed,
    )
    if result.steps != budget.steps:  # the run config on disk says otherwise: never score the wrong weights
        raise ValueError(f"{train_dir} trained to {result.steps} steps, not {budget.steps}")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(train_dir / FINAL, target)  # one rename: the budget's model directory exists whole or not at all


def train_loss(train_dir: Path, steps: int) -> float | None:
    """Mean training loss over the last tenth of the steps up to `steps` (one step's batch is too noisy)."""
    from codellama.train.metrics import METRICS_FILE

    if steps == 0:
        return None
    first = steps - max(1, steps // 10)
    losses = [r["loss"] for r in read_jsonl(train_dir / METRICS_FILE) if first < r.get("step", 0) <= steps]
    return round(sum(losses) / len(losses), 6) if losses else None


def _interval(value: float | None, bounds) -> dict:
    low, high = bounds if bounds else (value, value)
    return {"value": value, "low": low, "high": high}


def infilling_dir(out: Path, pick: str) -> Path:
    """A budget's infilling run directory; each pick in its own, so the first-N samples of studies from before
    "spread" stay readable."""
    return out / ("infilling" if pick == "first" else "infilling-spread")


def score(cfg, settings: Settings, outputs: dict, budget: Budget, model_dir: Path, out: Path) -> dict:
    """Infilling pass@1 and middle NLL (and optionally held-out code loss) of one model, resumable."""
    from evals.infilling import BenchmarkConfig, run_benchmark
    from family.stages import eval_dtype, eval_generator, held_out_code_loss

    wanted = eval_settings(cfg, settings)
    config = BenchmarkConfig(
        benchmark=BENCHMARK,
        modes=PASS_MODES,
        limit=settings.limit,
        pick=settings.pick,
        max_new_tokens=wanted["max_new_tokens"],
        seed=cfg.seed,
        ks=(1,),
        model=str(model_dir),
        nll=True,
    )
    generator = eval_generator(cfg, model_dir)
    report = run_benchmark(config, infilling_dir(out, settings.pick), generator)
    del generator
    nll = report["nll"]
    row = {
        "budget": budget.requested,
        "tokens": budget.tokens,
        "steps": budget.steps,
        "model": str(model_dir),
        "problems": report["problems"],
        "pass@1": {
            m: _interval(report["modes"][m]["pass@k"].get("pass@1"), report["modes"][m]["pass@1_interval"])
            for m in PASS_MODES
        },
        "nll": {
            m: {
                "value": nll["modes"][m]["mean"],
                "low": nll["modes"][m]["low"],
                "high": nll["modes"][m]["high"],
                "tokens": nll["modes"][m]["tokens"],
            }
            for m in MODES
        },
        # per-problem paired gaps: below 0 (NLL) / above 0 (pass@1) with the interval = the suffix is used
        "paired": {"pass@1": report.get("pass@1_paired", {}), "nll": nll.get("paired", {})},
        "failures": {m: report["modes"][m]["failure_kinds"] for m in PASS_MODES},
        "unsandboxed": any(report["modes"][m].get("warnings") for m in PASS_MODES),
        "train_loss": train_loss(settings.run / TRAIN_DIR, budget.steps),
        "eval": wanted,
    }
    if settings.code_loss:
        heldout = outputs["data"]["documents"]["files"]["heldout"]
        loss = held_out_code_loss(out / "code-loss", str(model_dir), heldout, cfg.eval.code_loss, eval_dtype(cfg))
        row["code_loss"] = {**loss["nll"], "tokens": loss["tokens"], "files": loss["files"]}
    atomic_write_json(out / SCORES_FILE, row)
    return row


def scored(out: Path, wanted: dict) -> dict | None:
    """A budget's scores when they were made with these evaluation settings."""
    path = out / SCORES_FILE
    if path.is_file():
        row = json.loads(path.read_text())
        if row.get("eval") == wanted:
            return row
    return None


def run_study(settings: Settings) -> dict:
    """Prepare, train through every budget, score each; returns scaling.json's content (also written)."""
    from family.config import load_config

    cfg = load_config(settings.config, list(settings.overrides))
    cfg.controls.no_fim = False  # the data stage then skips the no-FIM control's shards: not scored here
    cfg.data.sample_factor = None  # one run trains through every budget: prepare the whole corpus
    recipe = code_recipe(cfg)  # a bad recipe override is an error before anything is written
    plan = plan_budgets(list(settings.budgets), recipe.tokens_per_step)
    if settings.code_loss and not cfg.data.heldout_fraction:
        raise ValueError("--code-loss needs held-out files: the config's data.heldout_fraction is 0")
    run = settings.run
    if run.exists() and not run.is_dir():
        raise ValueError(f"--run {run} exists and is not a directory")
    if settings.report_only and not (run / STUDY_FILE).is_file():
        raise ValueError(f"--report-only: {run} holds no study yet (run it without --report-only first)")
    check_study(run, study_record(cfg))
    outputs = prepare(cfg, run)
    wanted = eval_settings(cfg, settings)
    rows = []
    for i, budget in enumerate([Budget(0, 0, 0), *plan]):
        out = run / budget.name
        row = scored(out, wanted)
        if row is not None:
            log.info("budget %s tokens: scores found in %s, skipped", f"{budget.tokens:,}", out / SCORES_FILE)
        elif settings.report_only:
            log.info("budget %s tokens: not scored yet", f"{budget.tokens:,}")
            continue
        else:
            model_dir = Path(outputs["base"]["path"]) if budget.steps == 0 else out / "model"
            if not (model_dir / "config.json").is_file():
                train_to(cfg, settings, outputs, budget, model_dir)
            log.info("scoring budget %d/%d: %s tokens (%s)", i, len(plan), f"{budget.tokens:,}", model_dir)
            row = score(cfg, settings, outputs, budget, model_dir, out)
        rows.append(row)
    study = {
        "config": cfg.source,
        "recipe": {
            "branch": "code",
            "seq_len": recipe.seq_len,
            "tokens_per_step": recipe.tokens_per_step,
            "lr": recipe.optim.lr,
            "warmup_steps": recipe.schedule.warmup_steps,
            "min_lr_ratio": recipe.schedule.min_lr_ratio,
            "fim_rate": cfg.data.fim_rate,
            "spm_rate": cfg.data.spm_rate,
            "span_mode": cfg.data.span_mode,
            "fim_unit": cfg.data.fim_unit,
            "fim_unit_tokens": cfg.data.fim_unit_tokens,
            "base": cfg.base.model,
            "padding_fraction": _padding_fraction(outputs["data"]["code"]["path"]),
        },
        "benchmark": BENCHMARK,
        "modes": list(MODES),
        "pass_modes": list(PASS_MODES),
        "eval": wanted,
        "rows": rows,
        "budgets_planned": 1 + len(plan),
        "trend": study_trend(settings, rows),
    }
    if not rows:
        raise ValueError(f"--report-only: no budget of {run} is scored yet")
    atomic_write_json(run / "scaling.json", study)
    atomic_write_text(run / "scaling.md", render_markdown(study))
    atomic_write_bytes(run / "scaling.png", render_png(study))
    return study


def budget_evidence(infilling_dir: Path, task_ids: list[str]) -> dict:
    """One budget's per-problem middle NLL (PSM, prefix-only: summed nats and tokens) and how many PSM / SPM
    answers the model ended itself (`<EOT>`): what the trend across budgets is fitted on."""
    from evals.infilling import SAMPLES_FILE, nll_by_problem

    nll = {mode: nll_by_problem(infilling_dir, mode, task_ids) for mode in ("psm", "prefix")}
    ended = {"psm": 0, "spm": 0}
    wanted = set(task_ids)
    for r in read_jsonl(infilling_dir / SAMPLES_FILE):
        if r["mode"] in ended and r["task_id"] in wanted and r.get("sample", 0) == 0:
            ended[r["mode"]] += r.get("finish_reason") == "stop"
    shared = [t for t in task_ids if t in nll["psm"] and t in nll["prefix"]]
    return {
        "task_ids": shared,
        "psm": [nll["psm"][t][0] * nll["psm"][t][1] for t in shared],  # summed nats of the middle
        "prefix": [nll["prefix"][t][0] * nll["prefix"][t][1] for t in shared],
        "tokens": [nll["psm"][t][1] for t in shared],
        "ended_by_eot": ended,
    }


def psm_gap_trend(budgets: list[tuple[int, dict]], resamples: int = 2000, seed: int = 0) -> dict | None:
    """The PSM - prefix-only middle NLL gap (token-weighted, nats/token) fitted as a line in log10(tokens)
    over the trained budgets, and where that line reaches 0: an extrapolation of when PSM starts to use
    the suffix, with a 95% interval from resampling the problems (the same draw at every budget).

    `budgets`: (tokens, budget_evidence(...)) for each trained budget. None with fewer than three budgets
    or no problem scored at all of them. A resample whose line does not fall (slope >= 0) never crosses:
    when more than 2.5% of them do not, the interval's upper end is None ("not within the trend")."""
    import numpy as np

    budgets = sorted((t, e) for t, e in budgets if t > 0)
    if len(budgets) < 3:
        return None
    shared = set(budgets[0][1]["task_ids"]).intersection(*(set(e["task_ids"]) for _, e in budgets[1:]))
    ids = sorted(shared)
    if not ids:
        return None
    x = np.log10([t for t, _ in budgets])
    diffs, weights = [], []  # (budgets, problems): summed PSM - prefix nats, and middle tokens
    for _, e in budgets:
        at = {t: i for i, t in enumerate(e["task_ids"])}
        rows = [at[t] for t in ids]
        diffs.append([e["psm"][i] - e["prefix"][i] for i in rows])
        weights.append([e["tokens"][i] for i in rows])
    diffs, weights = np.asarray(diffs, dtype=float), np.asarray(weights, dtype=float)

    def fit(sample: np.ndarray) -> tuple[float, float, np.ndarray]:
        gaps = diffs[:, sample].sum(axis=1) / weights[:, sample].sum(axis=1)
        slope, intercept = np.polyfit(x, gaps, 1)
        return float(slope), float(intercept), gaps

    slope, intercept, gaps = fit(np.arange(len(ids)))
    rng = np.random.default_rng(seed)
    slopes, crossings = [], []
    for _ in range(resamples):
        s, c, _ = fit(rng.integers(0, len(ids), len(ids)))
        slopes.append(s)
        crossings.append(10 ** (-c / s) if s < 0 else math.inf)
    low, high = np.percentile(slopes, [2.5, 97.5])
    c_low, c_high = np.percentile(crossings, [2.5, 97.5], method="inverted_cdf")  # inf: no interpolation

    def tokens(value: float) -> int | None:
        return None if not math.isfinite(value) or value > 1e15 else int(round(value))

    return {
        "budgets": [t for t, _ in budgets],
        "gaps": [round(float(g), 6) for g in gaps],
        "problems": len(ids),
        "slope_per_decade": {"value": round(slope, 6), "low": round(float(low), 6), "high": round(float(high), 6)},
        "crossing_tokens": {
            "value": tokens(10 ** (-intercept / slope)) if slope < 0 else None,
            "low": tokens(float(c_low)),
            "high": tokens(float(c_high)),
        },
        "ended_by_eot": {str(t): e["ended_by_eot"] for t, e in budgets},
    }


def study_trend(settings: Settings, rows: list[dict]) -> dict | None:
    """psm_gap_trend over the scored budgets of a study, from their infilling run directories."""
    from evals.infilling import data_path, load_problems

    ids = [p.task_id for p in load_problems(data_path(BENCHMARK), settings.limit, settings.pick)]
    evidence = []
    for row in rows:
        directory = infilling_dir(settings.run / Budget(row["budget"], row["steps"], row["tokens"]).name, settings.pick)
        if row["tokens"] > 0 and (directory / "nll.jsonl").is_file():
            evidence.append((row["tokens"], budget_evidence(directory, ids)))
    return psm_gap_trend(evidence)


def _padding_fraction(shards: str) -> float | None:
    """Share of the code shards' row tokens that are padding (row-sized FIM units are padded, not cut)."""
    index = json.loads((Path(shards) / "index.json").read_text())
    stats = (index.get("meta") or {}).get("stats") or {}
    total = stats.get("sequences", 0) * index["seq_len"]
    return round(stats["padding_tokens"] / total, 4) if total and "padding_tokens" in stats else None


# -- the outputs -------------------------------------------------------------------------------
def _pct(entry: dict) -> str:
    if entry["value"] is None:
        return "-"
    return f"{100 * entry['value']:.1f}% [{100 * entry['low']:.1f}, {100 * entry['high']:.1f}]"


def _nats(entry: dict | None) -> str:
    if not entry:
        return "-"
    return f"{entry.get('value', entry.get('mean')):.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def _partial_note(study: dict) -> list[str]:
    planned, done = study.get("budgets_planned"), len(study["rows"])
    if planned is None or done >= planned:
        return []
    return ["", f"**Partial: {done} of the {planned} budgets (the base included) are scored so far.**"]


def _label(mode: str) -> str:
    """PSM, SPM, prefix, "PSM, cut" (psm-lines: the answer cut to the hole's lines), ..."""
    if mode == "prefix":
        return mode
    return mode.removesuffix("-lines").upper() + (", cut" if mode.endswith("-lines") else "")


def _tokens(value: int | None) -> str:
    if value is None:
        return "never"  # the (resampled) line does not fall
    if value >= 1e9:
        return f"{value / 1e9:,.1f}B"
    return f"{value / 1e6:,.1f}M" if value >= 1e6 else f"{value:,}"


def _trend_lines(trend: dict | None) -> list[str]:
    if not trend:
        return []
    slope, cross = trend["slope_per_decade"], trend["crossing_tokens"]
    ended = "; ".join(f"{int(t):,}: {e['psm']} / {e['spm']}" for t, e in trend["ended_by_eot"].items())
    where = (
        f"the line reaches 0 (PSM as good as prefix-only) at {_tokens(cross['value'])} tokens "
        f"[{_tokens(cross['low'])}, {_tokens(cross['high'])}]"
        + (" (never: more than 2.5% of the resampled lines do not fall)" if cross["high"] is None else "")
        if cross["value"] is not None
        else "the fitted line does not fall, so it predicts no budget where PSM catches up"
        if slope["value"] >= 0
        else "the fitted line falls too slowly to reach 0 within 10^15 tokens"
    )
    return [
        "",
        f"**Trend** ({trend['problems']} problems scored at all {len(trend['budgets'])} trained budgets): the "
        f"PSM - prefix-only gap, fitted as a line in log10(tokens), moves {slope['value']:+.3f} nats per 10x "
        f"tokens [{slope['low']:+.3f}, {slope['high']:+.3f}]; {where}. Past the largest budget this is an "
        "extrapolation, not a measurement: it says where to look, and a study should train there before "
        "claiming it. 95% intervals from resampling the problems (the same draw at every budget).",
        "",
        f"Answers the model ended itself (`<EOT>`), PSM / SPM of each budget's problems: {ended}.",
    ]


def render_markdown(study: dict) -> str:
    pass_modes = study.get("pass_modes", study["modes"])
    r = study["recipe"]
    pad = f" ({100 * r['padding_fraction']:.1f}% of them padding)" if r.get("padding_fraction") is not None else ""
    unit = r["fim_unit"] if not r.get("fim_unit_tokens") else f"chunk of at most {r['fim_unit_tokens']} tokens"
    lines = [
        f"FIM scaling study: the `code` recipe of config `{study['config']}` (base `{r['base']}`, rows of "
        f"{r['seq_len']:,} tokens, {r['tokens_per_step']:,} tokens a step, peak lr {r['lr']:g} after "
        f"{r['warmup_steps']} warm-up steps; FIM rate {r['fim_rate']}, SPM {r['spm_rate']}, {r['span_mode']} spans "
        f"per {unit}). One training run with the learning rate constant after warm-up "
        f"(schedule.min_lr_ratio={r['min_lr_ratio']:g}, the study's only change to the recipe), so the weights at "
        f"a budget's step ARE that budget's run of the recipe. Tokens = steps x tokens a step{pad}.",
        *_partial_note(study),
        "",
        f"HumanEval-infilling {study['benchmark']}, greedy pass@1 and NLL per token of the true middle (nats) "
        "under PSM / SPM / prefix-only (left-to-right), 95% bootstrap intervals over problems; the NLL gap "
        "columns are the paired per-problem gaps PSM - prefix and SPM - prefix (below 0 with the interval: the "
        "suffix is used). PSM / SPM pass@1 takes each answer as the model ended it (`<EOT>` or the token limit); "
        '"cut": the same answer cut to the hole\'s lines, as the prefix-only answer always is.',
        "",
        "| tokens | steps | " + " | ".join(f"pass@1 {_label(m)}" for m in pass_modes) + " | NLL PSM | NLL SPM | "
        "NLL prefix | NLL PSM - prefix | NLL SPM - prefix | n |",
        "|---:|---:|" + "---|" * (len(pass_modes) + 5) + "---:|",
    ]
    for row in study["rows"]:
        tokens = "0 (base)" if row["tokens"] == 0 else f"{row['tokens']:,}"
        cells = [tokens, str(row["steps"])]
        cells += [_pct(row["pass@1"][m]) if m in row["pass@1"] else "-" for m in pass_modes]
        cells += [_nats(row["nll"][m]) for m in study["modes"]]
        cells += [_nats(row["paired"]["nll"].get(f"{m}-prefix")) for m in ("psm", "spm")] + [str(row["problems"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _trend_lines(study.get("trend"))
    if any("code_loss" in row for row in study["rows"]):
        lines += ["", "| tokens | held-out code loss (nats/token) |", "|---:|---|"]
        lines += [f"| {row['tokens']:,} | {_nats(row.get('code_loss'))} |" for row in study["rows"]]
    return "\n".join(lines) + "\n"


def render_png(study: dict) -> bytes:
    """Two panels against training tokens (log x): pass@1 per mode and middle NLL per mode; the base dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from evals.report import figure_png

    rows = study["rows"]
    trained = [r for r in rows if r["tokens"] > 0]
    base = next((r for r in rows if r["tokens"] == 0), None)
    colors = {"psm": "tab:blue", "spm": "tab:orange", "prefix": "tab:gray"}
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.5))
    panels = (("pass@1", 100.0, "greedy pass@1 (%)"), ("nll", 1.0, "NLL of the true middle (nats/token)"))
    pass_modes = [m for m in study.get("pass_modes", study["modes"]) if all(m in r["pass@1"] for r in rows)]
    for ax, (key, scale, ylabel) in zip(axes[:2], panels):
        for j, mode in enumerate(pass_modes if key == "pass@1" else study["modes"]):
            style = {"linestyle": ":", "marker": "s"} if mode.endswith("-lines") else {"marker": "o"}
            color = colors[mode.removesuffix("-lines")]
            xs = [r["tokens"] * (1 + 0.03 * (j - 1)) for r in trained]  # side by side: the bars stay apart
            ys = [scale * (r[key][mode]["value"] or 0.0) for r in trained]
            lo = [y - scale * r[key][mode]["low"] for y, r in zip(ys, trained)]
            hi = [scale * r[key][mode]["high"] - y for y, r in zip(ys, trained)]
            ax.errorbar(xs, ys, yerr=[lo, hi], capsize=3, color=color, label=_label(mode), **style)
            if base is not None and not mode.endswith("-lines"):
                ax.axhline(scale * (base[key][mode]["value"] or 0.0), color=color, linestyle="--", lw=1)
        if trained:
            ax.set_xscale("log")
        if key == "pass@1":
            ax.set_ylim(0, max(5.0, ax.get_ylim()[1]))
        ax.set_xlabel("training tokens (log); dashed: the base")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    n = rows[0]["problems"] if rows else 0
    axes[0].set_title(f"HumanEval-infilling {study['benchmark']}: {n} problems, 95% intervals")
    axes[1].set_title("middle NLL: below prefix-only = the suffix is used")
    _plot_trend(axes[2], trained, study.get("trend"))
    return figure_png(fig, unsandboxed=any(r.get("unsandboxed") for r in rows))


def _plot_trend(ax, trained: list[dict], trend: dict | None) -> None:
    """The PSM - prefix-only gap per budget (its paired interval) and the fitted line, out to where it meets 0."""
    import numpy as np

    gaps = [(r["tokens"], r["paired"]["nll"].get("psm-prefix")) for r in trained]
    gaps = [(t, g) for t, g in gaps if g]
    if gaps:
        ys = [g["mean"] for _, g in gaps]
        yerr = [[y - g["low"] for y, (_, g) in zip(ys, gaps)], [g["high"] - y for y, (_, g) in zip(ys, gaps)]]
        ax.errorbar([t for t, _ in gaps], ys, yerr=yerr, capsize=3, marker="o", color="tab:blue", label="measured")
        ax.set_xscale("log")
    if trend:
        slope, cross = trend["slope_per_decade"]["value"], trend["crossing_tokens"]["value"]
        first, last = min(trend["budgets"]), max(trend["budgets"])
        end = min(cross, 100 * last) if cross else 10 * last  # a line followed past 100x is no guide
        xs = np.logspace(math.log10(first), math.log10(end), 50)
        fitted = np.polyval(np.polyfit(np.log10(trend["budgets"]), trend["gaps"], 1), np.log10(xs))
        ax.plot(xs, fitted, linestyle="--", color="tab:red", label=f"fit: {slope:+.2f} nats per 10x")
        if cross and cross <= 100 * last:
            ax.axvline(cross, color="tab:red", lw=1, alpha=0.5)
    ax.axhline(0.0, color="black", lw=1)
    ax.set_xlabel("training tokens (log); dashed: extrapolation")
    ax.set_ylabel("PSM - prefix-only middle NLL (nats/token)")
    ax.set_title("where PSM would catch up with prefix-only")
    ax.grid(True, alpha=0.3)
    ax.legend()


# -- command line ------------------------------------------------------------------------------
EXAMPLES = """examples:
  nice -n 19 python benchmarks/fim_scaling.py --run runs/fim-scaling
  python benchmarks/fim_scaling.py --run runs/fim-scaling --budgets 100k,500k,1M,3M,6M --code-loss
  python benchmarks/fim_scaling.py --run runs/s --config tiny --budgets 1k,2k --limit 3 --max-new-tokens 8 \\
      --set 'branches.code=[seq_len=128,batch_tokens=512,micro_batch_size=2]'

Interrupted, the same command continues where it stopped; add --report-only for the table and plot of the
budgets scored so far (while it runs, or after it stopped)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fim_scaling.py",
        description="The main job's FIM recipe at several token budgets: infilling pass@1 and middle NLL per budget.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", type=Path, default=Path("runs/fim-scaling"), help="run directory (resumable)")
    p.add_argument("--config", default="smollm2", help="pipeline config: a built-in name or a YAML file")
    add_set_option(p, "data.span_mode=syntax")
    p.add_argument(
        "--budgets",
        default=DEFAULT_BUDGETS,
        help=f"training tokens, increasing (k, M suffixes; default {DEFAULT_BUDGETS})",
    )
    p.add_argument(
        "--limit", type=int, default=150, help="N single-line problems, spread over the benchmark (default 150)"
    )
    p.add_argument("--pick", choices=("spread", "first"), default="spread", help="which N: spread or the first N")
    p.add_argument("--max-new-tokens", type=int, help="per infill (default: the config's eval.infilling value)")
    p.add_argument("--code-loss", action="store_true", help="also the held-out code loss of every budget")
    p.add_argument("--checkpoint-every", type=int, help="training checkpoint interval in steps (default: the recipe's)")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="write the table and plot of the budgets scored so far, training and scoring nothing "
        "(while a study runs, or after it was stopped)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    from codellama.cli import is_user_error

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        if args.max_new_tokens is not None and args.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
        if args.checkpoint_every is not None and args.checkpoint_every < 1:
            raise ValueError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
        settings = Settings(
            run=args.run,
            config=args.config,
            overrides=tuple(args.overrides),
            budgets=tuple(parse_budgets(args.budgets)),
            limit=args.limit,
            pick=args.pick,
            max_new_tokens=args.max_new_tokens,
            code_loss=args.code_loss,
            checkpoint_every=args.checkpoint_every,
            report_only=args.report_only,
        )
        study = run_study(settings)
    except KeyboardInterrupt:
        print("fim_scaling: interrupted (the same command continues)", file=sys.stderr)
        return 130
    except Exception as exc:
        if not is_user_error(exc) or os.environ.get("CODELLAMA_DEBUG"):
            raise
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"fim_scaling: error: {' '.join(str(text).split())}", file=sys.stderr)
        return 2
    print(render_markdown(study), end="")
    print(f"\n{args.run / 'scaling.json'}\n{args.run / 'scaling.md'}\n{args.run / 'scaling.png'}")
    return 0


__all__ = ["Budget", "Settings", "main", "parse_budgets", "plan_budgets", "run_study"]

if __name__ == "__main__":
    sys.exit(main())
