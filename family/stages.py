"""The family's stages, each a thin call into the library that owns the step.

tokenizer -> base -> data -> train-code -> {train-python, train-long-context, instruct-data -> train-instruct}
-> eval-<model> for every model -> report. Each stage writes under RUN/<stage>/ and resumes
through its owner's own mechanism (training checkpoints, eval JSONL, data progress records).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from codellama.checkpoint import load_config, load_model, save_checkpoint
from codellama.convert import convert_meta_to_hf
from codellama.data.chat import read_chat_jsonl
from codellama.data.fim import FimOptions
from codellama.data.ingest import SourceSpec, load_documents
from codellama.data.prepare import PrepareConfig, prepare
from codellama.data.shards import INDEX, ShardIndex
from codellama.extend import grow_embeddings, is_checkpoint
from codellama.generation import HFGenerator
from codellama.instruct.docstring_pairs import docstring_pairs
from codellama.instruct.pipeline import InstructDataConfig, run_pipeline
from codellama.io import atomic_write_json, atomic_write_text, read_jsonl
from codellama.model import build_model, count_parameters, preset_from_config
from codellama.presets import PRESETS
from codellama.tokenizer import CodeLlamaTokenizer, TrainOptions, load_tokenizer, save_tokenizer_dir, tokenizer_file
from codellama.train.config import resolve_config
from codellama.train.loop import CONFIG_FILE, train_branch
from evals.infilling import BenchmarkConfig, run_benchmark
from evals.run import RunConfig, run_humaneval
from evals.sandbox import LazySandboxPool
from family.config import PipelineConfig
from family.report import write_report
from family.runner import RunContext, RunState, Stage
from long_context.key_retrieval import build_prompts, plot_key_retrieval, run_key_retrieval
from long_context.perplexity import evaluate_models, plot_long_ppl

log = logging.getLogger(__name__)

TRAIN_STAGES = {
    "code": "train-code",
    "python": "train-python",
    "long-context": "train-long-context",
    "instruct": "train-instruct",
}
# Where each branch starts from (Code Llama: Python, long-context and instruct all continue the code model).
BRANCH_FROM = {"python": "code", "long-context": "code", "instruct": "code"}


def _cfg(ctx: RunContext) -> PipelineConfig:
    return ctx.config


# -- tokenizer ---------------------------------------------------------------------------------
def _texts(cfg: PipelineConfig) -> list[str]:
    """The documents the data stage reads too (every language, .gitignore honoured), before filtering."""

    return list(load_documents(SourceSpec(location=str(s)) for s in cfg.data.sources)["text"])


def _edge_means(losses: list[float]) -> tuple[float, float]:
    """Mean loss of the first and of the last tenth of the steps: one step's batch is too noisy to compare."""
    k = max(1, len(losses) // 10)
    return sum(losses[:k]) / k, sum(losses[-k:]) / k


def _base_spec(cfg: PipelineConfig) -> str:
    """base.model with a named base (`smollm2-135m`) replaced by its cached checkpoint directory."""
    from codellama.bases import BASES, resolve_base

    spec = cfg.base.model
    if spec in BASES and not Path(spec).is_dir():
        return str(resolve_base(spec))
    return spec


def _tokenizer_base(cfg: PipelineConfig) -> str | None:
    """The tokenizer to extend: the configured one, else a base checkpoint's own (None: train one)."""
    if cfg.tokenizer.base:
        return cfg.tokenizer.base
    spec = _base_spec(cfg)
    if is_checkpoint(spec) and tokenizer_file(spec) is not None:
        return spec
    return None


def run_tokenizer(ctx: RunContext) -> dict:

    cfg, out = _cfg(ctx), ctx.run_dir / "tokenizer"
    if tokenizer_file(out) is None:
        base = _tokenizer_base(cfg)
        if base:
            tok, _ = load_tokenizer(base, check_model=False).with_infilling_tokens()
        else:
            tok = CodeLlamaTokenizer.train(_texts(cfg), TrainOptions(vocab_size=cfg.tokenizer.vocab_size))
        shutil.rmtree(out, ignore_errors=True)
        save_tokenizer_dir(tok, out)
    tok = load_tokenizer(out)
    return {
        "path": str(out),
        "vocab_size": tok.vocab_size,
        "infilling_ids": [tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id],
    }


def plan_tokenizer(ctx: RunContext) -> dict:
    cfg = _cfg(ctx)
    base = _tokenizer_base(cfg)
    what = (
        f"extend the tokenizer of {base}"
        if base
        else f"train a {cfg.tokenizer.vocab_size}-piece BPE on {'the stdlib' if not cfg.data.sources else 'the sources'}"
    )
    return {"what": what}


# -- base model --------------------------------------------------------------------------------
def run_base(ctx: RunContext) -> dict:

    cfg, out = _cfg(ctx), ctx.run_dir / "base"
    tokenizer = load_tokenizer(ctx.outputs["tokenizer"]["path"])
    spec = _base_spec(cfg)
    old_vocab = None  # ids the base's own tokenizer had (new tokens past it start at the mean embedding)
    if not (out / "config.json").is_file():
        shutil.rmtree(out, ignore_errors=True)
        if spec in PRESETS:
            model = build_model(PRESETS[spec].replace(vocab_size=tokenizer.vocab_size), seed=cfg.seed)
        elif (Path(spec) / "params.json").is_file():
            converted = ctx.run_dir / "base-converted"
            if not (converted / "config.json").is_file():
                shutil.rmtree(converted, ignore_errors=True)
                convert_meta_to_hf(spec, converted)
            model = load_model(converted)
        elif is_checkpoint(spec):
            model = load_model(spec)
            if tokenizer_file(spec) is not None:
                old_vocab = load_tokenizer(spec, check_model=False).vocab_size
        else:
            raise FileNotFoundError(
                f"base.model {spec!r} is neither a preset ({', '.join(PRESETS)}), a Hugging Face "
                "checkpoint directory nor a Meta checkpoint directory"
            )
        rows = model.get_input_embeddings().weight.shape[0]
        grow_embeddings(model, tokenizer, min(old_vocab or rows, rows))
        save_checkpoint(model, out, tokenizer)
        shutil.rmtree(ctx.run_dir / "base-converted", ignore_errors=True)
    return {"path": str(out), "from": spec, "parameters": _parameters(out)}


def _parameters(model_dir: Path) -> int:

    return count_parameters(preset_from_config(load_config(model_dir)))


def plan_base(ctx: RunContext) -> dict:
    return {"what": f"base model from {_cfg(ctx).base.model}"}


# -- data --------------------------------------------------------------------------------------
def _recipe(cfg: PipelineConfig, branch: str):

    return resolve_config(branch, cfg.scale, list(cfg.branches.get(branch, [])))


def _data_configs(cfg: PipelineConfig) -> dict:
    """code: FIM data; python: Python files without FIM; long: whole-file packing at the LCFT length."""

    sources = tuple(SourceSpec(location=str(s)) for s in cfg.data.sources)
    python_sources = tuple(SourceSpec(location=s.location, languages=("python",)) for s in sources)
    fim = FimOptions(fim_rate=cfg.data.fim_rate, spm_rate=cfg.data.spm_rate, span_mode=cfg.data.span_mode)
    common = dict(seed=cfg.seed, max_documents=cfg.data.max_documents)
    return {
        "code": PrepareConfig(sources=sources, seq_len=_recipe(cfg, "code").seq_len, fim=fim, **common),
        "python": PrepareConfig(
            sources=python_sources, seq_len=_recipe(cfg, "python").seq_len, fim=FimOptions(fim_rate=0.0), **common
        ),
        "long": PrepareConfig(
            sources=sources, seq_len=_recipe(cfg, "long-context").seq_len, fim=fim, packing="whole-files", **common
        ),
    }


def run_data(ctx: RunContext) -> dict:

    tokenizer = load_tokenizer(ctx.outputs["tokenizer"]["path"])
    outputs = {}
    for name, config in _data_configs(_cfg(ctx)).items():
        out = ctx.run_dir / "data" / name
        index = ShardIndex.load(out) if (out / INDEX).is_file() else prepare(config, tokenizer, out)
        outputs[name] = {
            "path": str(out),
            "sequences": index.num_sequences,
            "seq_len": index.seq_len,
            "tokens": index.num_sequences * index.seq_len,
        }
    return outputs


def plan_data(ctx: RunContext) -> dict:
    return {
        name: f"seq_len {c.seq_len}, FIM {c.fim.fim_rate}, packing {c.packing}"
        for name, c in _data_configs(_cfg(ctx)).items()
    }


# -- training ----------------------------------------------------------------------------------
def _model_path(ctx: RunContext, branch: str) -> str:
    return ctx.outputs[TRAIN_STAGES[branch]]["path"]


def make_train_stage(branch: str) -> Stage:
    data_key = {"code": "code", "python": "python", "long-context": "long", "instruct": None}[branch]
    stage_name = TRAIN_STAGES[branch]

    def base_of(ctx: RunContext) -> str:
        return _model_path(ctx, BRANCH_FROM[branch]) if branch in BRANCH_FROM else ctx.outputs["base"]["path"]

    def run(ctx: RunContext) -> dict:

        cfg, out = _cfg(ctx), ctx.run_dir / stage_name
        data = (
            ctx.outputs["instruct-data"]["dataset"] if branch == "instruct" else ctx.outputs["data"][data_key]["path"]
        )
        overrides = list(cfg.branches.get(branch, []))
        extra = {}
        if branch == "instruct":
            extra["rehearsal"] = [{"path": ctx.outputs["data"]["code"]["path"], "weight": 0.06}]
        result = train_branch(
            branch,
            data=data,
            base=base_of(ctx),
            out=str(out),
            scale=cfg.scale,
            overrides=overrides,
            resume=(out / CONFIG_FILE).is_file(),
            tokenizer=ctx.outputs["tokenizer"]["path"],
            seed=cfg.seed,
            **extra,
        )

        curve = [[r["step"], r["loss"]] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
        first, final = _edge_means([loss for _, loss in curve]) if curve else (result.first_loss, result.last_loss)
        return {
            "path": str(result.final_dir),
            "steps": result.steps,
            "tokens": result.tokens,
            "first_loss": first,
            "final_loss": final,
            "curve": curve,
            "from": base_of(ctx),
            "parameters": _parameters(result.final_dir),
        }

    def plan(ctx: RunContext) -> dict:

        cfg = _cfg(ctx)
        recipe = _recipe(cfg, branch)
        preset = PRESETS.get(cfg.base.model)
        n = count_parameters(preset.replace(vocab_size=cfg.tokenizer.vocab_size)) if preset else None
        tokens = recipe.steps * recipe.tokens_per_step
        return {
            "steps": recipe.steps,
            "tokens": tokens,
            "seq_len": recipe.seq_len,
            "lr": recipe.optim.lr,
            "rope_base": recipe.rope.base,
            "flops": 6 * n * tokens if n else None,
            "from": BRANCH_FROM.get(branch, "base"),
        }

    depends = ("data",) if branch != "instruct" else ("instruct-data",)
    if branch in BRANCH_FROM:
        depends += (TRAIN_STAGES[BRANCH_FROM[branch]],)
    else:
        depends += ("base",)
    return Stage(stage_name, run, plan, description=f"train the {branch} branch", depends=depends)


# -- instruct data -----------------------------------------------------------------------------
def run_instruct_data(ctx: RunContext) -> dict:
    import json
    from dataclasses import replace

    cfg = _cfg(ctx)
    settings = cfg.instruct_data
    out = ctx.run_dir / "instruct-data"
    model_dir = _model_path(ctx, settings.from_)
    dataset = out / "dataset.jsonl"
    if not dataset.is_file():
        sandbox = LazySandboxPool()
        try:
            base = InstructDataConfig()
            tokens = settings.max_new_tokens
            self_instruct = run_pipeline(
                out / "self-instruct",
                InstructDataConfig(
                    questions=settings.questions,
                    solutions_per_question=settings.solutions_per_question,
                    seed=cfg.seed,
                    question_sampling=replace(base.question_sampling, max_new_tokens=tokens),
                    tests_sampling=replace(base.tests_sampling, max_new_tokens=tokens),
                    solution_sampling=replace(base.solution_sampling, max_new_tokens=tokens),
                ),
                question_model=lambda: HFGenerator.from_pretrained(model_dir, batch_size=16, overflow="skip"),
                solver_model=lambda: HFGenerator.from_pretrained(model_dir, batch_size=16, overflow="skip"),
                executor=sandbox,
                models={"question": model_dir, "solver": model_dir},
            )
        finally:
            sandbox.close()
        passed = list(read_chat_jsonl(self_instruct)) if Path(self_instruct).is_file() else []
        mined = docstring_pairs(_texts(cfg), limit=settings.stdlib_pairs, seed=cfg.seed)
        rows = [json.dumps({"messages": m}) for m in passed] + [json.dumps(r) for r in mined]
        if not rows:
            raise ValueError("no instruction data: self-instruct kept nothing and no docstring pairs were found")
        atomic_write_text(dataset, "\n".join(rows) + "\n")
    lines = dataset.read_text().splitlines()
    return {
        "dataset": str(dataset),
        "examples": len(lines),
        "self_instruct_summary": str(out / "self-instruct" / "summary.json"),
    }


def plan_instruct_data(ctx: RunContext) -> dict:
    s = _cfg(ctx).instruct_data
    return {
        "what": f"self-instruct {s.questions} questions x {s.solutions_per_question} solutions with the "
        f"{s.from_} model, checked in the sandbox, + up to {s.stdlib_pairs} docstring pairs"
    }


# -- evaluation --------------------------------------------------------------------------------
def make_eval_stage(branch: str) -> Stage:
    name = f"eval-{branch}"

    def run(ctx: RunContext) -> dict:
        cfg, out = _cfg(ctx), ctx.run_dir / name
        model_dir = _model_path(ctx, branch)
        results: dict = {}
        generator_cache: dict = {}

        def generator():
            if "g" not in generator_cache:
                generator_cache["g"] = HFGenerator.from_pretrained(model_dir, batch_size=16, overflow="skip")
            return generator_cache["g"]

        he = cfg.eval.humaneval
        if branch in he.models:
            results["humaneval"] = _humaneval(out / "humaneval", model_dir, he, generator, cfg.seed)
        inf = cfg.eval.infilling
        if branch in inf.models:
            results["infilling"] = _infilling(out / "infilling", model_dir, inf, generator, cfg.seed)
        lc = cfg.eval.long_context
        if branch in lc.models:
            results.update(_long_context(out, model_dir, lc, cfg.seed))
        return results

    def plan(ctx: RunContext) -> dict:
        cfg = _cfg(ctx)
        parts = []
        he = cfg.eval.humaneval
        if branch in he.models:
            n = he.limit or 164
            parts.append(
                f"HumanEval {n} problems greedy x {he.max_new_tokens} tokens"
                + (f" + {he.sampled.samples} samples each" if he.sampled else "")
            )
        inf = cfg.eval.infilling
        if branch in inf.models:
            parts.append(f"infilling {', '.join(inf.benchmarks)} (<= {inf.limit or 'all'} problems, PSM+SPM)")
        lc = cfg.eval.long_context
        if branch in lc.models:
            parts.append(f"long-ppl at {lc.ppl_lengths}, key retrieval at {lc.key_retrieval_lengths}")
        return {"what": "; ".join(parts) or "nothing configured"}

    return Stage(name, run, plan, description=f"score the {branch} model", depends=(TRAIN_STAGES[branch],))


def _humaneval(out: Path, model_dir: str, he: dict, generator, seed: int) -> dict:

    runs = [
        (
            "greedy",
            RunConfig(
                source=model_dir,
                samples=1,
                temperature=0.0,
                max_new_tokens=he.max_new_tokens,
                limit=he.limit,
                seed=seed,
                ks=(1,),
            ),
        )
    ]
    if he.sampled:
        s = he.sampled
        n = s.samples
        runs.append(
            (
                "sampled",
                RunConfig(
                    source=model_dir,
                    samples=n,
                    temperature=s.temperature,
                    top_p=s.top_p,
                    max_new_tokens=he.max_new_tokens,
                    limit=he.limit,
                    seed=seed,
                    ks=tuple(k for k in (1, 10, 100) if k <= n),
                ),
            )
        )
    summary: dict = {}
    for label, config in runs:
        report = run_humaneval(out / label, config, generator)
        for k, v in report["pass@k"].items():
            summary[k if label == "greedy" else f"{k} (T={config.temperature})"] = v
        if label == "greedy":
            summary.update(
                problems=report["problems"],
                failures=report["failure_kinds"],
                isolation=report["isolation"],
                warnings=report["warnings"],
            )
    return summary


def _infilling(out: Path, model_dir: str, inf: dict, generator, seed: int) -> dict:

    results = {}
    for bench in inf.benchmarks:
        config = BenchmarkConfig(
            benchmark=bench,
            limit=inf.limit,
            max_new_tokens=inf.max_new_tokens,
            seed=seed,
            ks=(1,),
            model=model_dir,
        )
        report = run_benchmark(config, out / bench, generator())
        results[bench] = {mode: {"pass@1": r["pass@k"].get("pass@1")} for mode, r in report["modes"].items()}
        results[bench]["problems"] = report["problems"]
    return results


def _long_context(out: Path, model_dir: str, lc: dict, seed: int) -> dict:

    out.mkdir(parents=True, exist_ok=True)
    ppl = evaluate_models({"model": model_dir}, lengths=lc.ppl_lengths, samples=lc.ppl_samples)
    atomic_write_json(out / "long_ppl.json", ppl)
    plot_long_ppl(ppl, out / "long_ppl.png")
    points = ppl["models"]["model"]["points"]

    tokenizer = load_tokenizer(model_dir)
    prompts = build_prompts(tokenizer, lc.key_retrieval_lengths, lc.key_retrieval_positions, [seed])
    longest = max(p.prompt_tokens for p in prompts) + 16
    generator = HFGenerator(load_model(model_dir), tokenizer, batch_size=4, max_context=longest)
    kr = run_key_retrieval(generator, prompts)
    atomic_write_json(out / "key_retrieval.json", kr)
    plot_key_retrieval(kr, out / "key_retrieval.png")
    by_length = {str(n): sum(row.values()) / len(row) for n, row in kr["accuracy"].items()}
    return {
        "long_ppl": {"lengths": [p["length"] for p in points], "ppl": [p["ppl"] for p in points]},
        "key_retrieval": {"accuracy_by_length": by_length, "overall": kr["overall"]},
    }


# -- report ------------------------------------------------------------------------------------
def run_report(ctx: RunContext) -> dict:

    cfg = _cfg(ctx)
    models = {}
    for branch, stage in TRAIN_STAGES.items():
        if stage not in ctx.outputs:
            continue
        t = ctx.outputs[stage]
        models[branch] = {
            "branch": branch,
            "base": BRANCH_FROM.get(branch, cfg.base.model),
            "path": t["path"],
            "parameters": t["parameters"],
            "train": {
                **{k: t[k] for k in ("curve", "tokens", "first_loss", "final_loss")},
                # where the branch starts on the family's step axis: after its parent
                "start_step": ctx.outputs[TRAIN_STAGES[BRANCH_FROM[branch]]]["steps"] if branch in BRANCH_FROM else 0,
            },
            **ctx.outputs.get(f"eval-{branch}", {}),
        }
    state = RunState(ctx.run_dir).data["finished"]
    results = {
        "config": cfg.to_dict(),
        "models": models,
        "stages": {s: {"seconds": r["seconds"]} for s, r in state.items()},
        "summary": f"Scale `{cfg.scale}`, base `{cfg.base.model}`, tokenizer "
        f"{ctx.outputs['tokenizer']['vocab_size']} pieces; config: {cfg.source}.",
    }
    paths = write_report(results, ctx.run_dir / "report")
    return {k: str(v) for k, v in paths.items()}


def build_stages(cfg: PipelineConfig) -> list[Stage]:
    stages = [
        Stage("tokenizer", run_tokenizer, plan_tokenizer, "train or extend the tokenizer"),
        Stage("base", run_base, plan_base, "the starting model", depends=("tokenizer",)),
        Stage("data", run_data, plan_data, "prepare FIM, Python and long-context shards", depends=("tokenizer",)),
        make_train_stage("code"),
        make_train_stage("python"),
        make_train_stage("long-context"),
        Stage(
            "instruct-data",
            run_instruct_data,
            plan_instruct_data,
            "self-instruct data checked in the sandbox",
            depends=("train-code",),
        ),
        make_train_stage("instruct"),
    ]
    stages += [make_eval_stage(b) for b in ("code", "python", "long-context", "instruct")]
    stages.append(
        Stage("report", run_report, lambda ctx: {"what": "report.md, results.json, PNG plots"}, "write the report")
    )
    return stages
