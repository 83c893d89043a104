"""`codellama train BRANCH`: continued training with Code Llama's recipes (or a dry-run plan)."""

from __future__ import annotations

import argparse
from pathlib import Path

from codellama.commands.args import add_set_option, model_spec
from codellama.config import BRANCHES, SCALES

EXAMPLES = """examples:
  # the tiny foundation branch on shards from `codellama data prepare` (CPU, a few minutes)
  codellama train code --base runs/tiny --data runs/shards --out runs/code
  # then Python, long-context and instruct on top of it
  codellama train python --base runs/code/final --data runs/py-shards --out runs/python
  codellama train long-context --base runs/python/final --data runs/shards --out runs/lcft
  codellama train instruct --base runs/lcft/final --data chats.jsonl --rehearsal runs/shards:0.06 --out runs/instruct
  # override any recipe field; continue a killed run exactly where its last checkpoint left it
  codellama train code --data runs/shards --out runs/code --set optim.lr=1e-3 --set max_steps=500
  codellama train code --out runs/code --resume
  # on one CPU or GPU: a bf16 copy of the model computes, fp32 master weights take the step (faster than autocast)
  codellama train code --base smollm2-135m --data shards --out runs/code --set precision=bf16-weights
  # what a 7B run needs: steps, token budget, memory per GPU on 4 nodes of 8 GPUs
  codellama train code --scale 7b --nodes 4 --dry-run
  # multi-GPU / multi-node: the same command under torchrun (FSDP2; HSDP across nodes)
  torchrun --nproc-per-node 8 -m codellama.cli train code --scale 7b --base llama2-7b-hf --data shards --out runs/7b
  torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m codellama.cli \\
      train code --scale 34b --base llama2-34b-hf --data shards --out runs/34b --set fsdp_shard_size=16

recipes: codellama/train/recipes/<branch>.yaml (Code Llama paper settings per scale)."""


def register(cli) -> None:
    p = cli.command(
        "train", help="train a branch (code, python, long-context, instruct) with Code Llama's recipe", epilog=EXAMPLES
    )
    p.add_argument("branch", choices=BRANCHES, help="which Code Llama training stage")
    p.add_argument("--scale", choices=SCALES, default="tiny", help="recipe scale (default: tiny, runs on a CPU)")
    p.add_argument(
        "--base",
        type=model_spec,
        help="checkpoint directory, named base or preset name to start from (default: the recipe's)",
    )
    p.add_argument("--data", help="shard directory (instruct: also a chat JSONL file)")
    p.add_argument("--out", help="run directory: config, metrics, checkpoints, final/ HF checkpoint, loss.png")
    p.add_argument("--tokenizer", help="tokenizer to export with the final weights (default: the base's)")
    p.add_argument(
        "--rehearsal",
        action="append",
        default=[],
        metavar="DIR:WEIGHT",
        help="extra shard set mixed in at this fraction of samples (repeatable)",
    )
    add_set_option(p, "optim.lr=1e-4, max_steps=200, precision=fp32")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument(
        "--allow-tokenizer-mismatch",
        action="store_true",
        help="train on data made with another tokenizer than the one exported with the model (normally refused)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the resolved config, steps, tokens and memory; train nothing"
    )
    p.add_argument("--world-size", type=int, help="GPUs in total, for --dry-run (default: nodes x 8; tiny: 1)")
    p.add_argument("--nodes", type=int, default=1, help="nodes of 8 GPUs, for --dry-run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (metrics still go to metrics.jsonl)")
    p.set_defaults(func=cmd_train)


def parse_rehearsal(items: list[str]) -> list[dict] | None:
    out = []
    for item in items:
        path, sep, weight = item.rpartition(":")
        try:
            out.append({"path": path, "weight": float(weight)})
        except ValueError:
            sep = ""
        if not sep or not path:
            raise ValueError(f"bad --rehearsal {item!r}: expected DIR:WEIGHT, e.g. runs/shards:0.06")
    return out or None


def cmd_train(args: argparse.Namespace) -> int:
    from codellama.train import loop
    from codellama.train.config import resolve_config

    fields = {
        "base": args.base,
        "data": args.data,
        "out": args.out,
        "tokenizer": args.tokenizer,
        "rehearsal": parse_rehearsal(args.rehearsal),
    }
    if args.resume:
        if not args.out:
            raise ValueError("--resume needs --out (the run directory)")
        config = loop.resume_config(args.out, fields, args.overrides)
        if config.branch != args.branch:
            raise ValueError(f"{args.out} is a {config.branch!r} run, not {args.branch!r}")
    else:
        config = resolve_config(args.branch, args.scale, args.overrides, **fields)
    if args.dry_run:
        print(dry_run_report(config, world_size=args.world_size, nodes=args.nodes))
        return 0
    result = loop.train(
        loop.pack_chat_data(config),
        resume=args.resume,
        progress=not args.no_progress,
        allow_tokenizer_mismatch=args.allow_tokenizer_mismatch,
    )
    if _is_main():
        print(
            f"trained {config.branch} ({config.scale}): steps {result.start_step}->{result.steps}, "
            f"loss {result.first_loss:.4f} -> {result.last_loss:.4f}, {result.tokens_per_s:,.0f} tokens/s"
        )
        print(f"final weights: {result.final_dir}")
        print(f"metrics: {Path(result.out_dir) / 'metrics.jsonl'}  plot: {result.plot}")
    return 0


