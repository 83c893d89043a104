"""Helpers for the family (pipeline) tests: a folder of real code, and a family config at tiny budgets."""

from __future__ import annotations

from pathlib import Path

import yaml

# Every branch at the smallest budget that still trains, checkpoints and resumes.
TINY_BRANCH = ["max_steps=3", "checkpoint_every=2", "batch_tokens=512", "micro_batch_size=2", "seq_len=128"]


def source_dir(root: Path, texts: list[str]) -> Path:
    """root/src holding the texts as m000.py, m001.py, ... (a corpus for --source / data.sources)."""
    src = root / "src"
    src.mkdir()
    for i, text in enumerate(texts):
        (src / f"m{i:03d}.py").write_text(text)
    return src


def write_family_config(root: Path, texts: list[str], config: dict) -> Path:
    """root/config.yaml: `config` (its `extends`, base, eval, ...) on tiny budgets, over the texts as sources."""
    config = {
        **config,
        "data": {"sources": [str(source_dir(root, texts))], **config.get("data", {})},
        "branches": {b: list(TINY_BRANCH) for b in ("code", "python", "long-context", "instruct")},
        "instruct_data": {"questions": 2, "solutions_per_question": 1, "max_new_tokens": 24, "stdlib_pairs": 40},
    }
    config["branches"]["long-context"] += ["seq_len=256", "rope.max_context=256"]
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
