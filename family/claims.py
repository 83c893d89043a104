"""The report's claims, judged from the run's numbers: pure functions from results.json to tables and text.

Each claim is a list of comparisons, each a paired difference over the same problems (files, windows)
with a 95% bootstrap interval, or (for "costs little") whether the FIM model stays within the no-FIM
control's interval. A claim is "supported" when every comparison holds; otherwise the paragraph says
"not supported at this budget" and which comparison failed, with its numbers. Nothing here runs a model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from evals.intervals import Interval, bootstrap_mean, compare, paired_difference

SUPPORTED, NOT_SUPPORTED, NOT_MEASURED = "supported", "not supported at this budget", "not measured"
INFILL_BENCH = "single-line"  # the benchmark the infilling claim is judged on (the criterion)
# Infilling modes as the report lists them: the answer as the model ended it, then judged like the baseline
# (evals.infilling.SCORED_MODES in the report's order: that module loads torch, and this one does not).
INFILL_COLUMNS = ("psm", "spm", "prefix", "psm-lines", "spm-lines")


def mode_label(mode: str) -> str:
    """PSM, SPM, prefix-only, "PSM, cut to the hole" (evals' psm-lines), ..."""
    if mode == "prefix":
        return "prefix-only"
    base, _, lines = mode.partition("-")
    return base.upper() + (", cut to the hole" if lines else "")


@dataclass
class Comparison:
    """One test of a claim: `mean [low, high]` over `n` units; `holds` says whether it points the right way."""

    label: str
    mean: float
    low: float
    high: float
    n: int
    unit: str  # "pass@1" (fractions, shown in points), "nats/token", ...
    want: str  # "above 0", "below 0", "within the control's interval"
    holds: bool
    units: str = "problems"  # what n counts (problems, files, windows)


@dataclass
class Claim:
    key: str
    title: str
    verdict: str
    text: str
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)  # the table: numbers, units, 95% intervals
    comparisons: list[Comparison] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


# -- formatting --------------------------------------------------------------------------------
def _fmt(x: float, unit: str) -> str:
    if unit == "pass@1":
        return f"{100 * x:+.1f} pts" if x < 0 or x > 0 else "+0.0 pts"
    return f"{x:+.3f}"


def _value(x: float, unit: str) -> str:
    return f"{100 * x:.1f}%" if unit == "pass@1" else f"{x:.3f}"


def _with_interval(iv: Interval, unit: str) -> str:
    return f"{_value(iv.mean, unit)} [{_value(iv.low, unit)}, {_value(iv.high, unit)}]"


def describe(c: Comparison) -> str:
    """`label: +2.0 pts [+0.7, +3.3] over 150 problems (wanted above 0: holds)`."""
    return (
        f"{c.label}: {_fmt(c.mean, c.unit)} [{_fmt(c.low, c.unit)}, {_fmt(c.high, c.unit)}] over {c.n} {c.units} "
        f"(wanted {c.want}: {'holds' if c.holds else 'does not hold'})"
    )


def verdict_of(comparisons: list[Comparison]) -> str:
    if not comparisons:
        return NOT_MEASURED
    return SUPPORTED if all(c.holds for c in comparisons) else NOT_SUPPORTED


def paragraph(title: str, comparisons: list[Comparison], what: str) -> str:
    """The plain-words verdict of a claim from its comparisons (what = how the claim was tested)."""
    verdict = verdict_of(comparisons)
    if verdict == NOT_MEASURED:
        return f"**{title}: not measured.** This run lacks the models or scores it needs ({what})."
    lines = "; ".join(describe(c) for c in comparisons)
    if verdict == SUPPORTED:
        return f"**{title}: supported by this run.** Tested by {what}. Every comparison holds: {lines}."
    failed = ", ".join(c.label for c in comparisons if not c.holds)
    return (
        f"**{title}: not supported at this budget.** Tested by {what}. Not holding: {failed}. All comparisons: {lines}."
    )


