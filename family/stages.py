"""The family's stages, each a thin call into the library that owns the step.

tokenizer -> base -> data -> train-code -> {train-python, train-long-context, instruct-data -> train-instruct}
-> eval-<model> for every model -> report. The controls a config asks for add train-code-nofim (train-code's
documents, budget, seed and recipe at FIM rate 0), eval-base, eval-code-nofim and eval-rope (the code model
under RoPE scaling against the long-context fine-tuned one). Each stage writes under RUN/<stage>/ and resumes
through its owner's own mechanism (training checkpoints, eval JSONL, data progress records).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import torch
from tqdm.auto import tqdm

from codellama.checkpoint import load_config, load_model, save_checkpoint
from codellama.config import serving_dtype
from codellama.convert import convert_meta_to_hf
from codellama.data.chat import read_chat_jsonl
from codellama.data.dedup import DedupConfig, near_dedup
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
from codellama.rope import set_rope, trained_context
from codellama.tokenizer import CodeLlamaTokenizer, TrainOptions, load_tokenizer, save_tokenizer_dir, tokenizer_file
from codellama.train.config import resolve_config
from codellama.train.loop import CONFIG_FILE, train_branch
from evals.code_loss import CodeLossConfig, code_loss
from evals.execution import HUMANEVAL_STOPS
from evals.infilling import NLL_FILE, BenchmarkConfig, pass_at_1_by_problem, run_benchmark
from evals.run import RunConfig, run_humaneval
from evals.sandbox import LazySandboxPool
from family.config import PipelineConfig
from family.hardware import machine
from family.report import write_report
from family.runner import RunContext, RunState, Stage
from family.split import chunk_rows, is_heldout, split_documents
from long_context.key_retrieval import build_prompts, plot_key_retrieval, run_key_retrieval
from long_context.perplexity import corpus_tokens, evaluate_models, plot_long_ppl, prefix_token_nll, sample_windows

log = logging.getLogger(__name__)

TRAIN_STAGES = {
    "code": "train-code",
    "python": "train-python",
    "long-context": "train-long-context",
    "instruct": "train-instruct",
}
# Where each branch starts from (Code Llama: Python, long-context and instruct all continue the code model).
BRANCH_FROM = {"python": "code", "long-context": "code", "instruct": "code"}
# The stage whose output holds each model (the controls included).
MODEL_STAGES = {"base": "base", "code": "train-code", "code-nofim": "train-code-nofim", **TRAIN_STAGES}
# The long-context comparison: the code model under each RoPE scaling (no training) against the LCFT model.
ROPE_METHODS = ("untouched", "linear", "dynamic-ntk", "yarn", "raised-base")
ROPE_SCALING = {"linear": "linear", "dynamic-ntk": "dynamic", "yarn": "yarn"}


def _cfg(ctx: RunContext) -> PipelineConfig:
    return ctx.config


# -- documents ---------------------------------------------------------------------------------
def _documents(cfg: PipelineConfig) -> list[dict]:
    """Every document of the sources (every language, .gitignore honoured), before filtering: text, path, language."""
    docs = load_documents(SourceSpec(location=str(s)) for s in cfg.data.sources)
    return [
        {"text": t, "path": p, "language": lang} for t, p, lang in zip(docs["text"], docs["path"], docs["language"])
    ]


def _texts(cfg: PipelineConfig) -> list[str]:
    """The training documents' texts (held-out files left out): what the tokenizer and instruct pairs see."""
    return [d["text"] for d in _documents(cfg) if not is_heldout(d["path"], cfg.data.heldout_fraction)]


def _uses_document_files(cfg: PipelineConfig) -> bool:
    """Whether the data stage writes its own document files (a held-out split or row-sized FIM units);
    otherwise the shards read the sources directly, as the tiny run always did."""
    return cfg.data.heldout_fraction > 0 or cfg.data.fim_unit == "row"


def _unit_tokens(cfg: PipelineConfig) -> int:
    """The size of a row FIM unit in tokens: data.fim_unit_tokens, at most (and by default) the code row."""
    row = branch_recipe(cfg, "code").seq_len
    unit = cfg.data.fim_unit_tokens or row
    if unit > row:
        raise ValueError(f"data.fim_unit_tokens {unit} is longer than the code branch's rows ({row} tokens)")
    return unit


