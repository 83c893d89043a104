"""The training loop every branch runs: shards in, checkpoints and an HF model out.

Each step consumes one global batch of `batch_tokens` tokens, split over ranks and then into
micro-batches (gradient accumulation). The loss of every micro-batch is a *sum* over its target
tokens divided by the number of target tokens in the whole global batch, so accumulation and
data parallelism change nothing in the maths: 1 process or W ranks take the same step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from codellama import rundir
from codellama.checkpoint import check_checkpoint, load_model, save_checkpoint
from codellama.data.chat import prepare_chat_shards
from codellama.data.shards import ShardIndex
from codellama.io import atomic_write_json, atomic_write_text, read_jsonl
from codellama.model import build_model, empty_model, rebuild_rotary, resize_vocab_mean_init, set_gradient_checkpointing
from codellama.presets import PRESETS
from codellama.rope import set_rope
from codellama.tokenizer import N_EXTRA_PIECES, load_tokenizer, tokenizer_file
from codellama.train import distributed as dist_utils
from codellama.train import state
from codellama.train.config import TrainConfig, apply_overrides, from_dict, resolve_config
from codellama.train.data import MixedStream, count_targets, open_stream, rank_batch
from codellama.train.distributed import DistEnv
from codellama.train.loss import causal_lm_loss, release_buffers
from codellama.train.metrics import METRICS_FILE, PLOT_FILE, MetricsLog, plot_loss
from codellama.train.precision import BF16Twin, describe, native_bf16, resolve, use_bf16_weights
from codellama.train.schedule import cosine_schedule

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"
FINAL = "final"
# Written at the start of a run but not work: a start that fails removes them, a rerun replaces them.
SCRATCH = (CONFIG_FILE, "tb")


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    start_step: int
    first_loss: float | None
    last_loss: float | None
    tokens: int
    tokens_per_s: float
    final_dir: Path | None
    plot: Path | None


# -- setup ---------------------------------------------------------------------------------------
def load_base_model(config: TrainConfig, vocab_size: int, *, dtype: torch.dtype | str = torch.float32):
    """Base weights (checkpoint dir) or a fresh model (preset name), with the data's vocabulary.

    `dtype="auto"` keeps a checkpoint in its stored precision (a fresh model is fp32).
    """

    if config.base_kind == "checkpoint":
        model = load_model(config.base, dtype=dtype)
        if model.config.vocab_size < vocab_size:
            resize_vocab_mean_init(model, vocab_size)  # Llama 2 (32,000) -> Code Llama pieces (32,016)
    else:
        preset = PRESETS[config.base].replace(vocab_size=vocab_size)
        model = build_model(preset, seed=config.seed)
        log.info("fresh %s model (%s parameters)", config.base, f"{sum(p.numel() for p in model.parameters()):,}")
    if config.rope.base is not None or config.rope.max_context is not None or config.rope.scaling is not None:
        set_rope(model, base=config.rope.base, max_context=config.rope.max_context, scaling=config.rope.scaling)
    if config.seq_len > model.config.max_position_embeddings:
        log.warning(
            "training on %d-token sequences, beyond the model's context of %d",
            config.seq_len,
            model.config.max_position_embeddings,
        )
    model.config.use_cache = False
    return model


def build_training_model(config: TrainConfig, vocab_size: int, env: DistEnv, *, precision: str):
    """The model this rank trains, on its device (sharded under torchrun).

    Under FSDP only rank 0 loads the base weights; every rank builds an empty twin on the meta
    device, shards it, and receives its shards from rank 0. Host memory is then one full model on
    rank 0 instead of one per rank (8 x 280 GB for a 70B fp32 model on one node otherwise).
    """
    from transformers import LlamaConfig

    if env.distributed:
        # Rank 0 keeps the checkpoint's own precision (bf16 for Meta's: half the host memory); every
        # rank's shards are fp32 masters, so the broadcast upcasts exactly.
        base = load_base_model(config, vocab_size, dtype="auto") if env.is_main else None
        shape = dist_utils.broadcast_object(base.config.to_dict() if base is not None else None, env)
        model = empty_model(LlamaConfig.from_dict(shape)).to(torch.float32)
        model.config.use_cache = False
    else:
        model = base = load_base_model(config, vocab_size)
    if model.config.vocab_size < vocab_size:
        raise ValueError(f"the data uses {vocab_size} token ids but the model has only {model.config.vocab_size}")
    if config.gradient_checkpointing:
        set_gradient_checkpointing(model, True, offload=config.activation_offload)
    if config.compile and not use_bf16_weights(precision):  # (the bf16 twin compiles its own layers)
        for layer in model.model.layers:
            layer.compile()
    if not env.distributed:
        return model.to(env.device)
    dist_utils.shard_model(
        model,
        env,
        param_dtype=torch.bfloat16 if precision != "fp32" and env.device.type == "cuda" else None,
        shard_size=config.fsdp_shard_size,
    )
    dist_utils.load_full_state_from_rank0(model, base.state_dict() if base is not None else {}, env)
    del base
    rebuild_rotary(model, env.device)
    return model


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (norm gains stay undecayed, as in Llama)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.optim.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    # The fused kernel (CPU and CUDA) does the update in one pass instead of ~10 per tensor; FSDP's
    # DTensor shards keep the default multi-tensor path.
    plain = all(type(p) is torch.nn.Parameter and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(
        groups, lr=config.optim.lr, betas=tuple(config.optim.betas), eps=config.optim.eps, fused=plain or None
    )


def _tokenizer_for(config: TrainConfig):

    if config.tokenizer:
        return load_tokenizer(config.tokenizer)
    if Path(config.base).is_dir() and tokenizer_file(config.base) is not None:
        return load_tokenizer(config.base)
    return None


def _check_data_expectations(config: TrainConfig, stream: MixedStream) -> None:
    meta = stream.sources[0].view.shards.index.meta
    if isinstance(meta.get("config"), dict):  # `codellama data prepare` records its settings there
        meta = {**meta["config"], **meta}
    for key, expected in config.data_expect.items():
        if key in meta and meta[key] != expected:
            log.warning(
                "the %s recipe expects %s=%s but %s was prepared with %s=%s",
                config.branch,
                key,
                expected,
                config.data,
                key,
                meta[key],
            )
    if config.branch == "instruct" and not stream.has_loss_mask:
        log.warning("instruct data without a loss mask: every token is trained on, not only answers")


@dataclass
class RunInputs:
    """What a run was checked to start from: the tokenizer it exports and the run's fingerprint."""

    tokenizer: object | None  # CodeLlamaTokenizer exported with the final weights (None: none known)
    fingerprint: dict = field(default_factory=dict)


