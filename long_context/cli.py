"""`codellama rope ...`, `codellama eval key-retrieval` and `codellama eval long-ppl`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from codellama.commands.args import model_dir, positive_int

log = logging.getLogger(__name__)

SCALING_HELP = "linear, dynamic, yarn or llama3 (optionally TYPE:FACTOR); 'default' removes scaling"


def register(cli) -> None:
    cli.group("rope", help="change or analyse a model's rotary position embedding (RoPE)")

    p = cli.command(
        "set",
        parent="rope",
        help="copy a checkpoint with a new RoPE base, context or scaling",
        epilog="examples:\n"
        "  # Code Llama's long-context setting\n"
        "  codellama rope set --base 1e6 --max-context 16384 runs/tiny runs/tiny-1m\n"
        "  # linear position interpolation to 4x the context\n"
        "  codellama rope set --scaling linear:4 runs/tiny runs/tiny-pi4\n"
        "  codellama rope set --scaling yarn --max-context 2048 runs/tiny runs/tiny-yarn\n"
        "  codellama rope set --scaling dynamic --factor 4 runs/tiny runs/tiny-ntk",
    )
    p.add_argument("model", type=model_dir, help="checkpoint directory or a named base")
    p.add_argument("out", type=Path, help="new checkpoint directory (must not exist)")
    p.add_argument("--base", type=float, help="RoPE base period (rope_theta), e.g. 1e6")
    p.add_argument("--max-context", type=positive_int, help="max_position_embeddings, e.g. 16384")
    p.add_argument("--scaling", help=SCALING_HELP)
    p.add_argument("--factor", type=float, help="scaling factor (default: max context / trained context)")
    p.set_defaults(func=cmd_rope_set)

    p = cli.command(
        "plot",
        parent="rope",
        help="plot rotation wavelengths and attention decay for RoPE settings",
        epilog="examples:\n"
        "  codellama rope plot --out rope.png               # head_dim 128, base 1e4 vs 1e6\n"
        "  codellama rope plot --head-dim 32 --base 1e4 --base 1e6 --base 1e7 --out rope32.png\n"
        "  codellama rope plot --base 1e4 --scaling linear:4 --scaling yarn:4 --context 4096 --out scaled.png\n"
        "writes the PNG and a JSON with the same numbers next to it",
    )
    p.add_argument("--head-dim", type=positive_int, default=128, help="rotary head dimension (default 128)")
    p.add_argument(
        "--base", type=float, action="append", help="base period; repeat to compare (default: 10000 and 1000000)"
    )
    p.add_argument(
        "--scaling",
        action="append",
        default=[],
        help="TYPE:FACTOR variant of the first base, e.g. linear:4 (repeatable)",
    )
    p.add_argument("--context", type=positive_int, default=4096, help="trained context (default 4096)")
    p.add_argument("--max-distance", type=positive_int, default=100_000, help="largest distance plotted")
    p.add_argument("--out", type=Path, required=True, help="PNG path")
    p.set_defaults(func=cmd_rope_plot)


def _check_new_file(path: Path) -> None:
    if path.exists():
        raise FileExistsError(f"output {path} already exists")


# -- handlers ---------------------------------------------------------------------------------
def cmd_rope_set(args: argparse.Namespace) -> int:
    from codellama.rope import parse_scaling, rope_set

    if args.base is None and args.max_context is None and args.scaling is None:
        raise ValueError("nothing to change: give --base, --max-context and/or --scaling")
    params = rope_set(
        args.model,
        args.out,
        base=args.base,
        max_context=args.max_context,
        scaling=parse_scaling(args.scaling, args.factor),
    )
    print(f"wrote {args.out}")
    print(json.dumps(params, indent=2))
    return 0


def cmd_rope_plot(args: argparse.Namespace) -> int:
    from codellama.io import atomic_write_json
    from codellama.rope import parse_scaling
    from long_context.rope_analysis import RopeVariant, analyse, plot

    if args.out.suffix.lower() != ".png":
        raise ValueError(f"--out must be a .png path, got {args.out}")
    json_path = args.out.with_suffix(".json")
    for path in (args.out, json_path):
        _check_new_file(path)
    bases = args.base or [10_000.0, 1_000_000.0]
    variants = [RopeVariant(b, context=args.context) for b in bases]
    for spec in args.scaling:
        scaling = parse_scaling(spec)
        if scaling.get("rope_type") != "default" and "factor" not in scaling:
            raise ValueError(f"--scaling {spec!r} needs a factor, e.g. {spec}:4")
        variants.append(RopeVariant(bases[0], scaling, context=args.context))
    analysis = analyse(args.head_dim, variants, args.max_distance)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(analysis, args.out)
    atomic_write_json(json_path, analysis)
    print(f"{'variant':<32}{'longest wavelength':>20}{'pairs turning in context':>26}{'bound at max dist':>19}")
    for v in analysis["variants"]:
        print(
            f"{v['label']:<32}{v['wavelengths'][-1]:>20,.0f}{v['pairs_turning_within_context']:>26}"
            f"{v['decay_bound'][-1]:>19.3f}"
        )
    print(f"wrote {args.out} and {json_path}")
    return 0