def _document_files(run_dir: Path) -> dict[str, Path]:
    docs = run_dir / "data" / "documents"
    return {
        "train": docs / "train.jsonl",  # whole training documents (long context)
        "code": docs / "code.jsonl",  # the code and no-FIM shards' documents (row-sized chunks with fim_unit row)
        "python": docs / "python.jsonl",
        "heldout": docs / "heldout.jsonl",
    }


def _near_deduplicated(docs: list[dict]) -> list[dict]:
    """The files less their near-duplicates, before they are cut into FIM units: the code shards then skip
    their own near-dedup, which on ~40k units of 256 tokens took ~40 s for each of code and no-FIM."""
    import datasets

    kept, _ = near_dedup(datasets.Dataset.from_list(docs))
    return kept.to_list()


def _write_document_files(cfg: PipelineConfig, tokenizer, run_dir: Path) -> dict:
    """Split the sources into training and held-out files and write them as JSONL (once; reused on resume)."""
    files = _document_files(run_dir)
    if not all(p.is_file() for p in files.values()):
        train, heldout = split_documents(_documents(cfg), cfg.data.heldout_fraction)
        code = train
        if cfg.data.fim_unit == "row":
            code = chunk_rows(
                _near_deduplicated(train),
                lambda lines: [len(ids) for ids in tokenizer.encode_batch(lines)],
                _unit_tokens(cfg),
            )
        python = [d for d in train if d["language"] == "python"]
        for key, rows in (("train", train), ("code", code), ("python", python), ("heldout", heldout)):
            atomic_write_text(files[key], "".join(json.dumps(r) + "\n" for r in rows))
    counts = {k: sum(1 for _ in p.open()) for k, p in files.items()}
    return {"files": {k: str(p) for k, p in files.items()}, "documents": counts}


# -- tokenizer ---------------------------------------------------------------------------------


