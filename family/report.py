"""The family report: results.json + report.md + PNG plots, in the spirit of the Code Llama paper's tables.

`results.json` schema (what the pipeline fills in, per model):
  {"models": {NAME: {"branch", "base", "path", "parameters", "train": {"curve": [[step, loss], ...],
   "tokens", "first_loss", "final_loss"}, "humaneval": {"pass@1": x, ...,"failures": {kind: n}},
   "infilling": {BENCH: {"psm": {"pass@1": x}, "spm": {...}}}, "key_retrieval": {...},
   "long_ppl": {"lengths": [...], "ppl": [...]}}}, "config": {...}, "stages": {...}}
plus, from the controls, per-problem values ("per_problem") that the claims pair, "humaneval_chat", "code_loss"
and "rope" (the RoPE methods' per-window NLL); write_report adds "claims" (family.claims).
"""

from __future__ import annotations

import logging
from pathlib import Path

from codellama.io import atomic_write_json, atomic_write_text
from family.claims import INFILL_COLUMNS, Claim, judge_claims, mode_label

log = logging.getLogger(__name__)

PLOTS = {
    "loss_curves": "loss_curves.png",
    "pass_at_k": "pass_at_k.png",
    "infilling": "infilling.png",
    "long_ppl": "long_ppl.png",
    "middle_nll": "middle_nll.png",
    "fim_loss_curves": "fim_loss_curves.png",
    "rope_ppl": "rope_ppl.png",
    "chat": "chat_pass_at_1.png",
}
# The plot shown under each claim.
CLAIM_PLOTS = {
    "fim_enables_infilling": ("infilling", "middle_nll"),
    "fim_costs_little": ("fim_loss_curves",),
    "rope_extends_context": ("rope_ppl",),
    "instruct_helps_chat": ("chat",),
}


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def write_report(results: dict, out_dir: Path) -> dict[str, Path]:
    """Write results.json, report.md and the plots; returns the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    claims = judge_claims(results)
    results = {**results, "claims": [c.to_json() for c in claims]}
    atomic_write_json(out_dir / "results.json", results)
    plots = _plots(results, out_dir)
    atomic_write_text(out_dir / "report.md", _markdown(results, plots, claims))
    return {"results": out_dir / "results.json", "report": out_dir / "report.md", **plots}


def claim_markdown(claim: Claim, plots: dict[str, Path]) -> list[str]:
    """One claim's section: the verdict paragraph, its table with intervals, its plots."""
    lines = [f"### {claim.title}", "", claim.text, ""]
    if claim.rows:
        lines += ["| " + " | ".join(claim.columns) + " |", "|" + "---|" * len(claim.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in claim.rows]
        lines.append("")
    for key in CLAIM_PLOTS.get(claim.key, ()):
        if key in plots:
            lines += [f"![{key}]({plots[key].name})", ""]
    return lines


def _markdown(results: dict, plots: dict[str, Path], claims: list[Claim] = ()) -> str:
    models = results.get("models", {})
    lines = ["# Code Llama family report", ""]
    if results.get("summary"):
        lines += [results["summary"], ""]
    measured = [c for c in claims if c.rows or c.comparisons]
    if measured:
        lines += ["## Claims", "", "95% intervals: percentile bootstrap over problems (files, windows).", ""]
        for claim in measured:
            lines += claim_markdown(claim, plots)
    lines += [
        "## Models",
        "",
        "| model | branch | from | parameters | tokens trained | loss, first → last tenth of steps |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in models.items():
        t = m.get("train") or {}
        loss = f"{t['first_loss']:.3f} → {t['final_loss']:.3f}" if t.get("final_loss") is not None else "–"
        lines.append(
            f"| {name} | {m.get('branch', '–')} | {m.get('base', '–')} | {m.get('parameters', 0):,} | "
            f"{t.get('tokens', 0):,} | {loss} |"
        )
    if "loss_curves" in plots:
        lines += ["", f"![loss curves]({plots['loss_curves'].name})"]
    recipe = results.get("recipe") or {}
    if recipe:
        lines += [
            "",
            "## Recipe",
            "",
            "| model | row length | tokens per step | steps | tokens | peak lr | warm-up steps | RoPE base | FIM rate |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in recipe.items():
            rope = "–" if r["rope_base"] is None else f"{r['rope_base']:g}"
            lines.append(
                f"| {name} | {r['seq_len']:,} | {r['batch_tokens']:,} | {r['steps']:,} | {r['tokens']:,} | "
                f"{r['lr']:g} | {r['warmup_steps']} | {rope} | {r['fim_rate']:g} |"
            )
    if results.get("notes"):
        lines += ["", results["notes"]]

    he = {n: m["humaneval"] for n, m in models.items() if m.get("humaneval")}
    if he:
        ks = sorted({k for r in he.values() for k in r if k.startswith("pass@")}, key=lambda k: int(k[5:]))
        lines += [
            "",
            "## HumanEval",
            "",
            "| model | " + " | ".join(ks) + " | problems | failure kinds |",
            "|---|" + "---|" * (len(ks) + 2),
        ]
        for name, r in he.items():
            fails = ", ".join(f"{k} {v}" for k, v in sorted((r.get("failures") or {}).items()))
            lines.append(
                f"| {name} | "
                + " | ".join(_pct(r.get(k)) for k in ks)
                + f" | {r.get('problems', '–')} | {fails or '–'} |"
            )
        if "pass_at_k" in plots:
            lines += ["", f"![pass@k]({plots['pass_at_k'].name})"]

    inf = {n: m["infilling"] for n, m in models.items() if m.get("infilling")}
    if inf:
        lines += [
            "",
            "## Infilling (HumanEval infilling, pass@1)",
            "",
            "| model | benchmark | " + " | ".join(mode_label(m) for m in INFILL_COLUMNS) + " | problems |",
            "|---|---|" + "---|" * len(INFILL_COLUMNS) + "---|",
        ]
        for name, benches in inf.items():
            for bench, r in benches.items():
                cells = " | ".join(_pct((r.get(m) or {}).get("pass@1")) for m in INFILL_COLUMNS)
                lines.append(f"| {name} | {bench} | {cells} | {r.get('problems', '–')} |")
        lines += [
            "",
            "Cut to the hole: a PSM / SPM answer cut to the true middle's number of lines, as the prefix-only "
            "answer always is (it cannot know where the hole ends) and as the field scores this benchmark; the "
            "infilling claim's pass@1 is judged on these. The PSM / SPM columns take the answer as the model "
            "ended it (`<EOT>` or the token limit): whether it stops by itself.",
        ]
        if "infilling" in plots:
            lines += ["", f"![infilling]({plots['infilling'].name})"]

    longs = {n: m for n, m in models.items() if m.get("key_retrieval") or m.get("long_ppl")}
    if longs:
        lines += ["", "## Long context", ""]
        for name, m in longs.items():
            kr = m.get("key_retrieval")
            if kr:
                cells = ", ".join(f"{k}: {_pct(v)}" for k, v in (kr.get("accuracy_by_length") or {}).items())
                lines.append(f"- **{name}** key retrieval accuracy by context length: {cells or '–'}")
            lp = m.get("long_ppl")
            if lp:
                cells = ", ".join(f"{n}: {p:.2f}" for n, p in zip(lp["lengths"], lp["ppl"]))
                lines.append(f"- **{name}** perplexity by context length: {cells}")
        if "long_ppl" in plots:
            lines += ["", f"![perplexity vs length]({plots['long_ppl'].name})"]
    if results.get("stages"):
        lines += ["", "## Stages", ""]
        if results.get("machine"):
            lines += [machine_line(results["machine"], results.get("models", {})), ""]
        lines += ["| stage | seconds |", "|---|---|"]
        lines += [f"| {s} | {r.get('seconds', '–')} |" for s, r in results["stages"].items()]
    return "\n".join(lines) + "\n"


def machine_line(m: dict, models: dict) -> str:
    """Where the seconds below were measured, and what the recipe's `auto` settings became there."""
    trained = sorted({p for x in models.values() if (p := (x.get("train") or {}).get("precision"))})
    bf16 = "AMX" if m.get("amx") else "native bf16" if m.get("native_bf16") else "no native bf16"
    where = m.get("gpu") or f"{m.get('cpu')}, {m.get('cores')} cores ({m.get('cpu_capability')}, {bf16})"
    return (
        f"Machine: {where}; torch {m.get('torch')}; training in {', '.join(trained) or '–'}, "
        f"scoring in {m.get('scoring_dtype')}."
    )


def _plots(results: dict, out_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results.get("models", {})
    written: dict[str, Path] = {}

    def save(fig, key):
        path = out_dir / PLOTS[key]
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written[key] = path

    curves = {n: m["train"] for n, m in models.items() if (m.get("train") or {}).get("curve")}
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, train in curves.items():
            steps, losses = zip(*train["curve"])
            start = train.get("start_step", 0)  # a branch continues from its parent's last step
            ax.plot([start + s for s in steps], losses, label=name)
        ax.set(xlabel="step (branches start where their parent ended)", ylabel="training loss", title="Loss per branch")
        ax.legend()
        save(fig, "loss_curves")

    he = {n: m["humaneval"] for n, m in models.items() if m.get("humaneval")}
    if he:
        ks = sorted({k for r in he.values() for k in r if k.startswith("pass@")}, key=lambda k: int(k[5:]))
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.8 / max(1, len(ks))
        for j, k in enumerate(ks):
            ax.bar(
                [i + j * width for i in range(len(he))], [100 * (r.get(k) or 0) for r in he.values()], width, label=k
            )
        ax.set_xticks([i + width * (len(ks) - 1) / 2 for i in range(len(he))], list(he))
        ax.set(ylabel="%", title="HumanEval pass@k")
        ax.legend()
        save(fig, "pass_at_k")

    rows = [(f"{n}\n{b}", r) for n, m in models.items() for b, r in (m.get("infilling") or {}).items()]
    if rows:
        fig, ax = plt.subplots(figsize=(max(7, 1.4 * len(rows)), 4))
        modes = [m for m in INFILL_COLUMNS if any(r.get(m) for _, r in rows)]
        width = 0.8 / len(modes)
        for j, mode in enumerate(modes):
            ax.bar(
                [i + j * width for i in range(len(rows))],
                [100 * ((r.get(mode) or {}).get("pass@1") or 0) for _, r in rows],
                width,
                yerr=_pass_errors([(r.get(mode) or {}).get("per_problem") for _, r in rows]),
                capsize=3,
                label=mode_label(mode),
            )
        ax.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(rows))], [label for label, _ in rows])
        ax.set(ylabel="pass@1 %", title="HumanEval infilling")
        ax.legend()
        save(fig, "infilling")

    def ppl_versus_length(series: dict[str, tuple[list, list]], title: str, key: str, fine_tune_length=None):
        """Perplexity against context length (log-log), one line per label."""
        fig, ax = plt.subplots(figsize=(7, 4))
        for label, (lengths, ppl) in series.items():
            ax.plot(lengths, ppl, marker="o", label=label)
        if fine_tune_length:
            ax.axvline(fine_tune_length, color="grey", linestyle=":", label="fine-tuning length")
        ax.set(xlabel="context length (tokens)", ylabel="perplexity", xscale="log", yscale="log", title=title)
        ax.legend()
        save(fig, key)

    ppl = {n: (m["long_ppl"]["lengths"], m["long_ppl"]["ppl"]) for n, m in models.items() if m.get("long_ppl")}
    if ppl:
        ppl_versus_length(ppl, "Perplexity versus context length", "long_ppl")

    nll = [
        (n, m["infilling"][b]["nll"])
        for n, m in models.items()
        for b in (m.get("infilling") or {})
        if (m["infilling"][b] or {}).get("nll") and b == "single-line"
    ]
    if nll:
        fig, ax = plt.subplots(figsize=(7, 4))
        modes = ["psm", "spm", "prefix"]
        width = 0.8 / len(modes)
        for j, mode in enumerate(modes):
            stats = [r["modes"].get(mode) for _, r in nll]
            ax.bar(
                [i + j * width for i in range(len(nll))],
                [s["mean"] if s else 0 for s in stats],
                width,
                yerr=[
                    [s["mean"] - s["low"] if s else 0 for s in stats],
                    [s["high"] - s["mean"] if s else 0 for s in stats],
                ],
                capsize=3,
                label=mode_label(mode),
            )
        ax.set_xticks([i + width for i in range(len(nll))], [n for n, _ in nll])
        ax.set(ylabel="nats per token (95% interval)", title="NLL of the true middle (single-line), per prompt mode")
        ax.legend()
        save(fig, "middle_nll")

    pair = {
        n: models[n]["train"] for n in ("code", "code-nofim") if (models.get(n) or {}).get("train", {}).get("curve")
    }
    if len(pair) == 2:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, train in pair.items():
            steps, losses = zip(*train["curve"])
            ax.plot(steps, losses, label=f"{name} ({'FIM' if name == 'code' else 'FIM rate 0'})")
        ax.set(xlabel="step", ylabel="training loss", title="Code training with and without FIM (same data and budget)")
        ax.legend()
        save(fig, "fim_loss_curves")

    rope = results.get("rope") or {}
    if rope.get("methods"):
        ppl_versus_length(
            {method: (rope["lengths"], entry["ppl"]) for method, entry in rope["methods"].items()},
            "Perplexity versus context length, per RoPE method",
            "rope_ppl",
            fine_tune_length=rope["fine_tune_length"],
        )

    chat = {n: m["humaneval_chat"] for n, m in models.items() if m.get("humaneval_chat")}
    if chat:
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.bar(
            list(chat),
            [100 * (r.get("pass@1") or 0) for r in chat.values()],
            yerr=_pass_errors([r.get("per_problem") for r in chat.values()]),
            capsize=4,
        )
        ax.set(ylabel="pass@1 % (95% interval)", title="HumanEval with chat-format prompts")
        save(fig, "chat")
    return written


def _pass_errors(per_problem: list[dict | None]) -> list[list[float]]:
    """Error bars (points below, above) of pass@1 from per-problem values; 0 where there are none."""
    from evals.intervals import bootstrap_mean

    low, high = [], []
    for values in per_problem:
        if not values:
            low.append(0.0)
            high.append(0.0)
            continue
        iv = bootstrap_mean(list(values.values()))
        low.append(100 * (iv.mean - iv.low))
        high.append(100 * (iv.high - iv.mean))
    return [low, high]
