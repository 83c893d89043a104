"""`codellama model ...`: create models from presets and describe them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from codellama.commands.args import model_spec
from codellama.config import DTYPES, torch_dtype
from codellama.io import ensure_new_output_dir


def register(cli) -> None:
    cli.group("model", help="create models from presets and describe them")

    p = cli.command(
        "init",
        parent="model",
        help="initialise a LlamaForCausalLM from a preset, with a tokenizer",
        epilog="examples:\n"
        "  codellama model init --preset tiny --tokenizer runs/tokenizer --out runs/tiny\n"
        "  codellama model init --preset codellama-7b --tokenizer tokenizer.model --dtype bfloat16 --out runs/7b",
    )
    p.add_argument("--preset", required=True, help="preset name (see `codellama model presets`)")
    p.add_argument(
        "--tokenizer",
        type=Path,
        required=True,
        help="tokenizer directory, tokenizer.model or tokenizer.json (one without infilling tokens gets them: "
        "Code Llama's pieces, or the tokens of `tokenizer extend`)",
    )
    p.add_argument("--out", type=Path, required=True, help="output checkpoint directory")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_init)

    p = cli.command(
        "info",
        parent="model",
        help="shape, parameter count, vocab, RoPE base and context of a model",
        epilog="examples:\n  codellama model info runs/tiny\n  codellama model info llama2-70b --json",
    )
    p.add_argument("model", type=model_spec, help="checkpoint directory, named base or preset name")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = cli.command(
        "presets", parent="model", help="list the built-in presets", epilog="example:\n  codellama model presets"
    )
    p.set_defaults(func=cmd_presets)


def cmd_init(args: argparse.Namespace) -> int:

    from codellama.checkpoint import save_checkpoint
    from codellama.model import build_model
    from codellama.presets import get_preset
    from codellama.tokenizer import load_tokenizer

    preset = get_preset(args.preset)
    ensure_new_output_dir(args.out)
    tokenizer, _ = load_tokenizer(args.tokenizer).with_infilling_tokens()  # a fresh model has rows for every id
    preset = preset.replace(vocab_size=tokenizer.vocab_size)
    model = build_model(preset, dtype=torch_dtype(args.dtype), seed=args.seed)
    model.config.bos_token_id, model.config.eos_token_id = tokenizer.bos_id, tokenizer.eos_id
    model.generation_config.bos_token_id, model.generation_config.eos_token_id = tokenizer.bos_id, tokenizer.eos_id
    save_checkpoint(model, args.out, tokenizer)
    _print_info(describe_checkpoint(args.out), as_json=False)
    return 0


def describe_preset(name: str) -> dict:
    from codellama.model import count_parameters
    from codellama.presets import get_preset

    preset = get_preset(name)
    return _describe(preset, count_parameters(preset), source=f"preset {name}")


def describe_checkpoint(path: Path) -> dict:
    from codellama.checkpoint import load_config
    from codellama.model import count_parameters, match_known_preset, preset_from_config

    config = load_config(path)
    preset = preset_from_config(config)
    info = _describe(preset, count_parameters(preset), source=str(path))
    info["preset"] = getattr(config, "codellama_preset", None) or match_known_preset(preset) or "custom"
    info["dtype"] = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32")
    if getattr(config, "rope_parameters", None):
        info["rope_parameters"] = dict(config.rope_parameters)
    info.update(_describe_tokenizer(path))
    return info


def _describe_tokenizer(path: Path) -> dict:
    """The checkpoint's tokenizer: which backend, its ids, its infilling tokens and chat format."""
    from codellama.chat import chat_format
    from codellama.tokenizer import load_tokenizer, tokenizer_file

    if tokenizer_file(path) is None:
        return {"tokenizer": "none"}
    tok = load_tokenizer(path)  # also refuses a vocabulary smaller than the tokenizer's
    infill = tok.infilling
    return {
        "tokenizer": f"{tok.file_name} ({tok.backend}), {tok.vocab_size} ids, BOS {tok.bos_id}, EOS {tok.eos_id}",
        "infilling_tokens": " ".join(f"{t}={i}" for t, i in zip(infill.tokens, infill.ids)) if infill else "none",
        "chat_format": chat_format(tok),
    }


def _describe(preset, n_params: int, source: str) -> dict:
    return {
        "source": source,
        "preset": preset.name,
        "parameters": n_params,
        "vocab_size": preset.vocab_size,
        "dim": preset.dim,
        "layers": preset.n_layers,
        "heads": preset.n_heads,
        "kv_heads": preset.n_kv_heads,
        "ffn_dim": preset.ffn_dim,
        "norm_eps": preset.norm_eps,
        "rope_theta": preset.rope_theta,
        "context": preset.max_seq_len,
    }


def _print_info(info: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(info, indent=2))
        return
    width = max(map(len, info))
    for key, value in info.items():
        if key == "parameters":
            value = f"{value:,} ({value / 1e9:.2f}B)" if value >= 1e8 else f"{value:,} ({value / 1e6:.1f}M)"
        print(f"{key:<{width}}  {value}")


def cmd_info(args: argparse.Namespace) -> int:
    from codellama.presets import PRESETS

    path = Path(args.model)
    if path.exists():
        info = describe_checkpoint(path)
    elif args.model in PRESETS:
        info = describe_preset(args.model)
    else:
        raise FileNotFoundError(f"{args.model!r} is neither a checkpoint directory nor a preset ({', '.join(PRESETS)})")
    _print_info(info, args.json)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from codellama.presets import PRESETS

    print(
        f"{'name':<15}{'dim':>6}{'layers':>8}{'heads':>7}{'kv':>5}{'ffn':>7}{'vocab':>7}{'rope':>11}{'ctx':>7}  description"
    )
    for p in PRESETS.values():
        print(
            f"{p.name:<15}{p.dim:>6}{p.n_layers:>8}{p.n_heads:>7}{p.n_kv_heads:>5}{p.ffn_dim:>7}{p.vocab_size:>7}"
            f"{p.rope_theta:>11.0f}{p.max_seq_len:>7}  {p.description}"
        )
    return 0