# -- comparisons -------------------------------------------------------------------------------
def paired(
    label: str,
    a: dict,
    b: dict,
    *,
    unit: str,
    want: str,
    weights: dict | None = None,
    units: str = "problems",
    seed: int = 0,
) -> Comparison | None:
    """a - b over the units (problem ids) both score; None when they share none."""
    if not set(a) & set(b):
        return None
    iv = compare(a, b, weights=weights, seed=seed)
    holds = iv["low"] > 0 if want == "above 0" else iv["high"] < 0
    return Comparison(label, iv["mean"], iv["low"], iv["high"], iv["problems"], unit, want, holds, units)


def within(
    label: str,
    treated: dict,
    control: dict,
    *,
    unit: str,
    lower_is_better: bool,
    weights=None,
    units: str = "problems",
) -> Comparison | None:
    """Whether the treated model's mean is within the control's 95% interval or better than it.

    The numbers shown are the paired difference treated - control (over the units both score); None when
    they share none."""
    shared = sorted(set(treated) & set(control))
    if not shared:
        return None
    w_c = [weights[k] for k in sorted(control)] if weights else None
    control_iv = bootstrap_mean([control[k] for k in sorted(control)], weights=w_c)
    t_mean = _mean([treated[k] for k in shared], [weights[k] for k in shared] if weights else None)
    diff = paired_difference(
        [treated[k] for k in shared],
        [control[k] for k in shared],
        weights=[weights[k] for k in shared] if weights else None,
    )
    better = t_mean < control_iv.low if lower_is_better else t_mean > control_iv.high
    holds = t_mean in control_iv or better
    return Comparison(
        label, diff.mean, diff.low, diff.high, diff.n, unit, "within the control's interval", holds, units
    )


def _mean(values: list[float], weights: list[float] | None) -> float:
    w = weights or [1.0] * len(values)
    return sum(v * x for v, x in zip(values, w)) / sum(w)


def _judged(key: str, title: str, what: str, columns: list[str], rows: list[list[str]], comparisons: list) -> Claim:
    """A claim whose verdict and paragraph come from its comparisons (those that could be made: None dropped)."""
    comparisons = [c for c in comparisons if c is not None]
    return Claim(key, title, verdict_of(comparisons), paragraph(title, comparisons, what), columns, rows, comparisons)


# -- the four claims ---------------------------------------------------------------------------
def _infill(models: dict, name: str) -> dict:
    return ((models.get(name) or {}).get("infilling") or {}).get(INFILL_BENCH) or {}


def _pass(models: dict, name: str, mode: str) -> dict:
    return (_infill(models, name).get(mode) or {}).get("per_problem") or {}


def _nll(models: dict, name: str, mode: str) -> tuple[dict, dict]:
    rows = ((_infill(models, name).get("nll") or {}).get("per_problem") or {}).get(mode) or {}
    return {k: v[0] for k, v in rows.items()}, {k: v[1] for k, v in rows.items()}


def _suffix_gap(models: dict, name: str, mode: str) -> dict:
    """Per problem: the middle NLL under `mode` minus under prefix-only (below 0: the suffix helps)."""
    nll, _ = _nll(models, name, mode)
    prefix, _ = _nll(models, name, "prefix")
    return {k: nll[k] - prefix[k] for k in nll if k in prefix}


