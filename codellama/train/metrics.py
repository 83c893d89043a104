"""Training metrics: one JSON line per step (the record), TensorBoard (to watch), a PNG (to show)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from codellama.io import append_jsonl, atomic_write_bytes, atomic_write_text, read_jsonl

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


class MetricsLog:
    """Appends step records; on resume, records after the checkpoint are dropped (they get redone)."""

    def __init__(self, out_dir: str | os.PathLike, *, resume_step: int = 0, tensorboard: bool = True):
        self.path = Path(out_dir) / METRICS_FILE
        kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step]
        if self.path.exists():
            import json

            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(out_dir) / "tb"), purge_step=resume_step + 1 if resume_step else None)

    def log(self, record: dict) -> None:
        append_jsonl(self.path, record)
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def records(self) -> list[dict]:
        return read_jsonl(self.path)


def plot_loss(records: list[dict], out_png: str | os.PathLike, title: str = "") -> Path | None:
    """Loss (and learning rate) against step; written atomically."""
    if not records:
        return None
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["loss"] for r in records], color="tab:blue", lw=1.2, label="training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    if "lr" in records[0]:
        lr_ax = ax.twinx()
        lr_ax.plot(steps, [r["lr"] for r in records], color="tab:orange", lw=0.8, alpha=0.7, label="learning rate")
        lr_ax.set_ylabel("learning rate")
        lines = ax.get_lines() + lr_ax.get_lines()
        ax.legend(lines, [line.get_label() for line in lines], loc="upper right")
    ax.set_title(title or f"loss {records[0]['loss']:.3f} -> {records[-1]['loss']:.3f}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out_png, buf.getvalue())
    return Path(out_png)