def _data_tokenizer_sha(index) -> str | None:
    """The sha256 of the tokenizer a shard set was made with (`data prepare` records it)."""
    meta = index.meta or {}
    recorded = meta.get("tokenizer")
    sha = recorded.get("sha256") if isinstance(recorded, dict) else None
    return sha or meta.get("tokenizer_sha256")


def check_inputs(config: TrainConfig, *, allow_tokenizer_mismatch: bool = False, fingerprint: bool = True) -> RunInputs:
    """Every input of a run, checked before anything is written or trained.

    Shards, rehearsal shards, the base (config.json and weights) and the tokenizer to export are
    opened; the tokenizer the data's ids were made with (index.json records its sha256) must be the
    one exported with the model (--tokenizer, else the base's), and the base's vocabulary must hold
    the data's ids (growing it is only for Code Llama's 16 extra pieces on a Llama 2 base).
    """

    data = Path(config.data)
    if data.is_file():
        raise ValueError(
            f"{data} is a file; training reads token shards: pack chat data with `codellama data prepare-chat` "
            "(`codellama train instruct --data CHAT.jsonl` does it for you)"
        )
    tokenizer = _tokenizer_for(config)  # a garbage tokenizer.model is an error now, not after training
    shard_sets = [(str(data), ShardIndex.load(data))]  # missing or unfinished: one-line error
    shard_sets += [(extra["path"], ShardIndex.load(extra["path"])) for extra in config.rehearsal]
    base_vocab = None
    if config.base_kind == "checkpoint":
        base_vocab = check_checkpoint(config.base).vocab_size

    reference = tokenizer.fingerprint() if tokenizer is not None else None
    exported = f"the tokenizer {config.tokenizer}" if config.tokenizer else f"the base's tokenizer ({config.base})"
    data_sha = None
    for path, index in shard_sets:
        sha = _data_tokenizer_sha(index)
        problem = None
        if sha is not None and reference is not None and sha != reference:
            problem = (
                f"{path} was tokenized with another tokenizer (sha256 {sha[:12]}) than {exported} ({reference[:12]})"
            )
        elif tokenizer is not None and index.vocab_size != tokenizer.vocab_size:
            problem = f"{path} has {index.vocab_size} token ids but {exported} has {tokenizer.vocab_size}"
        elif sha is not None and data_sha is not None and sha != data_sha:
            problem = f"{path} and {config.data} were tokenized with different tokenizers ({sha[:12]}, {data_sha[:12]})"
        if problem and not allow_tokenizer_mismatch:
            raise ValueError(
                f"{problem}: the model would ship with a tokenizer its ids were not trained with "
                "(use data made with the model's tokenizer, or pass --allow-tokenizer-mismatch)"
            )
        if problem:
            log.warning("%s (allowed by --allow-tokenizer-mismatch)", problem)
        if sha is None:
            log.warning("%s does not record its tokenizer (no sha256 in index.json): not checked", path)
        data_sha = data_sha or sha
    vocab = shard_sets[0][1].vocab_size
    if base_vocab is not None and base_vocab < vocab and vocab != base_vocab + N_EXTRA_PIECES:
        raise ValueError(
            f"the base {config.base} has a vocabulary of {base_vocab} but the data uses {vocab} token ids: "
            f"only Code Llama's {N_EXTRA_PIECES} extra pieces can be added to a base; use the base's tokenizer"
        )
    if not fingerprint:  # (ranks other than 0 under torchrun: only rank 0 claims the run directory)
        return RunInputs(tokenizer)
    record = {
        "branch": config.branch,
        "tokenizer_sha256": data_sha or reference,
        "data": rundir.file_sha256(data / "index.json"),
        "rehearsal": {
            extra["path"]: rundir.file_sha256(Path(extra["path"]) / "index.json") for extra in config.rehearsal
        },
        "base": rundir.source_fingerprint(config.base) if config.base_kind == "checkpoint" else {"preset": config.base},
    }
    return RunInputs(tokenizer, record)