def _edge_means(losses: list[float]) -> tuple[float, float]:
    """Mean loss of the first and of the last tenth of the steps: one step's batch is too noisy to compare."""
    k = max(1, len(losses) // 10)
    return sum(losses[:k]) / k, sum(losses[-k:]) / k


def _base_spec(cfg: PipelineConfig) -> str:
    """base.model with a named base (`smollm2-135m`) replaced by its cached checkpoint directory."""
    from codellama.bases import named_base_path

    resolved = named_base_path(cfg.base.model)
    return str(resolved) if resolved else cfg.base.model


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
def branch_recipe(cfg: PipelineConfig, branch: str):
    """A branch's training recipe with the config's overrides (budget, learning rate, precision)."""
    return resolve_config(branch, cfg.scale, list(cfg.branches.get(branch, [])))


def _data_configs(cfg: PipelineConfig, run_dir: Path) -> dict:
    """code: FIM data; code-nofim (a control): the same documents at FIM rate 0; python: Python files
    without FIM; long: whole-file packing at the LCFT length."""

    fim = FimOptions(fim_rate=cfg.data.fim_rate, spm_rate=cfg.data.spm_rate, span_mode=cfg.data.span_mode)
    common = dict(seed=cfg.seed, max_documents=cfg.data.max_documents)

    def sample(branch: str) -> dict:
        return {"sample_bytes": _sample_bytes(cfg, branch)}

    if _uses_document_files(cfg):
        files = _document_files(run_dir)
        code_sources = (SourceSpec(location=str(files["code"]), name="code"),)
        python_sources = (SourceSpec(location=str(files["python"]), name="python"),)
        long_sources = (SourceSpec(location=str(files["train"]), name="train"),)
    else:
        code_sources = long_sources = tuple(SourceSpec(location=str(s)) for s in cfg.data.sources)
        python_sources = tuple(SourceSpec(location=s.location, languages=("python",)) for s in code_sources)
    # row-sized FIM units are packed whole (padded), so no FIM example is cut across rows
    code_packing = "whole-files" if cfg.data.fim_unit == "row" else "concat"
    code_len = branch_recipe(cfg, "code").seq_len
    # FIM units are cut from files already near-deduplicated (_write_document_files)
    dedup = DedupConfig(near=cfg.data.fim_unit != "row")
    code = dict(seq_len=code_len, packing=code_packing, dedup=dedup, **common, **sample("code"))
    configs = {"code": PrepareConfig(sources=code_sources, fim=fim, **code)}
    if cfg.controls.no_fim:  # the same sample of documents (same seed and byte budget): only FIM differs
        configs["code-nofim"] = PrepareConfig(sources=code_sources, fim=FimOptions(fim_rate=0.0), **code)
    configs["python"] = PrepareConfig(
        sources=python_sources,
        seq_len=branch_recipe(cfg, "python").seq_len,
        fim=FimOptions(fim_rate=0.0),
        **common,
        **sample("python"),
    )
    configs["long"] = PrepareConfig(
        sources=long_sources,
        seq_len=branch_recipe(cfg, "long-context").seq_len,
        fim=fim,
        packing="whole-files",
        **common,
        **sample("long-context"),
    )
    return configs


# the prepared data each model trains on, and the branch recipe (budget) it trains with
DATA_OF = {"code": "code", "code-nofim": "code-nofim", "python": "python", "long-context": "long"}
DATA_BRANCH = {data: "code" if model == "code-nofim" else model for model, data in DATA_OF.items()}
SAMPLE_BYTES_PER_TOKEN = 4  # above what code takes in these tokenizers (~3 bytes a token), so a sample over-provides


def _sample_bytes(cfg: PipelineConfig, branch: str) -> int | None:
    """The bytes of documents a branch's data is prepared from: `data.sample_factor` times its training tokens."""
    if cfg.data.sample_factor is None:
        return None
    recipe = branch_recipe(cfg, branch)
    return math.ceil(cfg.data.sample_factor * recipe.steps * recipe.tokens_per_step * SAMPLE_BYTES_PER_TOKEN)


def run_data(ctx: RunContext) -> dict:

    cfg = _cfg(ctx)
    tokenizer = load_tokenizer(ctx.outputs["tokenizer"]["path"])
    outputs = {}
    if _uses_document_files(cfg):
        outputs["documents"] = _write_document_files(cfg, tokenizer, ctx.run_dir)
    for name, config in _data_configs(cfg, ctx.run_dir).items():
        out = ctx.run_dir / "data" / name
        index = ShardIndex.load(out) if (out / INDEX).is_file() else prepare(config, tokenizer, out)
        trains = DATA_BRANCH[name]
        budget = branch_recipe(cfg, trains).steps * branch_recipe(cfg, trains).tokens_per_step
        if config.sample_bytes is not None and index.num_sequences * index.seq_len < budget:
            log.warning(
                "data/%s: the document sample holds %d tokens, fewer than the %d that %s trains on (it will repeat "
                "them); raise data.sample_factor",
                name,
                index.num_sequences * index.seq_len,
                budget,
                trains,
            )
        outputs[name] = {
            "path": str(out),
            "sequences": index.num_sequences,
            "seq_len": index.seq_len,
            "tokens": index.num_sequences * index.seq_len,
        }
    return outputs


def plan_data(ctx: RunContext) -> dict:
    cfg = _cfg(ctx)
    plan = {
        name: f"seq_len {c.seq_len}, FIM {c.fim.fim_rate}, packing {c.packing}"
        for name, c in _data_configs(cfg, ctx.run_dir).items()
    }
    if cfg.data.sample_factor is not None:
        plan["sample"] = (
            f"a uniform sample of the documents: {cfg.data.sample_factor:g}x each branch's training tokens "
            f"(at {SAMPLE_BYTES_PER_TOKEN} bytes a token)"
        )
    if cfg.data.heldout_fraction:
        plan["heldout"] = f"{cfg.data.heldout_fraction:.0%} of the files (by path hash), seen by no training stage"
    if cfg.data.fim_unit == "row":
        unit = _unit_tokens(cfg)
        plan["fim_unit"] = (
            f"chunks of at most {unit} tokens cut at line ends, one FIM example per chunk, packed whole into "
            f"{branch_recipe(cfg, 'code').seq_len}-token rows: never across rows"
        )
    return plan


# -- training ----------------------------------------------------------------------------------
def _model_path(ctx: RunContext, model: str) -> str:
    return ctx.outputs[MODEL_STAGES[model]]["path"]


def make_train_stage(model: str) -> Stage:
    """The training stage of a branch, or of the no-FIM control (the code recipe on the no-FIM shards)."""
    branch = "code" if model == "code-nofim" else model
    data_key = DATA_OF.get(model)
    stage_name = MODEL_STAGES[model]
    # the no-FIM control differs from train-code only in its shards: same recipe, overrides, budget and seed
    control = ["data_expect.fim_rate=0.0"] if model == "code-nofim" else []

    def base_of(ctx: RunContext) -> str:
        return _model_path(ctx, BRANCH_FROM[branch]) if branch in BRANCH_FROM else ctx.outputs["base"]["path"]

    def run(ctx: RunContext) -> dict:

        cfg, out = _cfg(ctx), ctx.run_dir / stage_name
        data = (
            ctx.outputs["instruct-data"]["dataset"] if branch == "instruct" else ctx.outputs["data"][data_key]["path"]
        )
        overrides = list(cfg.branches.get(branch, [])) + control
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
        summary = out / "summary.json"
        precision = json.loads(summary.read_text()).get("precision") if summary.is_file() else None
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
            "precision": precision,  # what `auto` became on this machine
        }

    def plan(ctx: RunContext) -> dict:

        cfg = _cfg(ctx)
        recipe = branch_recipe(cfg, branch)
        n = _planned_parameters(cfg)
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
    what = "the code recipe at FIM rate 0 (control)" if model == "code-nofim" else f"the {branch} branch"
    return Stage(stage_name, run, plan, description=f"train {what}", depends=depends)


