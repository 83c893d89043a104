"""HumanEval infilling (Bavarian et al., 2022): generate the hole, run the tests in the evals sandbox.

A run directory is resumable like a HumanEval run: every generated sample is appended to
samples.jsonl and every executed one to results.jsonl as soon as it is done, so a rerun
with the same settings skips finished work. Each problem is scored in PSM and/or SPM
(Code Llama's two infilling prompt orders) and/or `prefix`: the left-to-right baseline that
sees only the code before the hole (what infilling must beat to show it uses the suffix).
pass@k uses evals' unbiased estimator, with a bootstrap interval over problems for pass@1.

With `nll` the run also scores the true middle's negative log-likelihood per token under PSM,
SPM and prefix-only prompts (nll.jsonl, resumable too): the continuous sign that a model uses
the suffix long before its pass@1 moves.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from codellama import rundir
from codellama.generation import GenerationRequest, SamplingParams
from codellama.io import append_jsonl, atomic_write_bytes, atomic_write_json, read_jsonl
from evals.execution import after_prompt, build_infilling_program, result_record
from evals.intervals import bootstrap_mean, compare
from evals.nll import target_nll
from evals.report import figure_png, summarize
from evals.sandbox import SandboxConfig, SandboxPool
from infilling.inference import InfillTask, infill

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).with_name("data")
BENCHMARKS = {
    "single-line": "HumanEval-SingleLineInfilling.jsonl.gz",
    "multi-line": "HumanEval-MultiLineInfilling.jsonl.gz",
    "random-span": "HumanEval-RandomSpanInfilling.jsonl.gz",
    "random-span-light": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
}
MODES = ("psm", "spm")
PREFIX = "prefix"  # the left-to-right baseline: the code before the hole only, no infilling markers
NLL_MODES = (*MODES, PREFIX)
# PSM / SPM answers cut to the hole's lines, as the prefix-only baseline's are (`cut_prefix_completion`):
# judged like the baseline, a model that writes the right line and then goes on instead of ending the middle
# passes. Made from the mode's own samples (no generation of their own).
LINES = {f"{mode}-lines": mode for mode in MODES}
SCORED_MODES = (*NLL_MODES, *LINES)  # every mode a model's answers are scored in
CANONICAL = "canonical"  # pseudo-mode: score the reference middles (validates data + sandbox)
NLL_FILE = "nll.jsonl"
SAMPLES_FILE = "samples.jsonl"
JOINT = "joint"  # prefix-only records scored on jointly tokenized text (earlier runs split prefix and middle)


@dataclass(frozen=True)
class InfillingProblem:
    task_id: str
    prompt: str  # code before the hole
    suffix: str  # code after it
    canonical_solution: str
    test: str
    entry_point: str


@dataclass(frozen=True)
class BenchmarkConfig:
    benchmark: str = "single-line"
    modes: tuple[str, ...] = MODES
    samples: int = 1  # per problem and mode
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 0.95
    seed: int = 0
    syntax_truncate: bool = False
    limit: int | None = None  # N problems only, chosen by `pick`
    pick: str = "spread"  # which N: "spread" evenly over the file, or the "first" N (see load_problems)
    ks: tuple[int, ...] = (1, 10, 100)
    model: str = ""  # what generated the samples (recorded, checked on resume)
    timeout: float = 3.0  # seconds per program in the sandbox
    nll: bool = False  # also score the true middle's NLL under PSM, SPM and prefix-only (local model only)

    def __post_init__(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {self.benchmark!r} (choose from {', '.join(BENCHMARKS)})")
        check_modes(self.modes, "modes", also=(CANONICAL,))
        if self.samples < 1:
            raise ValueError("samples must be >= 1")
        check_pick(self.pick)
        if self.samples > 1 and self.temperature == 0 and CANONICAL not in self.modes:
            raise ValueError("several samples per problem need sampling: set a temperature > 0")


def check_modes(modes: Sequence[str], what: str, *, also: Sequence[str] = ()) -> None:
    """ValueError naming `what` unless `modes` are scored modes (or `also`), and each -lines mode's own is there."""
    bad = [m for m in modes if m not in (*SCORED_MODES, *also)]
    if bad or not modes:
        raise ValueError(f"{what} must be among {', '.join(SCORED_MODES)} (got {', '.join(modes) or 'none'})")
    orphans = [m for m in modes if m in LINES and LINES[m] not in modes]
    if orphans:
        raise ValueError(
            f"{what}: {', '.join(orphans)} cut the answers of {', '.join(LINES[m] for m in orphans)}: add it"
        )