def fim_enables_infilling(results: dict) -> Claim:
    """The FIM model's middle NLL under PSM/SPM below its own prefix-only NLL, by more than the control's
    (the no-FIM model, else the base: any model scores the middle a little better with the suffix in view,
    whatever the markers mean), and its single-line pass@1 (PSM and SPM) above the prefix-only baseline's
    and the base's (the base left to right when scored so)."""
    models = results.get("models", {})
    comps: list[Comparison | None] = []
    control = "code-nofim" if _nll(models, "code-nofim", "prefix")[0] else "base"
    for mode in ("psm", "spm"):
        nll, tokens = _nll(models, "code", mode)
        prefix_nll, _ = _nll(models, "code", "prefix")
        comps.append(
            paired(
                f"code {mode.upper()} - prefix-only middle NLL",
                nll,
                prefix_nll,
                unit="nats/token",
                want="below 0",
                weights=tokens,
            )
        )
        gap, other = _suffix_gap(models, "code", mode), _suffix_gap(models, control, mode)
        comps.append(
            paired(
                f"code - {control} gap ({mode.upper()} - prefix-only middle NLL)",
                gap,
                other,
                unit="nats/token",
                want="below 0",
                weights=tokens,
            )
        )
    for plain in ("psm", "spm"):
        # Judged as HumanEval-infilling is scored in the field (InCoder's evaluation, Code Llama's table): each
        # answer cut to the hole's number of lines, as the prefix-only baseline always is; runs without the
        # cut rows are judged on the answers as ended. Whether the model ends them itself is shown in the table.
        mode = f"{plain}-lines" if _pass(models, "code", f"{plain}-lines") else plain
        fim = _pass(models, "code", mode)
        comps.append(
            paired(
                f"code {mode_label(mode)} - code prefix-only pass@1",
                fim,
                _pass(models, "code", "prefix"),
                unit="pass@1",
                want="above 0",
            )
        )
        base_mode = "prefix" if _pass(models, "base", "prefix") else mode
        comps.append(
            paired(
                f"code {mode_label(mode)} - base {mode_label(base_mode)} pass@1",
                fim,
                _pass(models, "base", base_mode),
                unit="pass@1",
                want="above 0",
            )
        )
    rows = []
    for name in ("base", "code-nofim", "code"):
        for mode in INFILL_COLUMNS:
            p, (nll, tokens) = _pass(models, name, mode), _nll(models, name, mode)
            if not p and not nll:
                continue
            rows.append(
                [
                    name,
                    mode_label(mode),
                    _with_interval(bootstrap_mean(list(p.values())), "pass@1") if p else "–",
                    _with_interval(bootstrap_mean(list(nll.values()), weights=list(tokens.values())), "nll")
                    if nll
                    else "–",
                    str(len(p) or len(nll)),
                ]
            )
    what = (
        f"HumanEval {INFILL_BENCH} infilling (problems spread over the benchmark's functions when limited; greedy "
        "pass@1; NLL of the true middle: its total nats in each prompt "
        "mode over its token count as a FIM middle, the prefix-only text tokenized as one), paired over problems; "
        "pass@1 is judged on PSM / SPM answers cut to the hole's number of lines, as the prefix-only baseline is "
        "and as the field scores this benchmark (InCoder's evaluation); the rows as the model ended them show "
        "whether it also ends its middles with <EOT> (shown, not judged)"
    )
    title = "FIM enables infilling"
    return _judged(
        "fim_enables_infilling",
        title,
        what,
        ["model", "prompt", "pass@1 [95% interval]", "middle NLL, nats/token [95% interval]", "problems"],
        rows,
        comps,
    )


def fim_costs_little(results: dict) -> Claim:
    """The FIM model's held-out code loss and HumanEval pass@1 within the no-FIM control's 95% interval (or better)."""
    models = results.get("models", {})
    comps = []
    rows = []

    def loss(name):
        per = ((models.get(name) or {}).get("code_loss") or {}).get("per_file") or []
        return {r["name"]: r["nll"] for r in per}, {r["name"]: r["tokens"] for r in per}

    def he(name):
        return ((models.get(name) or {}).get("humaneval") or {}).get("per_problem") or {}

    fim_loss, tokens = loss("code")
    nofim_loss, nofim_tokens = loss("code-nofim")
    if fim_loss and nofim_loss:
        comps.append(
            within(
                "code - no-FIM held-out code loss",
                fim_loss,
                nofim_loss,
                unit="nats/token",
                lower_is_better=True,
                weights={**nofim_tokens, **tokens},
                units="files",
            )
        )
    if he("code") and he("code-nofim"):
        comps.append(
            within("code - no-FIM HumanEval pass@1", he("code"), he("code-nofim"), unit="pass@1", lower_is_better=False)
        )
    for name in ("base", "code-nofim", "code"):
        values, weights = loss(name)
        h = he(name)
        if not values and not h:
            continue
        rows.append(
            [
                name,
                _with_interval(bootstrap_mean(list(values.values()), weights=list(weights.values())), "nll")
                if values
                else "–",
                str(len(values)) if values else "–",
                _with_interval(bootstrap_mean(list(h.values())), "pass@1") if h else "–",
                str(len(h)) if h else "–",
            ]
        )
    what = "held-out code loss (files no training stage saw) and greedy HumanEval pass@1, FIM vs the no-FIM control"
    title = "FIM costs little left to right"
    return _judged(
        "fim_costs_little",
        title,
        what,
        ["model", "held-out loss, nats/token [95% interval]", "files", "HumanEval pass@1 [95% interval]", "problems"],
        rows,
        comps,
    )