def _planned_parameters(cfg: PipelineConfig) -> int | None:
    """The model's size for the FLOP budget: a preset's, or a named base's once it is cached (None: unknown)."""
    from codellama.bases import BASES, cached_path, is_cached

    preset = PRESETS.get(cfg.base.model)
    if preset:
        return count_parameters(preset.replace(vocab_size=cfg.tokenizer.vocab_size))
    if cfg.base.model in BASES and is_cached(cfg.base.model):
        return _parameters(cached_path(cfg.base.model))
    if is_checkpoint(cfg.base.model):
        return _parameters(Path(cfg.base.model))
    return None


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
                question_model=lambda: eval_generator(cfg, model_dir),  # the eval dtype (bf16 on AMX CPUs)
                solver_model=lambda: eval_generator(cfg, model_dir),
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
def eval_dtype(cfg: PipelineConfig) -> torch.dtype:
    """Every scored model's dtype; `auto`: bfloat16 where it is native and fast (a GPU, a CPU with AMX), float32
    elsewhere (an AVX2-only CPU emulates bf16 ~100x slower than fp32)."""
    return serving_dtype(cfg.eval.dtype)


def eval_generator(cfg: PipelineConfig, model_dir) -> HFGenerator:
    """The generator every score of a model uses: the config's eval dtype and batch; an overlong prompt is
    scored as failed, not an error."""
    return HFGenerator.from_pretrained(
        model_dir, batch_size=cfg.eval.batch_size, overflow="skip", dtype=eval_dtype(cfg)
    )


