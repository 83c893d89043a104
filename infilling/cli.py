"""`codellama serve`, `codellama infill` and `codellama eval infilling`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from codellama.commands.args import add_device_options, check_positive, model_dir
from codellama.config import serving_dtype, torch_dtype

SERVE_EXAMPLES = """examples:
  codellama serve --model runs/tiny
  codellama serve --model runs/7b --host 0.0.0.0 --port 8012 --max-batch 16 --max-tokens 256 --device cuda

  codellama serve --model runs/7b --fim-markers --prompt-cache-mb 1024   # Continue's template prompts

Endpoints: POST /infill (llama.cpp: llama.vim, llama.vscode), POST /completion (llama.cpp native),
POST /v1/completions (OpenAI, with `suffix` for infilling; `stream: true` for server-sent events),
GET /v1/models, GET /health. /infill fits the prompt to the context as llama.cpp does (prefix lines
dropped from the top, suffix lines from the bottom, extra chunks oldest first) and reuses the KV of
recent prompts (`cache_prompt`); a client that closes its connection stops its generation.
  curl -s localhost:8012/infill -d '{"input_prefix": "def add(a, b):\\n    ", "input_suffix": "\\n", "n_predict": 32}'
"""

INFILL_EXAMPLES = """examples:
  codellama infill --model runs/tiny --file app.py --line 12 --col 5
  codellama infill --server http://127.0.0.1:8012 --file app.py --line 12 --col 5 --show-file
  codellama infill --model runs/7b --file app.py --line 3 --col 1 --spm --syntax-truncate
