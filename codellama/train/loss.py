"""Chunked linear + cross-entropy: the loss without the [tokens, vocab] fp32 logits tensor.

transformers' loss materialises the logits of the whole micro-batch and then several fp32 copies
of them (upcast, log-softmax, its gradient): at 16,384 tokens x 32,016 pieces that is ~2 GB
each. Here the output layer and the loss run together, `chunk` tokens at a time, and the
gradients of the hidden states and of the output weight are computed in the same pass (the
softmax is at hand then; nothing is recomputed in backward, as in Liger-Kernel's fused
linear-cross-entropy). Memory stays at one chunk of logits (in the compute dtype), which the
softmax gradient then overwrites in place; the fp32 softmax runs on `block`-row slices small
enough to stay in the CPU cache.

On CPU the chunk of logits lives in a buffer kept between calls: a fresh 100+ MB tensor per
chunk is a fresh mmap, and first-touching its pages cost as much as the matmul that fills it.
"""

from __future__ import annotations

import threading

import torch

IGNORE_INDEX = -100
BLOCK_ELEMENTS = 2**19  # fp32 softmax rows per block: ~2 MB, inside one core's L2
CHUNK_TOKENS = 2048  # logit rows held at once (the memory estimate counts the same)

_buffers: dict[tuple[torch.dtype, torch.device, int], torch.Tensor] = {}  # per thread: two loops may share a process


def logits_buffer(rows: int, vocab: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A [rows, vocab] scratch tensor; on CPU the same memory each call (GPU allocators cache already)."""
    if device.type != "cpu":
        return torch.empty(rows, vocab, dtype=dtype, device=device)
    key = (dtype, device, threading.get_ident())
    buf = _buffers.get(key)
    if buf is None or buf.numel() < rows * vocab:
        _buffers.pop(key, None)  # drop the old one before allocating its successor
        buf = _buffers[key] = torch.empty(rows * vocab, dtype=dtype, device=device)
    return buf[: rows * vocab].view(rows, vocab)


def release_buffers() -> None:
    """Give this thread's kept logits memory back (the loop calls this when it ends)."""
    for key in [k for k in _buffers if k[2] == threading.get_ident()]:
        del _buffers[key]


def softmax_rows_(logits: torch.Tensor) -> torch.Tensor:
    """Replace a block of logit rows by their softmax (fp32 inside, one exp each); return log-sum-exp."""
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 logits: in place
    m = x.amax(-1, keepdim=True)
    x.sub_(m).exp_()
    s = x.sum(-1, keepdim=True)
    logits.copy_(x.mul_(s.reciprocal()))
    return (m + s.log())[:, 0]


def ce_chunk_(logits: torch.Tensor, targets: torch.Tensor, block: int) -> torch.Tensor:
    """Summed cross-entropy of a chunk of logit rows; the rows become its gradient (softmax - one-hot).

    Rows whose target is IGNORE_INDEX add nothing and get a zero gradient.
    """
    valid = targets != IGNORE_INDEX
    tgt = targets.clamp(min=0)[:, None]
    picked = logits.gather(1, tgt)[:, 0].float()
    lse = torch.cat([softmax_rows_(logits[b : b + block]) for b in range(0, logits.shape[0], block)])
    loss = ((lse - picked) * valid).sum()
    flat = logits.view(-1)  # minus the one-hot (bf16 scatter_add_ on CPU upcasts the whole chunk)
    at = torch.arange(logits.shape[0], device=logits.device) * logits.shape[1] + tgt[:, 0]
    flat[at] = flat[at] - valid.to(logits.dtype)
    if logits.device.type != "cpu":
        logits.masked_fill_(~valid[:, None], 0)  # no host sync on accelerators
    elif not bool(valid.all()):
        logits.index_fill_(0, (~valid).nonzero()[:, 0], 0)
    return loss


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, compute_dtype, chunk, block):
        w = weight.to(compute_dtype)
        w_t = w.T.contiguous()  # oneDNN is faster on [dim, vocab] than on a transposed view
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty(hidden.shape, dtype=compute_dtype, device=hidden.device)
        grad_w_t = torch.zeros(w_t.shape, dtype=torch.float32, device=weight.device)
        buffer = logits_buffer(min(chunk, hidden.shape[0]), weight.shape[0], compute_dtype, hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk].to(compute_dtype)
            logits = buffer[: h.shape[0]]
            torch.matmul(h, w_t, out=logits)
            loss += ce_chunk_(logits, targets[start : start + chunk], block)
            torch.matmul(logits, w, out=grad_h[start : start + chunk])
            grad_w_t += h.T.contiguous() @ logits
        grad_w = torch.empty_like(weight, memory_format=torch.contiguous_format).copy_(grad_w_t.T)  # the param's layout
        ctx.save_for_backward(grad_h.to(hidden.dtype), grad_w)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss, grad_w * grad_loss, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    compute_dtype: torch.dtype | None = None,
    chunk: int = CHUNK_TOKENS,
    block: int | None = None,
) -> torch.Tensor:
    """Sum over tokens of CE(hidden @ weight.T, target); targets equal to IGNORE_INDEX are skipped.

    hidden [tokens, dim], weight [vocab, dim], targets [tokens]; the matmuls run in `compute_dtype`
    (default: the hidden states' dtype), the softmax in fp32. Divide by the number of targets
    yourself: the loop divides by the count of the whole global batch.
    """
    if block is None:  # CPU: cache-sized slices; GPUs: one softmax kernel per chunk
        block = max(1, BLOCK_ELEMENTS // weight.shape[0]) if hidden.device.type == "cpu" else chunk
    return _LinearCrossEntropy.apply(hidden, weight, targets, compute_dtype or hidden.dtype, chunk, block)


def causal_lm_loss(
    model,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    *,
    autocast,
    compute_dtype: torch.dtype,
    chunk: int = CHUNK_TOKENS,
) -> torch.Tensor:
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
    return linear_cross_entropy(
        hidden.reshape(-1, hidden.shape[-1]),
        model.lm_head.weight,
        targets.reshape(-1),
        compute_dtype=compute_dtype,
        chunk=chunk,
    )