def make_eval_stage(model: str) -> Stage:
    name = f"eval-{model}"

    def run(ctx: RunContext) -> dict:
        cfg, out = _cfg(ctx), ctx.run_dir / name
        model_dir = _model_path(ctx, model)
        results: dict = {}
        generator_cache: dict = {}

        def generator():
            if "g" not in generator_cache:
                generator_cache["g"] = eval_generator(cfg, model_dir)
            return generator_cache["g"]

        he = cfg.eval.humaneval
        if _scored(model, he):
            style = _prompt_style(model, model_dir)
            results["humaneval"] = _humaneval(out / "humaneval", model_dir, he, generator, cfg.seed, prompt=style)
        if cfg.controls.chat and model in ("code", "instruct"):
            results["humaneval_chat"] = _humaneval(
                out / "humaneval-chat", model_dir, he, generator, cfg.seed, prompt="chat", sampled=False
            )
        inf = cfg.eval.infilling
        if _scored(model, inf):
            results["infilling"] = _infilling(out / "infilling", model_dir, inf, generator, cfg.seed)
        lc = cfg.eval.long_context
        if _scored(model, lc):
            results.update(_long_context(out, model_dir, lc, _ppl_lengths(cfg), cfg.seed, eval_dtype(cfg)))
        if _scored(model, cfg.eval.code_loss):
            heldout = ctx.outputs["data"]["documents"]["files"]["heldout"]
            results["code_loss"] = held_out_code_loss(
                out / "code-loss", model_dir, heldout, cfg.eval.code_loss, eval_dtype(cfg)
            )
        return results

    def plan(ctx: RunContext) -> dict:
        cfg = _cfg(ctx)
        parts = []
        he = cfg.eval.humaneval
        if _scored(model, he):
            n = he.limit or 164
            parts.append(
                f"HumanEval {n} problems greedy x {he.max_new_tokens} tokens"
                + (
                    f" (chat prompt x {he.chat_max_new_tokens} if the base has a chat template)"
                    if model == "base"
                    else ""
                )
                + (f" + {he.sampled.samples} samples each" if he.sampled else "")
            )
        if cfg.controls.chat and model in ("code", "instruct"):
            parts.append(
                f"HumanEval {he.limit or 164} problems with chat-format prompts x {he.chat_max_new_tokens} tokens"
            )
        inf = cfg.eval.infilling
        if _scored(model, inf):
            modes = "+".join(m.upper() for m in inf.modes)
            parts.append(
                "infilling "
                + ", ".join(f"{b} (<= {inf.limit_for(b) or 'all'} problems)" for b in inf.benchmarks)
                + f" in {modes}"
                + (", middle NLL" if inf.nll else "")
            )
        lc = cfg.eval.long_context
        if _scored(model, lc):
            parts.append(f"long-ppl at {_ppl_lengths(cfg)}, key retrieval at {lc.key_retrieval_lengths}")
        cl = cfg.eval.code_loss
        if _scored(model, cl):
            parts.append(f"held-out code loss (<= {cl.max_tokens or 'all'} tokens, rows of {cl.seq_len})")
        return {"what": "; ".join(parts) or "nothing configured"}

    depends = (MODEL_STAGES[model],) + (("data",) if model == "base" else ())
    return Stage(name, run, plan, description=f"score the {model} model", depends=depends)


def _scored(model: str, section) -> bool:
    """Whether an eval section scores a model: the ones it names, and the controls (the base, the no-FIM
    model) wherever the code model is scored, so each comparison has both sides."""
    return model in section.models or (model in ("base", "code-nofim") and "code" in section.models)


def _prompt_style(model: str, model_dir: str) -> str:
    """HumanEval's prompt for a model: chat for a base that ships a chat template (an instruct base such as
    SmolLM2-Instruct answers a raw prompt in prose), raw (the model continues the code) otherwise."""
    if model == "base" and load_tokenizer(model_dir).chat_template:
        return "chat"
    return "raw"


def _ppl_lengths(cfg: PipelineConfig) -> list[int]:
    """The perplexity lengths: the configured ones plus the multiples of the long-context fine-tuning length."""
    lc = cfg.eval.long_context
    lcft = branch_recipe(cfg, "long-context").seq_len
    return sorted(set(lc.ppl_lengths) | {f * lcft for f in lc.ppl_factors})


def _humaneval(
    out: Path, model_dir: str, he, generator, seed: int, *, prompt: str = "raw", sampled: bool = True
) -> dict:
    # a chat answer restates the function in a code block and ends at the end of its turn, not at a stop line
    chat = prompt == "chat"
    tokens = he.chat_max_new_tokens if chat else he.max_new_tokens
    stops = () if chat else HUMANEVAL_STOPS

    runs = [
        (
            "greedy",
            RunConfig(
                source=model_dir,
                samples=1,
                temperature=0.0,
                max_new_tokens=tokens,
                stops=stops,
                limit=he.limit,
                seed=seed,
                ks=(1,),
                prompt=prompt,
            ),
        )
    ]
    if he.sampled and sampled:
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
                    max_new_tokens=tokens,
                    stops=stops,
                    limit=he.limit,
                    seed=seed,
                    ks=tuple(k for k in (1, 10, 100) if k <= n),
                    prompt=prompt,
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
                prompt=prompt,
                per_problem=per_problem_pass(read_jsonl(out / label / "results.jsonl")),
            )
    return summary


