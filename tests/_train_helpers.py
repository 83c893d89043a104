"""Helpers for the training tests: packed shards from real stdlib code, and CLI runs in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def write_code_shards(
    tokenizer, texts: list[str], out: Path, seq_len: int, max_sequences: int | None = None, meta: dict | None = None
) -> Path:
    """Documents as <s> text </s>, concatenated and cut into seq_len rows (what `data prepare` packs)."""
    from codellama.data.shards import ShardWriter

    stream = np.concatenate([np.array(tokenizer.encode(t, bos=True, eos=True)) for t in texts])
    n = len(stream) // seq_len if max_sequences is None else min(max_sequences, len(stream) // seq_len)
    writer = ShardWriter(out, seq_len, tokenizer.vocab_size, sequences_per_shard=64)
    for i in range(n):
        writer.add(stream[i * seq_len : (i + 1) * seq_len])
    writer.finish(meta=meta or {})
    return out


def run_cli(
    *args: str, timeout: float = 300, env: dict | None = None, torchrun: int = 0
) -> subprocess.CompletedProcess:
    """`codellama ...` in a fresh process (optionally under torchrun with N local ranks)."""
    if torchrun:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={torchrun}",
            "-m",
            "codellama.cli",
            *args,
        ]
    else:
        cmd = [sys.executable, "-m", "codellama.cli", *args]
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO)


def metric_losses(run_dir: Path) -> list[tuple[int, float]]:
    from codellama.io import read_jsonl

    return [(r["step"], r["loss"]) for r in read_jsonl(Path(run_dir) / "metrics.jsonl")]


def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(Path(run_dir) / "final" / "model.safetensors")