"""


def register(cli) -> None:
    p = cli.command(
        "serve", help="serve a model for editors: llama.cpp /infill and OpenAI /v1/completions", epilog=SERVE_EXAMPLES
    )
    p.add_argument("--model", type=model_dir, required=True, help="checkpoint directory or a named base")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8012)
    p.add_argument("--name", help="model name reported by /v1/models (default: the directory name)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=8,
        help="requests decoding together; new ones join a running batch as rows free up (default 8)",
    )
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests beyond this get HTTP 429")
    p.add_argument("--max-prompt-tokens", type=int, help="longer prompts get HTTP 400 (default: the model's context)")
    p.add_argument("--max-tokens", type=int, default=512, help="largest max_tokens / n_predict a request may ask for")
    p.add_argument("--spm", action="store_true", help="suffix-first (SPM) infilling prompts instead of PSM")
    p.add_argument(
        "--fim-markers",
        action="store_true",
        help="read <PRE> <SUF> <MID> written in a plain prompt (template-based clients) as an infilling request",
    )
    p.add_argument(
        "--prompt-cache-mb",
        type=int,
        help="memory for the KV of recent prompts (0: no prompt cache; default: room for two prompts of the "
        "model's whole context, e.g. 720 MiB for SmolLM2-135M in fp32)",
    )
    p.add_argument(
        "--prefill-chunk", type=int, default=512, help="prompt tokens per step (a cancelled prefill stops within one)"
    )
    p.add_argument(
        "--static-batching",
        action="store_true",
        help="a batch runs to its end before waiting requests start (default: they join it)",
    )
    add_device_options(p, auto="bfloat16 on GPU and on CPUs with AMX (prefill ~5x faster), else float32")
    p.set_defaults(func=cmd_serve)

    p = cli.command("infill", help="fill in code at a cursor position of a file", epilog=INFILL_EXAMPLES)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=model_dir, help="checkpoint directory or named base (generate in this process)")
    src.add_argument("--server", help="URL of a running `codellama serve`")
    p.add_argument("--file", type=Path, required=True)
    p.add_argument("--line", type=int, required=True, help="1-based line of the cursor")
    p.add_argument(
        "--col", type=int, required=True, help="1-based column of the cursor (it sits before that character)"
    )
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--spm", action="store_true", help="suffix-first prompt (local model only)")
    p.add_argument(
        "--syntax-truncate",
        action="store_true",
        help="cut the middle at the last line where the file parses best (tree-sitter, Python)",
    )
    p.add_argument("--show-file", action="store_true", help="print the whole file with the middle filled in")
    add_device_options(p)
    p.set_defaults(func=cmd_infill)


def cmd_serve(args: argparse.Namespace) -> int:
    from infilling.server import ServerConfig, build_app, run_server

    for name in ("max_batch", "max_queue", "max_prompt_tokens", "max_tokens", "prefill_chunk"):
        check_positive(getattr(args, name), "--" + name.replace("_", "-"))
    if args.prompt_cache_mb is not None and args.prompt_cache_mb < 0:
        raise ValueError("--prompt-cache-mb must be >= 0")
    if not args.model.is_dir():
        raise FileNotFoundError(f"model directory not found: {args.model}")
    config = ServerConfig(
        model_name=args.name or args.model.resolve().name,
        max_prompt_tokens=args.max_prompt_tokens,
        max_tokens=args.max_tokens,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        suffix_first=args.spm,
        continuous=not args.static_batching,
        fim_markers=args.fim_markers,
        prompt_cache_mb=args.prompt_cache_mb,
        prefill_chunk=args.prefill_chunk,
    )
    app = build_app(args.model, config, device=args.device, dtype=serving_dtype(args.dtype, args.device))
    print(
        f"serving {config.model_name} on http://{args.host}:{args.port} (/infill, /completion, /v1/completions); "
        "Ctrl-C stops",
        file=sys.stderr,
    )
    run_server(app, host=args.host, port=args.port)
    return 0


def cmd_infill(args: argparse.Namespace) -> int:
    from infilling.inference import split_at_cursor

    if not args.file.is_file():
        raise FileNotFoundError(f"file not found: {args.file}")
    task = split_at_cursor(args.file.read_text(encoding="utf-8"), args.line, args.col)
    stream = not args.show_file and not args.syntax_truncate
    if args.server:
        middle = _infill_remote(args, task, stream)
    else:
        middle = _infill_local(args, task, stream)
    if args.show_file:
        sys.stdout.write(task.prefix + middle + task.suffix)
    elif not stream:
        sys.stdout.write(middle)
    sys.stdout.write("" if args.show_file else "\n")
    return 0


def _infill_local(args: argparse.Namespace, task, stream: bool) -> str:
    from codellama.generation import HFGenerator, SamplingParams
    from infilling.inference import infill

    gen = HFGenerator.from_pretrained(
        args.model, device=args.device, dtype=torch_dtype(args.dtype, args.device), batch_size=1
    )
    params = SamplingParams(max_new_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p)
    sinks = [_Stdout()] if stream else None
    [result] = infill(gen, [task], params, suffix_first=args.spm, syntax_truncate=args.syntax_truncate, sinks=sinks)
    if args.syntax_truncate and result.truncated:
        print(
            f"(syntax-aware truncation cut the middle; the file {'parses' if result.parses else 'still has errors'})",
            file=sys.stderr,
        )
    return result.middle


class _Stdout:
    """Prints the middle as it is generated (a `codellama.generation.Sink`)."""

    def text(self, delta: str) -> None:
        sys.stdout.write(delta)
        sys.stdout.flush()

    def done(self, completion) -> None:
        pass

    def cancelled(self) -> bool:
        return False


def _infill_remote(args: argparse.Namespace, task, stream: bool) -> str:
    from infilling.client import InfillClient

    if args.spm:
        raise ValueError("--spm applies to a local --model (start the server with `codellama serve --spm`)")
    with InfillClient(args.server) as client:
        kwargs = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p)
        if stream:
            parts = []
            for delta in client.stream(task.prefix, task.suffix, **kwargs):
                sys.stdout.write(delta)
                sys.stdout.flush()
                parts.append(delta)
            return "".join(parts)
        middle = client.infill(task.prefix, task.suffix, **kwargs)["content"]
    if args.syntax_truncate:
        from infilling.syntax import truncate_middle

        middle = truncate_middle(task.prefix, middle, task.suffix).middle
    return middle