# -- the loop ------------------------------------------------------------------------------------
def train(
    config: TrainConfig, *, resume: bool = False, progress: bool = True, allow_tokenizer_mismatch: bool = False
) -> TrainResult:
    """Run (or resume) one branch's training; under torchrun every rank calls this.

    Every input is checked before the run directory is claimed (`codellama.rundir`): a new run
    refuses a directory holding another run's work, `resume` continues the run there (refusing
    data made with another tokenizer), and a start that fails leaves nothing that blocks a rerun.
    """
    if not config.data:
        raise ValueError("no training data: pass --data (a shard directory)")
    if not config.out:
        raise ValueError("no output directory: pass --out")
    out = Path(config.out)
    env = dist_utils.init(config.device)
    if env.distributed and use_bf16_weights(config.precision):
        raise ValueError(
            "precision=bf16-weights is for one process; under torchrun FSDP2 keeps fp32 shards and gathers "
            "them in bf16 already: use precision=bf16 (or auto)"
        )
    if not env.is_main:  # one voice: other ranks only warn
        logging.getLogger("codellama").setLevel(logging.WARNING)
    inputs = check_inputs(config, allow_tokenizer_mismatch=allow_tokenizer_mismatch, fingerprint=env.is_main)
    config.accumulation_steps(env.world_size)  # a batch that does not split is an error before any write
    claim, refused = contextlib.nullcontext(), None
    if env.is_main:
        allow = ("data", "rehearsal", "base") + (("tokenizer_sha256",) if allow_tokenizer_mismatch else ())
        try:
            claim = rundir.claim(
                out,
                "train",
                inputs.fingerprint,
                existing="resume" if resume else "refuse",
                allow=allow,
                scratch=SCRATCH,
                hint="resume with data made with the same tokenizer (or --allow-tokenizer-mismatch)",
            )
        except (OSError, ValueError) as exc:
            refused = exc
    message = dist_utils.broadcast_object(str(refused) if refused else None, env)  # every rank stops, not only 0
    if refused is not None:
        raise refused
    if message is not None:
        raise FileExistsError(message)
    with claim:
        if env.is_main:
            atomic_write_text(
                out / CONFIG_FILE, yaml.safe_dump(json.loads(json.dumps(config.to_dict())), sort_keys=False)
            )
        return _train(config, out, env, inputs, resume=resume, progress=progress)


