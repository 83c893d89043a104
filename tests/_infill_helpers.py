"""Shared by the infill tests: the tiny model taught a few infilling examples (PSM and SPM).

A random tiny model never emits <EOT>; a few optimizer steps on fixed examples make its
answers known, so tests can assert exact middles and stopping at <EOT>.
"""

from __future__ import annotations

from pathlib import Path

EXAMPLES = [  # (prefix, middle, suffix)
    ("def area(r):\n    ", "return 3.14 * r * r", "\n\nprint(area(2))\n"),
    ("import os\n\ndef home():\n", "    return os.environ['HOME']\n", "\nprint(home())\n"),
]

_CACHE: dict[Path, Path] = {}


def taught_model_dir(tiny_model_dir: Path, out_dir: Path, steps: int = 40) -> Path:
    """Copy of the tiny model trained to fill EXAMPLES' holes in both prompt orders (cached per session)."""
    if tiny_model_dir in _CACHE:
        return _CACHE[tiny_model_dir]
    import torch

    from codellama.checkpoint import load_model, save_checkpoint
    from codellama.tokenizer import load_tokenizer

    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    rows = []
    for prefix, middle, suffix in EXAMPLES:
        for spm in (False, True):
            prompt = tok.infilling_prompt(prefix, suffix, suffix_first=spm)
            target = tok.encode_infilling(middle) + [tok.eot_id]
            rows.append((prompt + target, [-100] * len(prompt) + target))
    width = max(len(ids) for ids, _ in rows)  # one right-padded batch: a single forward per step
    ids = torch.tensor([x + [tok.eos_id] * (width - len(x)) for x, _ in rows])
    labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in rows])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in rows])
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only loses from threads, badly so on a busy machine
    try:
        for _ in range(steps):
            opt.zero_grad()
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    out = save_checkpoint(model, out_dir / "taught", tok)
    _CACHE[tiny_model_dir] = out
    return out
