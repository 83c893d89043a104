"""`codellama rope ...`, `codellama eval key-retrieval` and `codellama eval long-ppl`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")
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
    p.add_argument("model", type=Path, help="checkpoint directory")
    p.add_argument("out", type=Path, help="new checkpoint directory (must not exist)")
    p.add_argument("--base", type=float, help="RoPE base period (rope_theta), e.g. 1e6")
    p.add_argument("--max-context", type=_positive_int, help="max_position_embeddings, e.g. 16384")
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
    p.add_argument("--head-dim", type=_positive_int, default=128, help="rotary head dimension (default 128)")
    p.add_argument(
        "--base", type=float, action="append", help="base period; repeat to compare (default: 10000 and 1000000)"
    )
    p.add_argument(
        "--scaling",
        action="append",
        default=[],
        help="TYPE:FACTOR variant of the first base, e.g. linear:4 (repeatable)",
    )
    p.add_argument("--context", type=_positive_int, default=4096, help="trained context (default 4096)")
    p.add_argument("--max-distance", type=_positive_int, default=100_000, help="largest distance plotted")
    p.add_argument("--out", type=Path, required=True, help="PNG path")
    p.set_defaults(func=cmd_rope_plot)

    cli.group("eval", help="score models")
    p = cli.command(
        "key-retrieval",
        parent="eval",
        help="Code Llama's key retrieval: find a function's return value in a long Python file",
        epilog="examples:\n"
        "  codellama eval key-retrieval --model runs/tiny-1m --lengths 1k,2k,4k --out runs/kr\n"
        "  codellama eval key-retrieval --model codellama-7b --lengths 8k,16k,24k,32k \\\n"
        "      --positions 0,0.25,0.5,0.75,1 --seeds 3 --device cuda --dtype bfloat16 --out runs/kr7b\n"
        "  codellama eval key-retrieval --endpoint http://localhost:8000/v1 --tokenizer runs/tok \\\n"
        "      --lengths 16k --out runs/kr-remote\n"
        "writes OUT/key_retrieval.json (every item) and OUT/key_retrieval.png (accuracy heatmap)",
    )
    _model_source_args(p)
    p.add_argument("--tokenizer", type=Path, help="tokenizer (dir or .model) to measure lengths; default: the model's")
    p.add_argument(
        "--lengths",
        type=_lengths,
        default=_lengths("8k,16k,24k,32k"),
        help="prompt lengths in tokens, comma-separated; k = 1024 (default 8k,16k,24k,32k)",
    )
    p.add_argument(
        "--positions",
        type=_positions,
        default=_positions("0,0.25,0.5,0.75,1"),
        help="relative key positions in [0, 1] (default 0,0.25,0.5,0.75,1)",
    )
    p.add_argument("--seeds", type=_positive_int, default=1, help="prompts per (length, position) cell (default 1)")
    p.add_argument("--digits", type=_positive_int, default=5, help="digits of the key value (default 5)")
    p.add_argument("--source", type=Path, action="append", help="filler source files/dirs (default: the stdlib)")
    p.add_argument("--out", type=Path, required=True, help="output directory (must not exist)")
    p.set_defaults(func=cmd_key_retrieval)

    p = cli.command(
        "long-ppl",
        parent="eval",
        help="perplexity versus context length, comparing models",
        epilog="examples:\n"
        "  codellama eval long-ppl --model base=runs/tiny --model 1m=runs/tiny-1m \\\n"
        "      --lengths 256,512,1k,2k,4k --samples 4 --out runs/ppl\n"
        "  # the same tokens, but no token sees more than 512 tokens of context\n"
        "  codellama eval long-ppl --model runs/tiny --lengths 1k,2k,4k --window 512 --out runs/ppl-win\n"
        "writes OUT/long_ppl.json and OUT/long_ppl.png (one curve per model)",
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[LABEL=]DIR",
        help="checkpoint to score; repeat to compare (all must share one tokenizer)",
    )
    p.add_argument(
        "--lengths",
        type=_lengths,
        default=_lengths("512,1k,2k,4k,8k,16k"),
        help="context lengths, comma-separated; k = 1024 (default 512,1k,2k,4k,8k,16k)",
    )
    p.add_argument("--samples", type=_positive_int, default=4, help="token windows per length (default 4)")
    p.add_argument("--window", type=_positive_int, help="sliding window: at most this much context per token")
    p.add_argument("--stride", type=_positive_int, help="sliding window stride (default window/2)")
    p.add_argument("--source", type=Path, action="append", help="source files/dirs to score (default: the stdlib)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--out", type=Path, required=True, help="output directory (must not exist)")
    p.set_defaults(func=cmd_long_ppl)


def _model_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, help="local checkpoint directory")
    p.add_argument("--endpoint", help="OpenAI-compatible base URL (e.g. http://localhost:8000/v1) instead of --model")
    p.add_argument("--endpoint-model", help="model name at the endpoint (default: its first)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=DTYPES, default="float32")


# -- argument types ----------------------------------------------------------------------
def _positive_int(text: str) -> int:
    value = _tokens(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _tokens(text: str) -> int:
    text = text.strip().lower().replace("_", "")
    try:
        if text.endswith("k"):
            return int(float(text[:-1]) * 1024)
        return int(float(text)) if "e" in text else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a token count like 4096 or 4k, got {text!r}") from None


def _lengths(text: str) -> list[int]:
    values = [_positive_int(t) for t in text.split(",") if t.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected at least one length")
    return sorted(set(values))


def _positions(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions like 0,0.5,1, got {text!r}") from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"positions must be within [0, 1], got {text!r}")
    return sorted(set(values))


def _check_new_file(path: Path) -> None:
    if path.exists():
        raise FileExistsError(f"output {path} already exists")


# -- handlers ---------------------------------------------------------------------------------
def cmd_rope_set(args: argparse.Namespace) -> int:
    from long_context.rope import parse_scaling, rope_set

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
    from long_context.rope import parse_scaling
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


def cmd_key_retrieval(args: argparse.Namespace) -> int:
    from codellama.io import atomic_directory, atomic_write_json, ensure_new_output_dir
    from codellama.tokenizer import CodeLlamaTokenizer
    from long_context.key_retrieval import FillerPool, build_prompts, plot_key_retrieval, run_key_retrieval

    if (args.model is None) == (args.endpoint is None):
        raise ValueError("give exactly one of --model DIR or --endpoint URL")
    ensure_new_output_dir(args.out)
    tok_path = args.tokenizer or args.model
    if tok_path is None:
        raise ValueError("--endpoint needs --tokenizer (the served model's tokenizer, to measure prompt lengths)")
    tokenizer = CodeLlamaTokenizer.load(tok_path)
    texts = None
    if args.source:
        from codellama.data.stdlib import iter_source_texts

        texts = list(iter_source_texts(args.source))
    pool = FillerPool(tokenizer, texts)
    prompts = build_prompts(tokenizer, args.lengths, args.positions, range(args.seeds), pool=pool, digits=args.digits)
    generator = _generator(args, longest=max(p.prompt_tokens for p in prompts) + args.digits + 6)
    report = run_key_retrieval(generator, prompts, digits=args.digits)
    report["model"] = str(args.model or args.endpoint)
    with atomic_directory(args.out) as tmp:
        atomic_write_json(tmp / "key_retrieval.json", report)
        plot_key_retrieval(report, tmp / "key_retrieval.png", title=Path(report["model"]).name)
    print(f"{'length':>8} " + " ".join(f"{p:>6g}" for p in args.positions))
    for n, row in sorted(report["accuracy"].items(), key=lambda kv: int(kv[0])):
        print(f"{int(n):>8} " + " ".join(f"{row[f'{p:g}']:>6.2f}" for p in args.positions))
    print(f"exact match {report['overall']:.1%} of {report['n']}; wrote {args.out}")
    return 0


def _generator(args: argparse.Namespace, longest: int):
    import torch

    from codellama.generation import HFGenerator, load_generator

    if args.endpoint:
        return load_generator(endpoint=args.endpoint, endpoint_model=args.endpoint_model)
    from codellama.checkpoint import load_model, load_tokenizer

    model = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    trained = model.config.max_position_embeddings
    if longest > trained:
        log.warning(
            "prompts reach %d tokens, beyond the model's max_position_embeddings %d: this measures extrapolation",
            longest,
            trained,
        )
    # The benchmark is about going past the trained context, so the generator must not refuse it.
    return HFGenerator(model, load_tokenizer(args.model), batch_size=1, max_context=longest)


def cmd_long_ppl(args: argparse.Namespace) -> int:
    import torch

    from codellama.io import atomic_directory, atomic_write_json, ensure_new_output_dir
    from long_context.perplexity import evaluate_models, plot_long_ppl

    ensure_new_output_dir(args.out)
    models: dict[str, str] = {}
    for spec in args.model:
        label, sep, path = spec.partition("=")
        if not sep:
            label, path = Path(spec).name or spec, spec
        if label in models:
            raise ValueError(f"model label {label!r} given twice; name them LABEL=DIR")
        if not Path(path).is_dir():
            raise FileNotFoundError(f"no checkpoint directory at {path}")
        models[label] = path
    if args.stride and not args.window:
        raise ValueError("--stride needs --window")
    texts = None
    if args.source:
        from codellama.data.stdlib import iter_source_texts

        texts = iter_source_texts(args.source)
    report = evaluate_models(
        models,
        lengths=args.lengths,
        samples=args.samples,
        window=args.window,
        stride=args.stride,
        texts=texts,
        device=args.device,
        dtype=getattr(torch, args.dtype),
    )
    with atomic_directory(args.out) as tmp:
        atomic_write_json(tmp / "long_ppl.json", report)
        plot_long_ppl(report, tmp / "long_ppl.png")
    print(f"{'length':>8} " + " ".join(f"{label:>14}" for label in report["models"]))
    for i, n in enumerate(report["lengths"]):
        print(f"{n:>8} " + " ".join(f"{entry['points'][i]['ppl']:>14.3f}" for entry in report["models"].values()))
    print(f"wrote {args.out}")
    return 0
