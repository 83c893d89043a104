"""The training step's attention backward: torch's CPU flash kernel against the same gradients from matrix products.

`profile_train_step.py` finds attention about 30% of a SmolLM2 training step in bf16, its backward 4-5x its
forward, and so the cap on the loop's speed-up over a plain fp32 loop. This measures the one alternative that
needs no new kernel: the flash-attention backward written as blocked bf16 matrix products over the kernel's own
saved log-sum-exp (FlashAttention-2's backward, one block of query rows at a time, causal blocks skipped),
eager and under torch.compile (which fuses its elementwise work), in the same run as the kernel.

    python benchmarks/bench_attention_backward.py                 # SmolLM2-135M's shape: 4 x 9 heads x 1,024 x 64
    python benchmarks/bench_attention_backward.py --block 128 --no-compile

Printed: milliseconds per backward (best of `--repeats`), the ratio kernel / ours, and the relative error of each
gradient against the kernel's.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
FLASH_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def blocked_backward(dout, q, k, v, out, lse, scale: float, block: int):
    """dQ, dK, dV of causal attention from the forward's output and log-sum-exp, `block` query rows at a time."""
    length = q.shape[2]
    dq = torch.empty_like(q)
    dk = torch.zeros(k.shape, dtype=torch.float32)
    dv = torch.zeros(v.shape, dtype=torch.float32)
    delta = (dout.float() * out.float()).sum(-1, keepdim=True)  # rowsum(dO * O)
    for start in range(0, length, block):
        end = min(start + block, length)
        q_blk, do_blk = q[:, :, start:end], dout[:, :, start:end]
        keys, values = k[:, :, :end], v[:, :, :end]  # causal: later keys see none of these rows
        probs = torch.matmul(q_blk, keys.transpose(-1, -2)).float()
        probs.mul_(scale).sub_(lse[:, :, start:end, None]).exp_()
        future = torch.ones(end - start, end - start, dtype=torch.bool).triu_(1)
        probs[..., start:end].masked_fill_(future, 0.0)
        dv[:, :, :end] += torch.matmul(probs.to(q.dtype).transpose(-1, -2), do_blk)
        dscores = torch.matmul(do_blk, values.transpose(-1, -2)).float()
        dscores = dscores.sub_(delta[:, :, start:end]).mul_(probs).to(q.dtype)
        dq[:, :, start:end] = torch.matmul(dscores, keys) * scale
        dk[:, :, :end] += torch.matmul(dscores.transpose(-1, -2), q_blk).float() * scale
    return dq, dk.to(k.dtype), dv.to(v.dtype)


def best_ms(fn, repeats: int) -> float:
    fn()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--block", type=int, default=256, help="query rows a block (default 256)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    args = parser.parse_args(argv)
    if min(args.batch, args.heads, args.seq_len, args.head_dim, args.block, args.repeats) < 1:
        parser.error("every size must be at least 1")

    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, args.heads, args.seq_len, args.head_dim)
    q, k, v, dout = (torch.randn(shape, generator=gen).to(torch.bfloat16) for _ in range(4))
    scale = 1 / math.sqrt(args.head_dim)
    out, lse = FLASH(q, k, v, 0.0, True, scale=scale)
    reference = FLASH_BACKWARD(dout, q, k, v, out, lse, 0.0, True, scale=scale)

    forward_ms = best_ms(lambda: FLASH(q, k, v, 0.0, True, scale=scale), args.repeats)
    kernel_ms = best_ms(lambda: FLASH_BACKWARD(dout, q, k, v, out, lse, 0.0, True, scale=scale), args.repeats)
    print(f"shape {shape} bf16, causal; kernel forward {forward_ms:.1f} ms, backward {kernel_ms:.1f} ms")
    variants = {"blocked matmuls, eager": blocked_backward}
    if not args.no_compile:
        variants["blocked matmuls, compiled"] = torch.compile(blocked_backward, dynamic=False)
    for name, fn in variants.items():
        ms = best_ms(lambda fn=fn: fn(dout, q, k, v, out, lse, scale, args.block), args.repeats)
        grads = fn(dout, q, k, v, out, lse, scale, args.block)
        errors = [float((g.float() - r.float()).norm() / r.float().norm()) for g, r in zip(grads, reference)]
        print(
            f"{name:28s} {ms:7.1f} ms  kernel/ours {kernel_ms / ms:.2f}x  "
            f"relative error dQ {errors[0]:.4f} dK {errors[1]:.4f} dV {errors[2]:.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