def _train(config: TrainConfig, out: Path, env: DistEnv, inputs: RunInputs, *, resume: bool, progress: bool):
    torch.manual_seed(config.seed)

    stream = open_stream(config.data, config.rehearsal, config.seq_len, config.seed)
    _check_data_expectations(config, stream)
    accum = config.accumulation_steps(env.world_size)
    vocab = stream.sources[0].view.shards.vocab_size

    precision = resolve(config.precision, env.device, distributed=env.distributed)
    if precision != "fp32" and not native_bf16(env.device):
        log.warning(
            "precision %s on a %s without native bf16 matrix products: they are emulated, ~100x slower "
            "than fp32 on an AVX2-only CPU (precision=auto picks fp32 there)",
            precision,
            env.device.type,
        )
    bf16 = precision != "fp32"
    model = build_training_model(config, vocab, env, precision=precision)
    model.train()
    optimizer = build_optimizer(model, config)
    total_steps = config.steps
    scheduler = cosine_schedule(
        optimizer,
        warmup_steps=config.schedule.warmup_steps,
        total_steps=total_steps,
        min_ratio=config.schedule.min_lr_ratio,
    )

    start = 0
    ckpt_root = out / CHECKPOINTS
    latest = state.latest_checkpoint(ckpt_root) if resume else None
    if latest is not None:
        start = state.load(latest, model=model, optimizer=optimizer, scheduler=scheduler, env=env)["step"]
    elif resume:
        log.info("no checkpoint in %s yet: starting from step 0", ckpt_root)
    metrics = MetricsLog(out, resume_step=start) if env.is_main else None

    twin = None  # bf16-weights: a bf16 copy computes, `model` keeps the fp32 masters (codellama.train.precision)
    if use_bf16_weights(precision):
        twin = BF16Twin(model)
        if config.compile:
            for layer in twin.model.model.layers:
                layer.compile()
    compute = twin.model if twin is not None else model
    autocast = (
        (lambda: torch.autocast(env.device.type, dtype=torch.bfloat16))
        if bf16 and twin is None
        else contextlib.nullcontext
    )
    compute_dtype = torch.bfloat16 if bf16 else torch.float32
    params = [p for p in model.parameters() if p.requires_grad]
    hsdp = env.distributed and dist_utils.shard_mesh_shape(env, config.fsdp_shard_size)[0] > 1
    log.info(
        "training %s/%s: steps %d..%d, %d tokens/step, %d rank(s) x %d micro-batches of %d, %s",
        config.branch,
        config.scale,
        start,
        total_steps,
        config.tokens_per_step,
        env.world_size,
        accum,
        config.micro_batch_size,
        describe(precision),
    )
    bar = None
    if env.is_main and progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=start, unit="step", desc=f"train {config.branch}", dynamic_ncols=True)

    first_loss = last_loss = None
    rate = 0.0
    train_time = 0.0
    try:
        for step in range(start, total_steps):
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            tokens, labels = rank_batch(
                stream, step, batch_sequences=config.batch_sequences, rank=env.rank, world_size=env.world_size
            )
            n_targets = max(1.0, dist_utils.all_sum(count_targets(labels), env))
            loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
            for micro in range(accum):
                if hsdp:  # replicas all-reduce once per step, not per micro-batch (shard groups still reduce-scatter)
                    model.set_requires_all_reduce(micro == accum - 1)
                rows = slice(micro * config.micro_batch_size, (micro + 1) * config.micro_batch_size)
                x, y = tokens[rows].to(env.device, non_blocking=True), labels[rows].to(env.device, non_blocking=True)
                loss = causal_lm_loss(compute, x, y, autocast=autocast, compute_dtype=compute_dtype) / n_targets
                (loss * env.world_size).backward()  # FSDP averages over ranks; we want the sum
                if twin is not None:
                    twin.accumulate_grads()
                loss_sum += loss.detach()
            max_norm = config.optim.grad_clip if config.optim.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
            optimizer.step()
            if twin is not None:
                twin.refresh()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step_loss = dist_utils.all_sum(loss_sum.item(), env)
            if env.device.type == "cuda":
                torch.cuda.synchronize(env.device)
            elapsed = time.perf_counter() - t0
            train_time += elapsed
            rate = config.tokens_per_step / elapsed
            first_loss = step_loss if first_loss is None else first_loss
            last_loss = step_loss
            if not math.isfinite(step_loss):
                raise FloatingPointError(f"loss is {step_loss} at step {step + 1}: lower optim.lr or check the data")
            done = step + 1
            if metrics is not None and (done % config.log_every == 0 or done == total_steps):
                metrics.log(
                    {
                        "step": done,
                        "loss": step_loss,
                        "lr": lr,
                        "grad_norm": float(grad_norm),
                        "tokens": done * config.tokens_per_step,
                        "tokens_per_s": rate,
                        "step_time_s": elapsed,
                    }
                )
            if bar is not None:
                bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{rate:,.0f}", refresh=False)
                bar.update(1)
            if done < total_steps and config.checkpoint_every and done % config.checkpoint_every == 0:
                _save(out, done, model, optimizer, scheduler, config, env)
        if start < total_steps:
            _save(out, total_steps, model, optimizer, scheduler, config, env)
    finally:
        release_buffers()
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()

    final_dir = export_final(model, config, out / FINAL, env, overwrite=resume, tokenizer=inputs.tokenizer)
    plot = None
    if env.is_main:
        records = [r for r in read_jsonl(out / METRICS_FILE) if r["step"] <= total_steps]
        plot = plot_loss(records, out / PLOT_FILE, title=f"{config.branch} ({config.scale})")
        first_loss = records[0]["loss"] if records else first_loss
        last_loss = records[-1]["loss"] if records else last_loss
        atomic_write_json(
            out / "summary.json",
            {
                "branch": config.branch,
                "scale": config.scale,
                "steps": total_steps,
                "resumed_from": start,
                "first_loss": first_loss,
                "last_loss": last_loss,
                "tokens": total_steps * config.tokens_per_step,
                "tokens_per_s": (total_steps - start) * config.tokens_per_step / train_time if train_time else None,
                "world_size": env.world_size,
                "precision": precision,
                "final": str(final_dir),
            },
        )
    dist_utils.barrier(env)
    return TrainResult(
        out,
        total_steps,
        start,
        first_loss,
        last_loss,
        total_steps * config.tokens_per_step,
        (total_steps - start) * config.tokens_per_step / train_time if train_time else 0.0,
        final_dir,
        plot,
    )