def per_problem_pass(records) -> dict[str, float]:
    """task_id -> the fraction of its executed samples that passed (greedy: 0 or 1), for paired intervals."""
    totals: dict[str, list[int]] = {}
    for r in records:
        t = totals.setdefault(r["task_id"], [0, 0])
        t[0] += bool(r["passed"])
        t[1] += 1
    return {task: passed / n for task, (passed, n) in sorted(totals.items())}


def _infilling(out: Path, model_dir: str, inf, generator, seed: int) -> dict:

    results = {}
    for bench in inf.benchmarks:
        config = BenchmarkConfig(
            benchmark=bench,
            modes=tuple(inf.modes),
            limit=inf.limit_for(bench),
            max_new_tokens=inf.max_new_tokens,
            seed=seed,
            ks=(1,),
            model=model_dir,
            nll=inf.nll,
        )
        report = run_benchmark(config, out / bench, generator())
        results[bench] = {
            mode: {
                "pass@1": r["pass@k"].get("pass@1"),
                "per_problem": dict(sorted(pass_at_1_by_problem(out / bench, mode).items())),
            }
            for mode, r in report["modes"].items()
        }
        results[bench]["problems"] = report["problems"]
        if inf.nll:
            nll_records = list(read_jsonl(out / bench / NLL_FILE))
            results[bench]["nll"] = {
                **report["nll"],
                "per_problem": {
                    mode: per_problem_nll(r for r in nll_records if r["mode"] == mode)
                    for mode in report["nll"]["modes"]
                },
            }
    return results


def per_problem_nll(records) -> dict[str, list[float]]:
    """task_id -> [NLL per token of the true middle, its tokens] (the tokens weight the paired interval)."""
    return {
        r["task_id"]: [r["nll"] / r["tokens"], r["tokens"]]
        for r in sorted(records, key=lambda r: r["task_id"])
        if r["tokens"] > 0
    }


def _long_context(out: Path, model_dir: str, lc, lengths: list[int], seed: int, dtype: torch.dtype) -> dict:

    out.mkdir(parents=True, exist_ok=True)
    ppl = evaluate_models({"model": model_dir}, lengths=lengths, samples=lc.ppl_samples, dtype=dtype)
    atomic_write_json(out / "long_ppl.json", ppl)
    plot_long_ppl(ppl, out / "long_ppl.png")
    points = ppl["models"]["model"]["points"]

    tokenizer = load_tokenizer(model_dir)
    prompts = build_prompts(tokenizer, lc.key_retrieval_lengths, lc.key_retrieval_positions, [seed])
    longest = max(p.prompt_tokens for p in prompts) + 16
    generator = HFGenerator(load_model(model_dir, dtype=dtype), tokenizer, batch_size=4, max_context=longest)
    kr = run_key_retrieval(generator, prompts)
    atomic_write_json(out / "key_retrieval.json", kr)
    plot_key_retrieval(kr, out / "key_retrieval.png")
    by_length = {str(n): sum(row.values()) / len(row) for n, row in kr["accuracy"].items()}
    return {
        "long_ppl": {"lengths": [p["length"] for p in points], "ppl": [p["ppl"] for p in points]},
        "key_retrieval": {"accuracy_by_length": by_length, "overall": kr["overall"]},
    }


def held_out_code_loss(out: Path, model_dir: str, heldout: str, settings, dtype: torch.dtype) -> dict:
    """The held-out files' left-to-right loss (the first files in path order, up to max_tokens)."""
    report_path = out / "report.json"
    if report_path.is_file():
        return json.loads(report_path.read_text())
    rows = sorted(read_jsonl(heldout), key=lambda r: r["path"])
    if not rows:
        raise ValueError(f"{heldout} holds no file: raise data.heldout_fraction (or add sources) for the code loss")
    model, tokenizer = load_model(model_dir, dtype=dtype), load_tokenizer(model_dir)
    config = CodeLossConfig(context=settings.seq_len, max_tokens=settings.max_tokens)
    with torch.inference_mode():
        report = code_loss(model, tokenizer, [r["text"] for r in rows], names=[r["path"] for r in rows], config=config)
    atomic_write_json(report_path, report)
    return report