def data_path(benchmark: str) -> Path:
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r} (choose from {', '.join(BENCHMARKS)})")
    return DATA_DIR / BENCHMARKS[benchmark]


PICKS = ("spread", "first")


def check_pick(pick: str) -> None:
    """ValueError unless `pick` is one of PICKS (a config and `load_problems` both take one)."""
    if pick not in PICKS:
        raise ValueError(f"pick must be one of {', '.join(PICKS)}, got {pick!r}")


def load_problems(path: str | os.PathLike, limit: int | None = None, pick: str = "spread") -> list[InfillingProblem]:
    """Rows of a HumanEval-infilling .jsonl(.gz) file in file order: all, or `limit` of them.

    The files list each function's holes together (the first 150 single-line problems are 28 of the 164
    functions; the first 20 multi-line ones, one), so a sample of the first N measures a few functions and a
    bootstrap over its problems understates the interval. "spread" takes N spread evenly over the file
    (`spread_sample`), which reaches most functions; "first" keeps the first N (quick checks, older runs)."""
    check_pick(pick)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    problems = []
    fields = [f.name for f in dataclasses.fields(InfillingProblem)]
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                missing = [k for k in fields if not isinstance(row.get(k), str)]
                if missing:
                    raise ValueError(f"{path}:{n}: missing {', '.join(missing)}")
                problems.append(InfillingProblem(**{k: row[k] for k in fields}))
                if pick == "first" and limit is not None and len(problems) >= limit:
                    break
    except (OSError, EOFError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a HumanEval-infilling JSONL file ({exc})") from None
    if not problems:
        raise ValueError(f"{path}: no problems")
    return spread_sample(problems, limit) if pick == "spread" else problems


def spread_sample(items: Sequence, n: int | None) -> list:
    """`n` of `items`, in their order, at the first positions of the van der Corput sequence (0, 1/2, 1/4,
    3/4, 1/8, ...) scaled to the list: evenly spread for any n, and the n picked are among the n + 1 picked, so
    a run continued with a larger limit keeps what it has scored. All when n is None or not smaller."""
    if n is None or n >= len(items):
        return list(items)
    picked: set[int] = set()
    i = 0
    while len(picked) < n:  # the positions k / 2^m cover every index once 2^m >= len(items)
        picked.add((int(format(i, "b")[::-1], 2) * len(items)) >> i.bit_length())  # i's bits reversed: 0 -> 0
        i += 1
    return [items[k] for k in sorted(picked)]


def build_program(problem: InfillingProblem, completion: str) -> str:

    return build_infilling_program(problem.prompt, completion, problem.suffix, problem.test, problem.entry_point)


def prefix_prompt_ids(tokenizer, prefix: str) -> list[int]:
    """The prefix-only prompt: BOS (when the base has one) and the code before the hole, no FIM markers.

    Plain `encode` (not a chat rendering): text that spells a special token stays text, as in training.
    """
    return tokenizer.encode(prefix, bos=True)


def cut_prefix_completion(completion: str, middle: str) -> str:
    """A left-to-right completion cut to the hole's extent in lines, so it is judged like an infill.

    A prefix-only model does not know where the hole ends, so it is given the true middle's number
    of lines (the usual post-processing of a left-to-right baseline in the infilling literature):
    a hole of whole lines (the single- and multi-line benchmarks) keeps that many whole lines and
    always ends with a newline, as the hole does; a hole that ends inside a line (random-span)
    keeps as many line breaks as the middle has, and the rest of the line after the last.
    Single-line is the one-line case: the first line. The rule knows the answer's length, which
    favours the baseline, so infilling beating it is a conservative result.
    """
    lines = completion.split("\n")
    breaks = middle.count("\n")
    if middle.endswith("\n"):
        return "".join(line + "\n" for line in lines[:breaks])
    return "\n".join(lines[: breaks + 1])


def _prefix_records(generator, part, params: SamplingParams) -> list[dict]:
    """Generate the prefix-only baseline for (problem, sample) pairs and cut each completion to its hole.

    The model is asked the prefix without its trailing whitespace and the newline it writes back is the
    prefix's own (`after_prompt`, as for HumanEval's raw prompts): a hole of whole lines starts right after a
    newline, where a byte-level BPE model never saw a prompt end. A one-line hole after a line that does not
    end in whitespace stops at the first newline; otherwise the text is cut after the hole's lines."""
    tokenizer = getattr(generator, "tokenizer", None)  # a local model; an endpoint gets the plain text
    requests = []
    for p, _ in part:
        prompt = p.prompt.rstrip()
        first_line_only = p.canonical_solution.count("\n") == (1 if p.canonical_solution.endswith("\n") else 0)
        stop_at_newline = first_line_only and "\n" not in p.prompt[len(prompt) :]
        requests.append(
            GenerationRequest(
                prompt,
                params=dataclasses.replace(params, stop=("\n",)) if stop_at_newline else params,
                prompt_ids=tuple(prefix_prompt_ids(tokenizer, prompt)) if tokenizer is not None else None,
            )
        )
    records = []
    for (p, _), done in zip(part, generator.generate(requests)):
        cut = cut_prefix_completion(after_prompt(p.prompt, done.text), p.canonical_solution)
        records.append(
            {
                "completion": cut,
                "finish_reason": done.finish_reason,
                "truncated": cut != done.text,
                "completion_tokens": len(done.token_ids),
                "uncut": done.text,
            }
        )
    return records


def _key(record: dict) -> tuple[str, str, int]:
    return record["mode"], record["task_id"], record["sample"]


# A rerun may score more problems, other k, a longer timeout, or add the NLL scores.
RESUMABLE_CHANGES = ("limit", "ks", "timeout", "nll")
# Records are keyed by mode, so a rerun may also add (or drop) modes: allowed with a warning.
ALLOWED_CHANGES = ("settings.modes",)


def run_fingerprint(config: BenchmarkConfig, data: str | os.PathLike | None = None) -> dict:
    """What a rerun must share to continue: the settings, the problems and the model itself (not its path)."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in RESUMABLE_CHANGES}
    if config.limit is None:
        settings.pop("pick")  # all problems either way: a run of them all continues under either pick
    fingerprint = rundir.source_fingerprint(config.model) if config.model not in ("", CANONICAL) else {}
    if "model" in fingerprint:
        settings.pop("model")
    if data is not None:
        fingerprint["problems_sha256"] = rundir.file_sha256(data)
    return {**fingerprint, "settings": settings}


def generate_samples(
    generator, problems: Sequence[InfillingProblem], config: BenchmarkConfig, out_dir: Path, *, chunk: int = 256
) -> int:
    """Generate every missing (mode, problem, sample) and append it to samples.jsonl; returns how many.

    `chunk` requests go to the generator at once: its batch refills from them as rows end, so only the
    last rows of a chunk run in a part-empty batch; a killed run loses at most one chunk's samples."""
    from tqdm.auto import tqdm

    path = out_dir / SAMPLES_FILE
    done = {_key(r) for r in read_jsonl(path)}
    todo = [
        (mode, p, s)
        for mode in config.modes
        for p in problems
        for s in range(config.samples)
        if (mode, p.task_id, s) not in done
    ]
    if not todo:
        return 0
    with tqdm(total=len(todo), desc="generating", unit="sample") as bar:
        for mode in sorted(config.modes, key=lambda m: m in LINES):  # a mode's own answers before their cut
            if mode in LINES:
                made = _cut_records(path, mode, [(p, s) for m, p, s in todo if m == mode])
                bar.update(made)
                continue
            for sample in range(config.samples):
                # Sample s of every problem has its own seed (as HumanEval runs do): a seeded request is
                # deterministic, so one seed for all samples would make k samples one sample k times.
                params = SamplingParams(
                    max_new_tokens=config.max_new_tokens,
                    temperature=config.temperature,
                    top_p=config.top_p,
                    seed=config.seed * 1_000_003 + sample,
                )
                rows = [(p, s) for m, p, s in todo if m == mode and s == sample]
                for start in range(0, len(rows), chunk):
                    part = rows[start : start + chunk]
                    for (p, s), rec in zip(part, _generate_part(generator, mode, part, params, config)):
                        append_jsonl(path, {"task_id": p.task_id, "mode": mode, "sample": s, **rec})
                    bar.update(len(part))
    return len(todo)


def _cut_records(path: Path, mode: str, pairs) -> int:
    """Append `mode`'s records (a LINES mode): its base mode's answers cut to each hole's lines."""
    answers = {(r["task_id"], r["sample"]): r for r in read_jsonl(path) if r["mode"] == LINES[mode]}
    for p, s in pairs:
        answer = answers[(p.task_id, s)]
        cut = cut_prefix_completion(answer["completion"], p.canonical_solution)
        record = {"task_id": p.task_id, "mode": mode, "sample": s, "completion": cut}
        append_jsonl(
            path, {**record, "finish_reason": answer["finish_reason"], "truncated": cut != answer["completion"]}
        )
    return len(pairs)


def _generate_part(generator, mode: str, part, params: SamplingParams, config: BenchmarkConfig) -> list[dict]:
    """The sample records of (problem, sample) pairs in one mode."""
    if mode == CANONICAL:
        return [{"completion": p.canonical_solution, "finish_reason": "stop", "truncated": False} for p, _ in part]
    if mode == PREFIX:
        return _prefix_records(generator, part, params)
    results = infill(
        generator,
        [InfillTask(p.prompt, p.suffix) for p, _ in part],
        params,
        suffix_first=mode == "spm",
        syntax_truncate=config.syntax_truncate,
    )
    return [
        {
            "completion": r.middle,
            "finish_reason": r.finish_reason,
            "truncated": r.truncated,
            "completion_tokens": r.completion_tokens,
        }
        for r in results
    ]


def execute_samples(
    problems: Sequence[InfillingProblem], out_dir: Path, *, timeout: float = 3.0, workers: int | None = None
) -> tuple[int, float]:
    """Run every generated but not yet executed sample in the sandbox; returns (count, seconds)."""

    by_id = {p.task_id: p for p in problems}
    executed = {_key(r) for r in read_jsonl(out_dir / "results.jsonl")}
    todo = [r for r in read_jsonl(out_dir / SAMPLES_FILE) if _key(r) not in executed and r["task_id"] in by_id]
    if not todo:
        return 0, 0.0
    programs = [build_program(by_id[r["task_id"]], r["completion"]) for r in todo]
    results_path = out_dir / "results.jsonl"
    start = time.perf_counter()
    with SandboxPool(SandboxConfig(timeout=timeout, workers=workers)) as pool:
        pool.run(
            programs,
            on_result=lambda i, res: append_jsonl(results_path, result_record(todo[i], res)),
            progress="executing",
        )
    return len(todo), time.perf_counter() - start


# -- the NLL of the true middle ----------------------------------------------------------------


def middle_nll_rows(
    tokenizer, problem: InfillingProblem, modes: Sequence[str] = NLL_MODES
) -> dict[str, tuple[list[int], list[int]]]:
    """(context, target) ids per NLL mode.

    PSM/SPM: the infilling prompt generation uses, then the middle as FIM training data encodes a middle
    (`encode_infilling`: no dummy leading space), scored without the <EOT> after it. Prefix-only: BOS +
    prefix + middle tokenized as one text, as left-to-right training sees it, and the target is every token
    from the first one the prefix alone does not have. Tokenizing prefix and middle apart would put the
    prefix-only model on a boundary it never saw: a byte-level BPE writes a newline and the next line's
    indentation as one token, so a middle that starts with indentation would follow a lone newline.
    The same holds for infilling tokens that leave the prefix's trailing whitespace to the middle
    (`Tokenizer.infilling_echo`), and the suffix's leading whitespace (`Tokenizer.infilling_tail`): their
    target is that whitespace, the middle and the suffix's whitespace, as their training wrote it. Prefix-only
    then scores the same text (middle + that suffix whitespace), so every mode ends on the token the text
    has there (a newline and the next indent) rather than on a lone newline only prefix-only would pay for.
    The targets then differ in tokens (the joint one may also cover the prefix's last newline), so
    the modes are compared in total nats per middle (`middle_nll_record` keeps one denominator).
    """
    echo, tail = tokenizer.infilling_echo(problem.prompt), tokenizer.infilling_tail(problem.suffix)
    target = tokenizer.encode_infilling(echo + problem.canonical_solution + tail)
    rows = {}
    for mode in modes:
        if mode == PREFIX:
            rows[mode] = _joint_prefix_row(tokenizer, problem.prompt, problem.canonical_solution + tail)
        else:
            rows[mode] = (
                tokenizer.infilling_prompt(problem.prompt, problem.suffix, suffix_first=mode == "spm"),
                target,
            )
    return rows


def _joint_prefix_row(tokenizer, prefix: str, middle: str) -> tuple[list[int], list[int]]:
    import torch

    from codellama.generation.cache import common_prefix

    joint = prefix_prompt_ids(tokenizer, prefix + middle)
    alone = prefix_prompt_ids(tokenizer, prefix)
    k = common_prefix(torch.tensor(joint), torch.tensor(alone))
    if k == 0:  # no BOS and a different first token: nothing to condition on, score the middle apart
        return alone, tokenizer.encode_infilling(middle)
    return joint[:k], joint[k:]


def middle_nll_record(task_id: str, mode: str, nll: Sequence[float], fim_tokens: int) -> dict:
    """One nll.jsonl line: the summed NLL of the middle in `mode`, over `tokens`, the middle's FIM token
    count in every mode (so nll / tokens compares total nats per middle across modes); `scored`: the
    tokens actually scored (the prefix-only target is the jointly tokenized text)."""
    record = {"task_id": task_id, "mode": mode, "tokens": fim_tokens, "nll": float(sum(nll))}
    if mode == PREFIX:
        record.update(scored=len(nll), split=JOINT)
    return record


def _current(record: dict) -> bool:
    return record["mode"] != PREFIX or record.get("split") == JOINT


def nll_modes(tokenizer) -> tuple[str, ...]:
    """The NLL modes a tokenizer allows: all three, or prefix-only for a base without infilling tokens yet."""
    return NLL_MODES if tokenizer.infilling is not None else (PREFIX,)


def score_middle_nll(
    model,
    tokenizer,
    problems: Sequence[InfillingProblem],
    out_dir: str | os.PathLike,
    *,
    modes: Sequence[str] = NLL_MODES,
    batch_tokens: int = 8192,
    chunk: int = 64,
) -> int:
    """Score every (mode, problem) not yet in OUT/nll.jsonl, appending as it goes; returns how many.

    A record (`middle_nll_record`): {"task_id", "mode", "tokens", "nll"} with `nll` the summed NLL (nats)
    of the middle. Prefix-only records of earlier runs, scored on separately tokenized text, are scored again.
    """
    bad = [m for m in modes if m not in NLL_MODES]
    if bad:
        raise ValueError(f"NLL modes must be among {', '.join(NLL_MODES)} (got {', '.join(bad)})")
    path = Path(out_dir) / NLL_FILE
    done = {(r["mode"], r["task_id"]) for r in read_jsonl(path) if _current(r)}
    todo = [p for p in problems if any((m, p.task_id) not in done for m in modes)]
    if not todo:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    scored = 0
    with tqdm(total=len(todo), desc="middle NLL", unit="problem") as bar:
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            keys, rows = [], []
            for p in part:
                fim_tokens = len(tokenizer.encode_infilling(p.canonical_solution))
                for mode, row in middle_nll_rows(tokenizer, p, modes).items():
                    if (mode, p.task_id) not in done:
                        keys.append((p.task_id, mode, fim_tokens))
                        rows.append(row)
            for (task_id, mode, fim_tokens), nll in zip(keys, target_nll(model, rows, batch_tokens=batch_tokens)):
                append_jsonl(path, middle_nll_record(task_id, mode, nll, fim_tokens))
            scored += len(keys)
            bar.update(len(part))
    return scored


def nll_by_problem(out_dir: str | os.PathLike, mode: str, task_ids: Iterable[str] | None = None) -> dict:
    """{task_id: (NLL per token of its middle, tokens)} in one mode of a run directory's nll.jsonl: the
    middle's total nats over its FIM token count, the same denominator in every mode.

    For comparisons across runs: e.g. the per-problem PSM - prefix gap of a FIM model against the same gap
    of its base, paired with `evals.intervals.compare` (a base shows some gap too: the suffix is text).
    """
    wanted = set(task_ids) if task_ids is not None else None
    return {
        r["task_id"]: (r["nll"] / r["tokens"], r["tokens"])
        for r in read_jsonl(Path(out_dir) / NLL_FILE)
        if r["mode"] == mode and r["tokens"] > 0 and _current(r) and (wanted is None or r["task_id"] in wanted)
    }


def summarize_nll(problems: Sequence[InfillingProblem], out_dir: str | os.PathLike) -> dict:
    """Token-weighted mean NLL per mode with a 95% bootstrap interval over problems, and the paired
    differences PSM - prefix and SPM - prefix (below 0 with the interval: the suffix helps)."""
    wanted = {p.task_id for p in problems}
    by_mode = {mode: nll_by_problem(out_dir, mode, wanted) for mode in NLL_MODES}
    report: dict = {"modes": {}, "paired": {}}
    for mode, scores in by_mode.items():
        if not scores:
            continue
        tokens = [n for _, n in scores.values()]
        iv = bootstrap_mean([v for v, _ in scores.values()], weights=tokens)
        report["modes"][mode] = {
            "mean": round(iv.mean, 6),
            "low": round(iv.low, 6),
            "high": round(iv.high, 6),
            "tokens": sum(tokens),
            "problems": len(scores),
        }
    base = by_mode[PREFIX]
    for mode in MODES:
        scores = by_mode[mode]
        if any(tid in base for tid in scores):
            report["paired"][f"{mode}-{PREFIX}"] = compare(
                {t: v for t, (v, _) in scores.items()},
                {t: v for t, (v, _) in base.items()},
                weights={t: n for t, (_, n) in scores.items()},
            )
    return report


def pass_at_1_by_problem(out_dir: str | os.PathLike, mode: str, task_ids: Iterable[str] | None = None) -> dict:
    """Each problem's pass@1 (its fraction of passing samples) in one mode of a run directory.

    What a paired comparison needs: `evals.intervals.compare` of two of these (two modes, or the same mode
    of two models' runs) gives the pass@1 gap over the problems both scored, with its interval.
    """
    wanted = set(task_ids) if task_ids is not None else None
    counts: dict[str, list[int]] = {}
    for r in read_jsonl(Path(out_dir) / "results.jsonl"):
        if r["mode"] == mode and (wanted is None or r["task_id"] in wanted):
            c = counts.setdefault(r["task_id"], [0, 0])
            c[0] += 1
            c[1] += bool(r["passed"])
    return {tid: passed / n for tid, (n, passed) in counts.items()}


def summarize_run(problems: Sequence[InfillingProblem], config: BenchmarkConfig, out_dir: Path) -> dict:
    """report.json: per mode pass@k, its pass@1 95% interval and verdicts (`modes`); with the prefix
    baseline, the paired pass@1 gaps PSM - prefix and SPM - prefix (`pass@1_paired`); with `nll`, the
    middle NLL per mode and its paired gaps (`nll`: {"modes": ..., "paired": ...})."""

    wanted = {p.task_id for p in problems}
    records = [r for r in read_jsonl(out_dir / "results.jsonl") if r["task_id"] in wanted]
    report: dict = {
        "benchmark": config.benchmark,
        "model": config.model,
        "problems": len(problems),
        "samples_per_problem": config.samples,
        "temperature": config.temperature,
        "syntax_truncate": config.syntax_truncate,
        "modes": {},
    }
    for mode in config.modes:
        summary = summarize([r for r in records if r["mode"] == mode], config.ks, expected_tasks=wanted)
        summary.pop("per_problem")
        report["modes"][mode] = summary
    if PREFIX in config.modes:  # does infilling beat the left-to-right baseline on the same problems?
        base = pass_at_1_by_problem(out_dir, PREFIX, wanted)
        report["pass@1_paired"] = {}
        for mode in (m for m in (*MODES, *LINES) if m in config.modes):  # not prefix against itself
            scores = pass_at_1_by_problem(out_dir, mode, wanted)
            if any(t in base for t in scores):
                report["pass@1_paired"][f"{mode}-{PREFIX}"] = compare(scores, base)
    if config.nll:
        report["nll"] = summarize_nll(problems, out_dir)
    return report


def run_benchmark(
    config: BenchmarkConfig,
    out_dir: str | os.PathLike,
    generator=None,
    *,
    data: str | os.PathLike | None = None,
    workers: int | None = None,
) -> dict:
    """Score the middle NLL (with `config.nll`), generate, execute (all resumably); write report.json + .png."""
    out_dir = Path(out_dir)
    problems = load_problems(data or data_path(config.benchmark), config.limit, config.pick)
    if generator is None and any(m != CANONICAL for m in config.modes):
        raise ValueError("a model or endpoint is needed to generate (or score the canonical solutions)")
    model = getattr(generator, "model", None)
    if config.nll and (model is None or getattr(generator, "tokenizer", None) is None):
        raise ValueError("the middle NLL needs a local model (--model): an endpoint gives no log-likelihoods")
    hint = "a rerun continues the same model with the same settings; use another --out for a new model or settings"
    with rundir.claim(out_dir, "infilling", run_fingerprint(config, data), allow=ALLOWED_CHANGES, hint=hint):
        t0 = time.perf_counter()
        # First: teacher forcing is cheap next to generation, so the continuous score is there early.
        scored = 0
        if config.nll:
            modes = nll_modes(generator.tokenizer)
            if modes != NLL_MODES:
                log.warning("the tokenizer has no infilling tokens: the middle NLL is scored prefix-only")
            scored = score_middle_nll(model, generator.tokenizer, problems, out_dir, modes=modes)
        nll_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        generated = generate_samples(generator, problems, config, out_dir)
        gen_s = time.perf_counter() - t0
        executed, exec_s = execute_samples(problems, out_dir, timeout=config.timeout, workers=workers)
        report = summarize_run(problems, config, out_dir)
        report["this_run"] = {
            "nll_scored": scored,
            "nll_seconds": round(nll_s, 2),
            "generated": generated,
            "generation_seconds": round(gen_s, 2),
            "executed": executed,
            "execution_seconds": round(exec_s, 2),
            "executed_per_second": round(executed / exec_s, 1) if exec_s else None,
        }
        atomic_write_json(out_dir / "report.json", report)
        atomic_write_bytes(out_dir / "report.png", render_png(report))
    return report


def render_png(report: dict) -> bytes:
    """pass@k per prompt mode, side by side (pass@1 with its interval); with NLL scores, a second panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = report["modes"]
    nll = (report.get("nll") or {}).get("modes") or {}
    ks = sorted({k for m in modes.values() for k in m["pass@k"]}, key=lambda k: int(k.split("@")[1]))
    fig, axes = plt.subplots(1, 2 if nll else 1, figsize=(11 if nll else 7, 4), squeeze=False)
    ax = axes[0][0]
    width = 0.8 / max(1, len(modes))
    for j, (mode, summary) in enumerate(modes.items()):
        xs = [i + j * width for i in range(len(ks))]
        values = [100 * summary["pass@k"].get(k, 0) for k in ks]
        interval = summary.get("pass@1_interval")
        errors = None
        if interval and "pass@1" in ks:
            errors = [[0.0] * len(ks), [0.0] * len(ks)]
            i = ks.index("pass@1")
            errors[0][i] = max(0.0, values[i] - 100 * interval[0])
            errors[1][i] = max(0.0, 100 * interval[1] - values[i])
        bars = ax.bar(xs, values, width, yerr=errors, capsize=3, label=mode.upper())
        ax.bar_label(bars, fmt="%.1f%%")
    ax.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(ks))], ks)
    ax.set_ylim(0, 105)
    ax.set_ylabel("% (pass@1: 95% interval over problems)")
    ax.set_title(f"HumanEval {report['benchmark']} infilling: {report['problems']} problems")
    ax.legend()
    if nll:
        ax = axes[0][1]
        names = list(nll)
        means = [nll[m]["mean"] for m in names]
        errors = [[nll[m]["mean"] - nll[m]["low"] for m in names], [nll[m]["high"] - nll[m]["mean"] for m in names]]
        bars = ax.bar([m.upper() for m in names], means, yerr=errors, capsize=4, color="tab:purple")
        ax.bar_label(bars, fmt="%.3f")
        ax.set_ylabel("nats per token (95% interval)")
        ax.set_title("NLL of the true middle (lower: the model expects it)")

    return figure_png(fig, unsandboxed=any(m.get("warnings") for m in modes.values()))


__all__ = [
    "BENCHMARKS",
    "NLL_MODES",
    "PREFIX",
    "BenchmarkConfig",
    "InfillingProblem",
    "build_program",
    "cut_prefix_completion",
    "data_path",
    "execute_samples",
    "generate_samples",
    "load_problems",
    "spread_sample",
    "middle_nll_rows",
    "nll_by_problem",
    "nll_modes",
    "pass_at_1_by_problem",
    "prefix_prompt_ids",
    "run_benchmark",
    "score_middle_nll",
    "summarize_nll",
    "summarize_run",
]