def _save(out: Path, step: int, model, optimizer, scheduler, config: TrainConfig, env: DistEnv) -> None:
    state.save(
        out / CHECKPOINTS,
        step,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        env=env,
        keep=config.keep_checkpoints,
        trainer={
            "samples_seen": step * config.batch_sequences,
            "tokens_seen": step * config.tokens_per_step,
            "branch": config.branch,
            "scale": config.scale,
        },
    )


def export_final(model, config: TrainConfig, target: Path, env: DistEnv, *, overwrite: bool, tokenizer=None) -> Path:
    """Hugging Face checkpoint of the trained weights (+ tokenizer); gathered to rank 0 under FSDP."""

    if env.distributed:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        plain = None
        if env.is_main:
            plain = empty_model(model.config)
            plain.load_state_dict(full, assign=True)
            rebuild_rotary(plain)
    else:
        plain = model
    if env.is_main:
        if config.gradient_checkpointing:
            set_gradient_checkpointing(plain, False)
        plain.config.use_cache = True
        save_checkpoint(plain, target, tokenizer or _tokenizer_for(config), overwrite=overwrite)
    dist_utils.barrier(env)
    return target


def train_branch(
    branch: str,
    *,
    data: str | None = None,
    out: str,
    base: str | None = None,
    scale: str = "tiny",
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = False,
    progress: bool = True,
    allow_tokenizer_mismatch: bool = False,
    **fields,
) -> TrainResult:
    """What a pipeline calls: `train_branch("code", data="runs/shards", base="runs/tiny", out="runs/code")`.

    With resume=True the run's saved config is reused (given fields and overrides still apply).
    """

    fields = {"data": data, "out": out, "base": base, **fields}
    if resume and (Path(out) / CONFIG_FILE).is_file():
        config = resume_config(out, fields, overrides)
    else:
        config = resolve_config(branch, scale, overrides, **fields)
    return train(
        pack_chat_data(config), resume=resume, progress=progress, allow_tokenizer_mismatch=allow_tokenizer_mismatch
    )


def pack_chat_data(config: TrainConfig) -> TrainConfig:
    """An instruct run given a chat JSONL: the data layer packs it into token shards first.

    Training itself reads shards only; this is the convenience step the `train` command and the
    pipeline take. The shards are cached by content (the chat file's and tokenizer's sha256 and the
    sequence length), so a rerun or resume reuses them and other chat data gets its own. Under
    torchrun rank 0 packs and the other ranks wait for it.
    """
    if config.branch != "instruct" or not config.data or not Path(config.data).is_file():
        return config
    tokenizer = _tokenizer_for(config)
    if tokenizer is None:
        raise ValueError("packing chat data needs a tokenizer: pass --tokenizer or a --base checkpoint with one")
    main = int(os.environ.get("RANK", "0")) == 0
    shards = prepare_chat_shards(config.data, tokenizer, None, config.seq_len, main=main)
    return dataclasses.replace(config, data=str(shards))


# -- resume --------------------------------------------------------------------------------------
def load_run_config(out: str | Path) -> dict:
    """The resolved config a run was started with."""
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{out} is not a training run (no {CONFIG_FILE}); start it without --resume")
    return yaml.safe_load(path.read_text())


def resume_config(
    out: str | Path, fields: dict | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """The run's saved config, with fields given again (None = keep) and `key=value` overrides on top."""

    raw = load_run_config(out)
    raw.update({k: v for k, v in (fields or {}).items() if v is not None})
    return from_dict(apply_overrides(raw, overrides))