# -- long context: RoPE scaling against the raised base --------------------------------------------
def _rope_model(method: str, code_dir: str, lcft_dir: str, factor: float, dtype: torch.dtype):
    """The model a method scores: the LCFT model (raised base), or the code model with its RoPE scaled in memory."""
    if method == "raised-base":
        return load_model(lcft_dir, dtype=dtype)
    model = load_model(code_dir, dtype=dtype)
    if method in ROPE_SCALING:
        set_rope(model, scaling={"rope_type": ROPE_SCALING[method], "factor": factor})
    return model


def _ppl_windows(tokenizer, heldout: str | None, samples: int, length: int) -> tuple[torch.Tensor, str]:
    """`samples` windows of `length` tokens: from the held-out files when they are long enough, else the stdlib."""
    if heldout:
        texts = [r["text"] for r in sorted(read_jsonl(heldout), key=lambda r: r["path"])]
        try:
            return sample_windows(corpus_tokens(tokenizer, samples * length, texts), samples, length), "held-out files"
        except ValueError as exc:
            log.warning("perplexity windows from the stdlib: the held-out files are too short (%s)", exc)
    return sample_windows(corpus_tokens(tokenizer, samples * length), samples, length), "the stdlib"


def run_rope(ctx: RunContext) -> dict:
    """Perplexity at 1x/2x/4x the fine-tuning length and key retrieval for every RoPE method, per window."""
    cfg, out = _cfg(ctx), ctx.run_dir / "eval-rope"
    lc = cfg.eval.long_context
    code_dir, lcft_dir = _model_path(ctx, "code"), _model_path(ctx, "long-context")
    lengths = _ppl_lengths(cfg)
    if not lengths:
        raise ValueError("eval-rope needs eval.long_context.ppl_factors (or ppl_lengths)")
    trained = trained_context(load_config(code_dir))
    factor = max(1.0, max(lengths) / trained)
    tokenizer = load_tokenizer(code_dir)
    heldout = ((ctx.outputs["data"].get("documents") or {}).get("files") or {}).get("heldout")
    windows, corpus = _ppl_windows(tokenizer, heldout, lc.ppl_samples, max(lengths))
    kr_lengths = lc.key_retrieval_lengths or lengths
    prompts = build_prompts(tokenizer, kr_lengths, lc.key_retrieval_positions or [0.5], [cfg.seed])
    methods = {}
    for method in ROPE_METHODS:
        path = out / f"{method}.json"
        if path.is_file():  # resume: a finished method is not scored again
            methods[method] = json.loads(path.read_text())
            continue
        model = _rope_model(method, code_dir, lcft_dir, factor, eval_dtype(cfg))
        model.eval()
        with torch.inference_mode():
            by_window = [  # one forward a window scores every length (prefix_token_nll)
                prefix_token_nll(model, row, lengths) for row in tqdm(windows, desc=f"long-ppl {method}", unit="window")
            ]
            nll = [[float(w[n].double().mean()) for w in by_window] for n in lengths]
        generator = HFGenerator(model, tokenizer, batch_size=4, max_context=max(p.prompt_tokens for p in prompts) + 16)
        kr = run_key_retrieval(generator, prompts)
        entry = {
            "rope_parameters": dict(model.config.rope_parameters),
            "max_position_embeddings": model.config.max_position_embeddings,
            "nll": nll,  # [length][window]: mean NLL per token of each window (equal token counts)
            "ppl": [math.exp(sum(row) / len(row)) for row in nll],
            "key_retrieval": {
                "accuracy_by_length": {str(n): sum(r.values()) / len(r) for n, r in kr["accuracy"].items()},
                "overall": kr["overall"],
            },
        }
        atomic_write_json(path, entry)
        methods[method] = entry
        del model, generator
    return {
        "lengths": lengths,
        "fine_tune_length": branch_recipe(cfg, "long-context").seq_len,
        "trained_context": trained,
        "scaling_factor": factor,
        "samples": int(windows.shape[0]),
        "corpus": corpus,
        "methods": methods,
    }


def plan_rope(ctx: RunContext) -> dict:
    cfg = _cfg(ctx)
    return {
        "what": f"the code model untouched / linear / dynamic NTK / YaRN (no training) and the LCFT model: "
        f"perplexity at {_ppl_lengths(cfg)} ({cfg.eval.long_context.ppl_samples} windows each) "
        f"and key retrieval at {cfg.eval.long_context.key_retrieval_lengths or _ppl_lengths(cfg)}"
    }