def _is_main() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def dry_run_report(config, *, world_size: int | None = None, nodes: int = 1) -> str:
    """The plan of a run: resolved config, steps, token budget and memory per GPU."""
    import json

    import yaml

    from codellama.train.memory import estimate
    from codellama.train.precision import describe, resolve

    if nodes < 1 or (world_size is not None and world_size < 1):
        raise ValueError("--nodes and --world-size must be >= 1")
    world = world_size or (1 if config.scale == "tiny" else 8 * nodes)
    preset = _model_shape(config)
    lines = [f"# {config.description or config.branch} [{config.scale}]", "config:"]
    raw = yaml.safe_dump(json.loads(json.dumps(config.to_dict())), sort_keys=False)
    lines += ["  " + line for line in raw.rstrip().splitlines()]
    try:
        accum = config.accumulation_steps(world)
        split = f"{accum} micro-batch(es) of {config.micro_batch_size} sequence(s) per rank per step"
    except ValueError as exc:
        split = f"does not split: {exc}"
    device = "cuda" if config.scale != "tiny" else "cpu"
    import torch

    if device == "cuda" and config.precision == "auto":
        precision = "bf16"  # planned for GPUs that have bf16 (the machine showing the plan may have none)
    else:
        precision = resolve(config.precision, torch.device(device), distributed=world > 1)
    bf16 = precision != "fp32"
    from codellama.train.distributed import DistEnv, shard_mesh_shape

    per_node = world // nodes if world % nodes == 0 else world
    replicas, shard = shard_mesh_shape(DistEnv(world_size=world, local_world_size=per_node), config.fsdp_shard_size)
    sharding = f"FSDP over {shard}" if replicas == 1 else f"HSDP: sharded over {shard}, {replicas} replicas"
    mem = estimate(
        preset,
        seq_len=config.seq_len,
        micro_batch_size=config.micro_batch_size,
        world_size=shard,
        gradient_checkpointing=config.gradient_checkpointing,
        bf16=bf16,
        twin=precision == "bf16-weights",
    )
    budget = config.steps * config.tokens_per_step
    lines += [
        "plan:",
        f"  model               {preset.name}: {mem.parameters:,} parameters ({mem.parameters / 1e9:.2f}B)",
        f"  world size          {world} ({'GPUs' if device == 'cuda' else 'process(es)'})",
        f"  steps               {config.steps:,}",
        f"  tokens per step     {config.tokens_per_step:,} ({config.batch_sequences:,} sequences of {config.seq_len:,})",
        f"  token budget        {budget:,} ({budget / 1e9:.2f}B)",
        f"  batch split         {split}",
        f"  precision           {describe(precision)}"
        f"{', activation checkpointing' if config.gradient_checkpointing else ''}"
        f"{', torch.compile' if config.compile else ''}",
        f"memory per {'GPU' if device == 'cuda' else 'process'} (estimate, {sharding}):",
        f"  weights fp32        {mem.params_gib:9.2f} GiB",
        f"  gradients fp32      {mem.grads_gib:9.2f} GiB",
        f"  AdamW moments       {mem.optimizer_gib:9.2f} GiB",
        f"  gathered layers     {mem.gathered_gib:9.2f} GiB",
        *([f"  bf16 twin + grads   {mem.twin_gib:9.2f} GiB"] if mem.twin_gib else []),
        f"  activations         {mem.activations_ckpt_gib:9.2f} GiB with checkpointing, "
        f"{mem.activations_gib:.2f} GiB without",
        f"  output layer + loss {mem.logits_gib:9.2f} GiB",
        f"  total               {mem.total_gib:9.2f} GiB as configured "
        f"({mem.total_other_gib:.2f} GiB {'without' if config.gradient_checkpointing else 'with'} checkpointing)",
    ]
    return "\n".join(lines)


def _model_shape(config):
    from codellama.checkpoint import load_config
    from codellama.model import preset_from_config
    from codellama.presets import PRESETS

    if config.base_kind == "checkpoint":
        preset = preset_from_config(load_config(config.base))
    else:
        preset = PRESETS[config.base]
    if config.data and (Path(config.data) / "index.json").is_file():
        from codellama.data.shards import ShardIndex

        preset = preset.replace(vocab_size=max(preset.vocab_size, ShardIndex.load(config.data).vocab_size))
    return preset
