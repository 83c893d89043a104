"""Shared fixtures: every test builds its own small tokenizer and model; nothing is downloaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _bases_helpers import BPE_VARIANTS, write_bpe_tokenizer, write_tied_llama

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "CODELLAMA_CACHE" not in os.environ:  # caches written by tests (packed chat data, ...) stay out of ~/.cache
    import atexit
    import shutil
    import tempfile

    os.environ["CODELLAMA_CACHE"] = tempfile.mkdtemp(prefix="codellama-test-cache-")
    # and go when the run ends: a converted base is ~0.5 GB, and every run made a new directory
    atexit.register(shutil.rmtree, os.environ["CODELLAMA_CACHE"], ignore_errors=True)

SHARED = Path(__file__).resolve().parents[2] / "shared"
LLAMA2_TOKENIZER = SHARED / "data" / "llama2-tokenizer" / "tokenizer.model"
HUMANEVAL_INFILLING = SHARED / "data" / "human-eval-infilling"


def _stdlib_sample(n_files: int) -> list[str]:
    from codellama.data.stdlib import read_source, stdlib_python_files

    files = stdlib_python_files()
    step = max(1, len(files) // n_files)
    return [t for t in (read_source(p) for p in files[::step][:n_files]) if t]


@pytest.fixture(scope="session")
def stdlib_texts() -> list[str]:
    """About 200 stdlib files spread across the library (a small, real code corpus)."""
    return _stdlib_sample(200)


@pytest.fixture(scope="session")
def tiny_tokenizer(stdlib_texts):
    """A 2,016-piece Code Llama tokenizer (infilling pieces at 2007..2010) trained on stdlib code."""
    from codellama.tokenizer import CodeLlamaTokenizer, TrainOptions

    return CodeLlamaTokenizer.train(stdlib_texts, TrainOptions(vocab_size=2016))


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    from codellama.tokenizer import save_tokenizer_dir

    return save_tokenizer_dir(tiny_tokenizer, tmp_path_factory.mktemp("tok") / "tokenizer")


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    """A randomly initialised `tiny` preset checkpoint (HF format) with the tiny tokenizer. Read-only: copy it to modify."""
    from codellama.checkpoint import save_checkpoint
    from codellama.model import build_model
    from codellama.presets import get_preset

    model = build_model(get_preset("tiny").replace(vocab_size=tiny_tokenizer.vocab_size), seed=0)
    return save_checkpoint(model, tmp_path_factory.mktemp("model") / "tiny", tiny_tokenizer)


@pytest.fixture(scope="session")
def llama2_tokenizer_path() -> Path:
    if not LLAMA2_TOKENIZER.is_file():
        pytest.skip(f"Meta's Llama 2 tokenizer not found at {LLAMA2_TOKENIZER}")
    return LLAMA2_TOKENIZER


@pytest.fixture
def tmpfs(tmp_path):
    """Mount small tmpfs file systems (a full disk, a read-only output, a mount point as --out).

    Skipped unless the tests run as root and the kernel lets them mount; unmounted afterwards.
    """
    import subprocess

    mounted = []

    def mount(name: str = "mnt", size: str = "1m", *, files: dict | None = None, readonly: bool = False) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        path = tmp_path / name
        path.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
        if res.returncode:
            pytest.skip(f"cannot mount a tmpfs: {res.stderr.decode().strip()}")
        mounted.append(path)
        for rel, data in (files or {}).items():
            (path / rel).write_bytes(data)
        if readonly:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# -- byte-level BPE bases (Hugging Face tokenizer.json), as Llama 3 / SmolLM2 ship them ---------------
@pytest.fixture(scope="session")
def bpe_base(stdlib_texts, tmp_path_factory):
    """variant -> a Hugging Face checkpoint directory: tiny tied-embedding Llama + byte-level BPE tokenizer.json
    (no infilling record yet, as a downloaded base would be). Read-only: `codellama tokenizer extend` copies it."""
    bases: dict[str, Path] = {}

    def make(variant: str) -> Path:
        if variant not in bases:
            out = tmp_path_factory.mktemp(f"bpe-{variant}") / "base"
            write_bpe_tokenizer(stdlib_texts[:40], variant, out)
            vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
            eos = vocab[BPE_VARIANTS[variant]["config"]["eos_token"]]
            bases[variant] = write_tied_llama(out, len(vocab), eos)
        return bases[variant]

    return make


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models only lose from intra-op threads, badly so on a busy machine: one thread for the module."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def extended_bpe(bpe_base, tmp_path_factory):
    """variant -> the base checkpoint after `codellama tokenizer extend --base CKPT --out DIR` (read-only)."""
    from codellama.cli import main

    done = {}

    def make(variant: str) -> Path:
        if variant not in done:
            out = tmp_path_factory.mktemp(f"extended-{variant}") / "ckpt"
            assert main(["tokenizer", "extend", "--base", str(bpe_base(variant)), "--out", str(out)]) == 0
            done[variant] = out
        return done[variant]

    return make