# -- report ------------------------------------------------------------------------------------
def run_report(ctx: RunContext) -> dict:

    cfg = _cfg(ctx)
    models = {}
    if "eval-base" in ctx.outputs:  # the untouched base is a model of the report only when it was scored
        b = ctx.outputs["base"]
        models["base"] = {"branch": "base", "base": cfg.base.model, "path": b["path"], "parameters": b["parameters"]}
        models["base"].update(ctx.outputs["eval-base"])
    for model, stage in MODEL_STAGES.items():
        if model == "base" or stage not in ctx.outputs:
            continue
        t = ctx.outputs[stage]
        branch = "code" if model == "code-nofim" else model
        models[model] = {
            "branch": branch,
            "base": BRANCH_FROM.get(branch, cfg.base.model),
            "path": t["path"],
            "parameters": t["parameters"],
            "train": {
                **{k: t[k] for k in ("curve", "tokens", "first_loss", "final_loss")},
                "precision": t.get("precision"),
                # where the branch starts on the family's step axis: after its parent
                "start_step": ctx.outputs[TRAIN_STAGES[BRANCH_FROM[branch]]]["steps"] if branch in BRANCH_FROM else 0,
            },
            **ctx.outputs.get(f"eval-{model}", {}),
        }
    state = RunState(ctx.run_dir).data["finished"]
    results = {
        "config": cfg.to_dict(),
        "models": models,
        **({"rope": ctx.outputs["eval-rope"]} if "eval-rope" in ctx.outputs else {}),
        "stages": {s: {"seconds": r["seconds"]} for s, r in state.items()},
        "machine": machine(cfg),
        "summary": f"Scale `{cfg.scale}`, base `{cfg.base.model}`, tokenizer "
        f"{ctx.outputs['tokenizer']['vocab_size']} pieces; config: {cfg.source}.",
        "recipe": _recipe_table(cfg, models),
        "notes": cfg.notes.strip(),
    }
    paths = write_report(results, ctx.run_dir / "report")
    return {k: str(v) for k, v in paths.items()}


def _recipe_table(cfg: PipelineConfig, models: dict) -> dict:
    """What each trained model's recipe was (the report's Recipe table): rows, budget, schedule, RoPE, data."""
    table = {}
    for name in models:
        if name == "base":
            continue
        branch = "code" if name == "code-nofim" else name
        r = branch_recipe(cfg, branch)
        fim = 0.0 if name in ("code-nofim", "python", "instruct") else cfg.data.fim_rate
        table[name] = {
            "seq_len": r.seq_len,
            "batch_tokens": r.tokens_per_step,
            "steps": r.steps,
            "tokens": r.steps * r.tokens_per_step,
            "lr": r.optim.lr,
            "warmup_steps": r.schedule.warmup_steps,
            "rope_base": r.rope.base,
            "fim_rate": fim,
        }
    return table


def build_stages(cfg: PipelineConfig) -> list[Stage]:
    """The stages of a run, in order; the controls' stages only when the config asks for them."""
    controls = cfg.controls
    stages = [
        Stage("tokenizer", run_tokenizer, plan_tokenizer, "train or extend the tokenizer"),
        Stage("base", run_base, plan_base, "the starting model", depends=("tokenizer",)),
        Stage("data", run_data, plan_data, "prepare FIM, Python and long-context shards", depends=("tokenizer",)),
        make_train_stage("code"),
        *([make_train_stage("code-nofim")] if controls.no_fim else []),
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
    evaluated = ["base"] if controls.base else []
    evaluated += ["code"] + (["code-nofim"] if controls.no_fim else []) + ["python", "long-context", "instruct"]
    stages += [make_eval_stage(m) for m in evaluated]
    if controls.rope_scaling:
        stages.append(
            Stage(
                "eval-rope",
                run_rope,
                plan_rope,
                "long context: RoPE scaling of the code model vs the raised base",
                depends=("data", "train-code", "train-long-context"),
            )
        )
    stages.append(
        Stage("report", run_report, lambda ctx: {"what": "report.md, results.json, PNG plots"}, "write the report")
    )
    return stages
