"""How a training step computes: fp32, bf16 autocast over fp32 weights, or bf16 weights with fp32 masters.

`bf16` (autocast) keeps the weights and the residual stream in fp32 and casts each matrix product's
inputs to bf16: every norm, activation and residual add then runs on fp32 tensors, and on a CPU, where
those element-wise passes are bound by memory, the casts alone took a tenth of a SmolLM2 step.
`bf16-weights` computes with a bf16 twin of the model instead (activations in bf16 throughout, as FSDP2's
`param_dtype=bf16` and most GPU recipes run), while the fp32 model keeps the master weights that the
optimizer updates, the checkpoints save and the export writes: the gradients are summed into the masters
in fp32 after each micro-batch and the twin is refreshed from them after each step. RoPE's frequencies stay
fp32 in the twin. On this project's 2-core CPU it trained SmolLM2-135M ~1.2x faster than autocast
(benchmarks/RESULTS.md).
"""

from __future__ import annotations

import copy

import torch

PRECISIONS = ("auto", "bf16", "bf16-weights", "fp32")


def native_bf16(device: torch.device) -> bool:
    """Whether the device multiplies bf16 matrices natively: GPUs with bf16, CPUs with AVX512 or AMX (oneDNN).
    Elsewhere (an AVX2-only CPU) torch emulates bf16 products ~100x slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve(precision: str, device: torch.device, *, distributed: bool = False) -> str:
    """The precision a run computes in. `auto` is the fastest one the device does natively: bf16 weights with
    fp32 masters in one CPU process, bf16 (autocast, or FSDP2's bf16 gathers) on GPUs and under torchrun, and
    fp32 where bf16 would be emulated."""
    if precision != "auto":
        return precision
    if not native_bf16(device):
        return "fp32"
    return "bf16-weights" if device.type == "cpu" and not distributed else "bf16"


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether the step computes in bf16 (either way: autocast or bf16 weights)."""
    return resolve(precision, device) != "fp32"


def use_bf16_weights(precision: str) -> bool:
    """Whether the step runs on a bf16 twin of the model (no autocast) rather than under autocast."""
    return precision == "bf16-weights"


def describe(precision: str) -> str:
    """A resolved precision in words (logs and dry runs)."""
    return {"fp32": "fp32", "bf16": "bf16 autocast", "bf16-weights": "bf16 weights, fp32 masters"}[precision]


class BF16Twin:
    """A bf16 copy of `model` that runs forward and backward; `model` keeps the fp32 master weights.

    Call `accumulate_grads()` after each backward (the twin's bf16 gradients are added to the masters'
    fp32 ones and dropped) and `refresh()` after each optimizer step and after loading a checkpoint into
    the masters. Tied weights stay tied: one parameter, copied once.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = copy.deepcopy(model)
        self.masters = list(model.parameters())
        self.params = list(self.model.parameters())
        for param in self.params:  # parameters only: buffers such as RoPE's inv_freq keep their fp32 values
            param.data = param.data.to(torch.bfloat16)

    def accumulate_grads(self) -> None:
        for master, param in zip(self.masters, self.params):
            if param.grad is None:
                continue
            if master.grad is None:
                master.grad = param.grad.to(master.dtype)
            else:
                master.grad.add_(param.grad)
            param.grad = None

    @torch.no_grad()
    def refresh(self) -> None:
        for master, param in zip(self.masters, self.params):
            param.copy_(master)
