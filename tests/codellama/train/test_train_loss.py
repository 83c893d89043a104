"""The loop's chunked linear + cross-entropy equals transformers' loss, gradients included."""

from __future__ import annotations

import contextlib
import threading

import pytest
import torch

from codellama.model import build_model
from codellama.presets import get_preset
from codellama.train.loss import IGNORE_INDEX, causal_lm_loss, linear_cross_entropy


def _reference(hidden, weight, targets):
    return torch.nn.functional.cross_entropy(hidden @ weight.T, targets, ignore_index=IGNORE_INDEX, reduction="sum")


@pytest.mark.parametrize("chunk", [7, 64])
def test_matches_cross_entropy_and_its_gradients(chunk):
    torch.manual_seed(0)
    hidden = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(300, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 300, (50,))
    targets[[0, 3, 4, 49]] = IGNORE_INDEX
    loss = linear_cross_entropy(hidden, weight, targets, chunk=chunk, block=3)
    (loss * 2).backward()  # the upstream gradient scales both results
    got = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    ref = _reference(hidden, weight, targets)
    (ref * 2).backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(got[0], hidden.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], weight.grad, rtol=1e-5, atol=1e-6)
    assert got[0][[0, 3, 4, 49]].abs().max() == 0  # ignored positions send no gradient back


def test_all_ignored_gives_zero_loss_and_gradient():
    hidden = torch.randn(5, 8, requires_grad=True)
    weight = torch.randn(40, 8, requires_grad=True)
    loss = linear_cross_entropy(hidden, weight, torch.full((5,), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0 and hidden.grad.abs().max() == 0 and weight.grad.abs().max() == 0


def _model_and_batch():
    model = build_model(get_preset("tiny").replace(vocab_size=512), seed=0)
    model.config.use_cache = False
    ids = torch.randint(3, 512, (3, 40), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, 0] = IGNORE_INDEX
    labels[0, :25] = IGNORE_INDEX  # an instruct-style mask: only the answer (the tail) counts
    labels[2, 10:20] = IGNORE_INDEX
    return model, ids, labels


def test_model_loss_equals_transformers_loss_with_a_loss_mask():
    model, ids, labels = _model_and_batch()
    n = int((labels[:, 1:] != IGNORE_INDEX).sum())
    ours = (
        causal_lm_loss(model, ids, labels, autocast=contextlib.nullcontext, compute_dtype=torch.float32, chunk=16) / n
    )
    ours.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    theirs = model(input_ids=ids, labels=labels).loss
    theirs.backward()
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    for k, p in model.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, rtol=1e-4, atol=1e-6, msg=k)


def test_bf16_autocast_loss_is_close_to_transformers():
    model, ids, labels = _model_and_batch()
    n = int((labels[:, 1:] != IGNORE_INDEX).sum())
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    ours = causal_lm_loss(model, ids, labels, autocast=autocast, compute_dtype=torch.bfloat16) / n
    with autocast():
        theirs = model(input_ids=ids, labels=labels).loss
    assert ours.item() == pytest.approx(theirs.item(), rel=2e-3)


def test_kept_logits_buffer_is_reused_and_regrown_without_changing_results():
    """The CPU buffer outlives a call: a larger vocabulary regrows it, a smaller one reuses it."""
    from codellama.train import loss as loss_module

    torch.manual_seed(2)
    for vocab, rows in [(300, 40), (700, 90), (50, 10), (300, 40)]:
        hidden = torch.randn(rows, 16, dtype=torch.float64, requires_grad=True)
        weight = torch.randn(vocab, 16, dtype=torch.float64, requires_grad=True)
        targets = torch.randint(0, vocab, (rows,))
        targets[1] = IGNORE_INDEX
        ours = linear_cross_entropy(hidden, weight, targets, chunk=32)
        ours.backward()
        grads = hidden.grad.clone(), weight.grad.clone()
        hidden.grad = weight.grad = None
        ref = _reference(hidden, weight, targets)
        ref.backward()
        assert ours.item() == pytest.approx(ref.item(), rel=1e-6)  # the loss sums in fp32
        torch.testing.assert_close(grads[0], hidden.grad)
        torch.testing.assert_close(grads[1], weight.grad)
    kept = loss_module._buffers[(torch.float64, torch.device("cpu"), threading.get_ident())]  # kept between calls
    assert kept.numel() == 32 * 700  # grown once to the largest [chunk, vocab], then reused
    loss_module.release_buffers()
    assert not loss_module._buffers
