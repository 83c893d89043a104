"""`codellama pipeline`: the whole family in one resumable run directory."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from codellama.commands.args import add_set_option
from family.config import DEFAULT_CONFIG, with_new_settings

log = logging.getLogger(__name__)

EXAMPLES = """examples:
  codellama pipeline --run runs/family                      # the default config on the Python stdlib
  codellama pipeline --config smollm2 --run runs/smollm2    # the recipe on SmolLM2-135M, with the controls
  codellama pipeline --config tiny --run runs/tiny --set controls.no_fim=true   # smoke run + the no-FIM control
  codellama pipeline --config smollm2 --dry-run             # the plan, with token and compute budget per stage
  codellama pipeline --config my.yaml --run runs/family --stages eval-code,report
  codellama pipeline --show-default-config > my.yaml        # start your own config from the default

Built-in configs (--config NAME): tiny (a tiny model from scratch: the smoke run) and smollm2 (the
Code Llama recipe on SmolLM2-135M-Instruct with its controls: the base, code training without FIM,
RoPE scaling vs the raised base, chat-format HumanEval); `default` is the one run without --config.
A YAML file given to --config goes on top of the default config, or of the built-in config named by
its `extends: NAME` key (e.g. `extends: tiny`).

Interrupted at any stage, the same command resumes at the unfinished stage (finished stages are
skipped; training resumes from its last checkpoint, evaluation from its last finished sample).
At GPU scale set `scale: 7b` and `base.model: DIR` in the config and launch the training stages
under torchrun (`codellama train BRANCH ...` is what each training stage runs)."""


def register(cli) -> None:
    p = cli.command(
        "pipeline", help="foundation -> Python / long-context / instruct -> scored, with a report", epilog=EXAMPLES
    )
    p.add_argument(
        "--config",
        default="default",
        help=f"a built-in config by name (tiny, smollm2; default: {DEFAULT_CONFIG}) or a YAML file on top "
        "of the default",
    )
    add_set_option(p, "data.fim_rate=0.5")
    p.add_argument("--run", type=Path, default=Path("runs/family"), help="run directory (resumable)")
    p.add_argument("--stages", help="comma-separated subset of stages to (re)run")
    p.add_argument("--dry-run", action="store_true", help="print the plan and budgets; run nothing")
    p.add_argument(
        "--show-default-config",
        action="store_true",
        help="print the default config (with the list of built-in configs) and exit",
    )
    p.set_defaults(func=cmd_pipeline)


def cmd_pipeline(args: argparse.Namespace) -> int:
    from family.config import default_config_path, load_config, named_configs

    if args.show_default_config:
        names = ", ".join(f"{n} (the default)" if n == DEFAULT_CONFIG else n for n in named_configs())
        print(f"# built-in configs (--config NAME): {names}\n# this is {DEFAULT_CONFIG}.yaml:")
        print(default_config_path().read_text(), end="")
        return 0
    from codellama.config import BRANCHES
    from family.hardware import slow_machine_note
    from family.runner import RunContext, RunState, run_stages
    from family.stages import branch_recipe, build_stages

    cfg = load_config(args.config, args.overrides)
    stages = build_stages(cfg)
    only = {s.strip() for s in args.stages.split(",") if s.strip()} if args.stages else None
    ctx = RunContext(args.run, cfg)
    note = slow_machine_note(cfg, [branch_recipe(cfg, b).precision for b in BRANCHES])
    if note:
        log.warning("%s", note)
    if args.dry_run:
        return _print_plan(stages, ctx, only, RunState(args.run) if args.run.exists() else None)
    _check_same_config(args.run, cfg)
    outputs = run_stages(
        stages, ctx, only=only, on_stage=lambda name, what: print(f"[pipeline] {name}: {what}", flush=True)
    )
    if "report" in outputs:
        print(f"report: {outputs['report']['report']}\nresults: {outputs['report']['results']}")
    return 0


def _check_same_config(run: Path, cfg) -> None:
    """A run directory belongs to one config: resuming with another would mix results."""
    import json

    from codellama.io import atomic_write_json

    path = run / "config.json"
    if path.is_file():
        old = with_new_settings(json.loads(path.read_text()), cfg.to_dict())
        if old != cfg.to_dict():
            changed = sorted(k for k in set(old) | set(cfg.to_dict()) if old.get(k) != cfg.to_dict().get(k))
            raise ValueError(
                f"{run} was started with a different config (differs in: {', '.join(changed)}); "
                "use a new --run directory"
            )
    else:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, cfg.to_dict())


def _print_plan(stages, ctx, only, state) -> int:
    total_tokens = total_flops = 0
    print(f"run directory: {ctx.run_dir}   scale: {ctx.config.scale}   base: {ctx.config.base.model}")
    for stage in stages:
        if only and stage.name not in only:
            continue
        done = state is not None and state.finished(stage.name)
        plan = stage.plan(ctx)
        total_tokens += plan.get("tokens") or 0
        total_flops += plan.get("flops") or 0
        detail = ", ".join(f"{k}={_fmt(v)}" for k, v in plan.items())
        print(f"  {'[done] ' if done else ''}{stage.name:<20} {stage.description}: {detail}")
    print(f"training total: {total_tokens:,} tokens, {total_flops:.3g} FLOPs (6·N·tokens)")
    return 0


def _fmt(value) -> str:
    if isinstance(value, int) and value >= 10**12:
        return f"{value:.3g}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value:,}"
    if isinstance(value, float) and (value >= 1e6 or value < 1e-3):
        return f"{value:.3g}"
    return str(value)
