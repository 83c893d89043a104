"""What this machine computes the pipeline in, and a warning up front where that is slow.

The smollm2 recipe's budgets were sized on a 2-core CPU with AMX, where bf16 matrix products run ~10x
faster than fp32. A CPU without native bf16 (AVX2 only) emulates them ~100x slower than fp32, so `auto`
(the recipe's training precision and eval dtype) falls back to fp32 there, and the run takes many times longer.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from codellama.config import serving_dtype
from codellama.train.precision import native_bf16, resolve


def slow_machine_note(cfg, train_precisions: list[str]) -> str | None:
    """One line for a user about to wait far longer than the recipe says, or None (a GPU, a bf16 CPU)."""
    if torch.cuda.is_available():
        return None
    cpu = torch.device("cpu")
    if native_bf16(cpu):
        return None
    forced = sorted({p for p in train_precisions if resolve(p, cpu) != "fp32"})
    if cfg.eval.dtype in ("bfloat16", "float16"):
        forced.append(f"eval.dtype={cfg.eval.dtype}")
    if forced:
        return (
            f"this CPU has no native bf16 (no AVX512/AMX) but the config asks for {', '.join(forced)}: emulated, "
            "~100x slower than fp32 here; set precision=auto / eval.dtype=auto to compute in fp32"
        )
    evaluated = "fp32" if serving_dtype(cfg.eval.dtype) == torch.float32 else str(serving_dtype(cfg.eval.dtype))
    return (
        f"this CPU has no native bf16 (no AVX512/AMX): training runs in fp32 and scoring in {evaluated}. The "
        "smollm2 recipe's ~45 minutes were measured on a 2-core CPU with AMX (bf16 ~10x its fp32): expect many "
        "times longer here, or run on a GPU (README)"
    )


def machine(cfg) -> dict:
    """The machine a run computed on (the report's Stages section): its seconds compare only on the same kind."""
    cpu = torch.device("cpu")
    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16(cpu),
        "amx": bool(torch.cpu._is_amx_tile_supported()),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "scoring_dtype": str(serving_dtype(cfg.eval.dtype)).removeprefix("torch."),
    }


def _cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
