"""Chunked linear + cross-entropy: the loss without the [tokens, vocab] fp32 logits tensor.

transformers' loss materialises the logits of the whole micro-batch and then several fp32 copies
of them (upcast, log-softmax, its gradient): at 16,384 tokens x 32,016 pieces that is ~2 GB
each. Here the output layer and the loss run together, `chunk` tokens at a time, and the
gradients of the hidden states and of the output weight are computed in the same pass (the
softmax is at hand then; nothing is recomputed in backward, as in Liger-Kernel's fused
linear-cross-entropy). Memory stays at one chunk of logits (in the compute dtype); the fp32
log-softmax runs on `block`-row slices small enough to stay in the CPU cache, which on CPU is
3-4x faster than one pass over the whole [tokens, vocab] tensor.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
BLOCK_ELEMENTS = 2**20  # fp32 log-softmax rows per block: ~4 MB, an L2 cache's worth


def ce_block(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of a block of logit rows and its gradient (softmax - one-hot).

    The log-softmax runs in fp32 in one kernel straight from the (bf16) logits; the softmax is
    then made in place from it. Rows whose target is IGNORE_INDEX add nothing and get a zero
    gradient. The gradient comes back in fp32 (the caller rounds it once, where it stores it).
    """
    valid = targets != IGNORE_INDEX
    tgt = targets.clamp(min=0)[:, None]
    logp = torch.log_softmax(logits, -1, dtype=torch.float32)
    loss = -(logp.gather(1, tgt)[:, 0] * valid).sum()
    grad = logp.exp_()
    grad.scatter_add_(1, tgt, -valid[:, None].to(grad.dtype))
    grad.index_fill_(0, (~valid).nonzero()[:, 0], 0)
    return loss, grad


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, compute_dtype, chunk, block):
        w = weight.to(compute_dtype)
        w_t = w.T.contiguous()                     # oneDNN is faster on [dim, vocab] than on a transposed view
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty(hidden.shape, dtype=compute_dtype, device=hidden.device)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk].to(compute_dtype)
            t = targets[start:start + chunk]
            logits = h @ w_t                       # [chunk, vocab] in the compute dtype
            for b in range(0, logits.shape[0], block):
                part, g = ce_block(logits[b:b + block], t[b:b + block])
                loss += part
                logits[b:b + block] = g            # the gradient overwrites the logits it came from
            grad_h[start:start + chunk] = logits @ w
            grad_w += (h.T.contiguous() @ logits).T
        ctx.save_for_backward(grad_h.to(hidden.dtype), grad_w.to(weight.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss, grad_w * grad_loss, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                         compute_dtype: torch.dtype | None = None, chunk: int = 2048,
                         block: int | None = None) -> torch.Tensor:
    """Sum over tokens of CE(hidden @ weight.T, target); targets equal to IGNORE_INDEX are skipped.

    hidden [tokens, dim], weight [vocab, dim], targets [tokens]; the matmuls run in `compute_dtype`
    (default: the hidden states' dtype), the softmax in fp32. Divide by the number of targets
    yourself: the loop divides by the count of the whole global batch.
    """
    block = block or max(1, BLOCK_ELEMENTS // weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, targets, compute_dtype or hidden.dtype, chunk, block)


def causal_lm_loss(model, input_ids: torch.Tensor, labels: torch.Tensor, *, autocast, compute_dtype: torch.dtype,
                   chunk: int = 2048) -> torch.Tensor:
    """Summed next-token loss of a LlamaForCausalLM, labels as transformers takes them (unshifted, -100 = skip).

    The model runs its own forward (so FSDP hooks fire) but keeps no logits position; the final
    hidden states are caught on the way out of the decoder stack.
    """
    caught = []
    hook = model.model.register_forward_hook(lambda module, args, out: caught.append(out.last_hidden_state))
    try:
        with autocast():
            model(input_ids=input_ids, logits_to_keep=torch.empty(0, dtype=torch.long, device=input_ids.device))
    finally:
        hook.remove()
    hidden = caught[0]
    targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # position t predicts t+1
    return linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), model.lm_head.weight, targets.reshape(-1),
                                compute_dtype=compute_dtype, chunk=chunk)