def rope_extends_context(results: dict) -> Claim:
    """Past the fine-tuning length, the LCFT model (raised base) has lower perplexity than the untouched code model.

    Judged past the untouched model's own trained context too when some length is: a pretrained base that
    already reads 8,192 tokens has nothing to extend below that (SmolLM2 fine-tuned at 1,024 tokens)."""
    rope = results.get("rope") or {}
    methods, lengths = rope.get("methods") or {}, rope.get("lengths") or []
    ft = rope.get("fine_tune_length") or 0
    past = max(ft, rope.get("trained_context") or 0)
    judged = [n for n in lengths if n > past] or [n for n in lengths if n > ft]
    comps = []
    if "raised-base" in methods and "untouched" in methods:
        for i, n in enumerate(lengths):
            if n not in judged:
                continue
            raised = dict(enumerate(methods["raised-base"]["nll"][i]))
            untouched = dict(enumerate(methods["untouched"]["nll"][i]))
            comps.append(
                paired(
                    f"raised base - untouched NLL at {n:,} tokens",
                    raised,
                    untouched,
                    unit="nats/token",
                    want="below 0",
                    units="windows",
                )
            )
    rows = []
    for method, entry in methods.items():
        cells = []
        for row in entry["nll"]:
            iv = bootstrap_mean(row)
            cells.append(f"{math.exp(iv.mean):.2f} [{math.exp(iv.low):.2f}, {math.exp(iv.high):.2f}]")
        kr = (entry.get("key_retrieval") or {}).get("overall")
        rows.append([method, *cells, "–" if kr is None else f"{100 * kr:.0f}%"])
    what = (
        f"perplexity of {rope.get('samples', '?')} windows ({rope.get('corpus', '?')}) at "
        f"{', '.join(f'{n:,}' for n in lengths)} tokens (fine-tuning length {ft:,}), paired over windows; "
        f"linear, dynamic NTK and YaRN stretch the code model's trained context "
        f"{rope.get('trained_context', 0):,} by {rope.get('scaling_factor', 1):g}x without training; judged at "
        f"{', '.join(f'{n:,}' for n in judged) or 'no length'} tokens (past the fine-tuning length"
        + (" and the untouched model's trained context)" if judged and min(judged) > past else ")")
    )
    title = "A raised RoPE base extends the usable context"
    return _judged(
        "rope_extends_context",
        title,
        what,
        ["method", *[f"ppl at {n:,} [95%]" for n in lengths], "key retrieval"],
        rows,
        comps,
    )


def instruct_helps_chat(results: dict) -> Claim:
    """The instruct model above the code model on chat-format HumanEval prompts."""
    models = results.get("models", {})

    def chat(name):
        return ((models.get(name) or {}).get("humaneval_chat") or {}).get("per_problem") or {}

    comps = [
        paired("instruct - code chat-prompt pass@1", chat("instruct"), chat("code"), unit="pass@1", want="above 0")
    ]
    rows = [
        [name, _with_interval(bootstrap_mean(list(chat(name).values())), "pass@1"), str(len(chat(name)))]
        for name in ("code", "instruct")
        if chat(name)
    ]
    title = "Instruct tuning helps chat-style prompts"
    what = "greedy HumanEval asked in the model's chat format, paired over problems"
    return _judged(
        "instruct_helps_chat",
        title,
        what,
        ["model", "chat-prompt pass@1 [95% interval]", "problems"],
        rows,
        comps,
    )


CLAIMS = (fim_enables_infilling, fim_costs_little, rope_extends_context, instruct_helps_chat)


def judge_claims(results: dict) -> list[Claim]:
    """Every claim of the report, judged from results.json (claims whose models were not run: not measured)."""
    return [judge(results) for judge in CLAIMS]
