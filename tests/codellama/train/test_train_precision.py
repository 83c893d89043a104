"""bf16 weights with fp32 masters: the twin computes in bf16, the masters take the step, save and resume exactly."""

from __future__ import annotations

import contextlib
import shutil

import pytest
import torch
from _train_helpers import final_weights, metric_losses, write_code_shards

from codellama.checkpoint import load_model
from codellama.train import precision as precisions
from codellama.train import resolve_config, state, train
from codellama.train.loss import causal_lm_loss
from codellama.train.precision import BF16Twin, resolve, use_bf16


def test_the_twin_is_bf16_and_hands_fp32_gradients_to_the_masters(tiny_model_dir):
    model = load_model(tiny_model_dir).train()
    model.config.use_cache = False
    twin = BF16Twin(model)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in twin.model.parameters())
    # RoPE's frequencies are a buffer: kept in fp32, equal to the masters'
    buffers, master_buffers = dict(twin.model.named_buffers()), dict(model.named_buffers())
    assert buffers and all(
        b.dtype == master_buffers[n].dtype and torch.equal(b, master_buffers[n]) for n, b in buffers.items()
    )

    tokens = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    causal_lm_loss(twin.model, tokens, tokens, autocast=contextlib.nullcontext, compute_dtype=torch.bfloat16).backward()
    grads = [p.grad.clone() for p in twin.params]
    twin.accumulate_grads()
    assert all(p.grad is None for p in twin.params)
    assert all(m.grad.dtype == torch.float32 and torch.equal(m.grad, g.float()) for m, g in zip(twin.masters, grads))
    causal_lm_loss(twin.model, tokens, tokens, autocast=contextlib.nullcontext, compute_dtype=torch.bfloat16).backward()
    twin.accumulate_grads()  # a second micro-batch adds to the fp32 sums
    assert all(torch.allclose(m.grad, 2 * g.float(), rtol=1e-2, atol=1e-6) for m, g in zip(twin.masters, grads))

    with torch.no_grad():
        for m in twin.masters:
            m.add_(1.0)
    twin.refresh()
    assert all(torch.equal(p, m.to(torch.bfloat16)) for p, m in zip(twin.params, twin.masters))
    assert use_bf16("bf16-weights", torch.device("cpu")) and not use_bf16("fp32", torch.device("cpu"))


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_the_fastest_precision_the_device_does_natively(monkeypatch, native):
    """auto: bf16 weights in one CPU process, bf16 on GPUs and under torchrun; fp32 where bf16 is emulated
    (an AVX2-only CPU multiplies bf16 ~100x slower than fp32). An explicit precision is kept."""
    monkeypatch.setattr(precisions, "native_bf16", lambda device: native)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    expected = ("bf16-weights", "bf16", "bf16") if native else ("fp32", "fp32", "fp32")
    assert (resolve("auto", cpu), resolve("auto", cpu, distributed=True), resolve("auto", cuda)) == expected
    assert use_bf16("auto", cpu) is native
    for explicit in precisions.PRECISIONS[1:]:
        assert resolve(explicit, cpu) == explicit


@pytest.mark.slow
def test_bf16_weights_train_and_resume_bit_exactly(tiny_tokenizer, tiny_tokenizer_dir, stdlib_texts, tmp_path):
    shards = write_code_shards(tiny_tokenizer, stdlib_texts[:30], tmp_path / "shards", 64)

    def config(out, precision="bf16-weights"):
        overrides = [
            f"precision={precision}",
            "max_steps=6",
            "seq_len=64",
            "batch_tokens=512",
            "micro_batch_size=4",  # two micro-batches a step: gradients summed in the fp32 masters
            "checkpoint_every=3",
            "schedule.warmup_steps=1",
        ]
        return resolve_config(
            "code", "tiny", overrides, data=str(shards), out=str(out), tokenizer=str(tiny_tokenizer_dir)
        )

    unbroken = train(config(tmp_path / "unbroken"), progress=False)
    losses = metric_losses(tmp_path / "unbroken")
    assert unbroken.steps == 6 and losses[-1][1] < losses[0][1] - 0.3
    weights = final_weights(tmp_path / "unbroken")
    assert all(w.dtype == torch.float32 for w in weights.values())  # the masters are what is exported

    # A run stopped after its step-3 checkpoint, resumed: the same losses and the same final weights.
    shutil.copytree(tmp_path / "unbroken", tmp_path / "resumed")
    resumed = tmp_path / "resumed"
    shutil.rmtree(resumed / "final")
    for step, path in state.list_checkpoints(resumed / "checkpoints"):
        if step > 3:
            shutil.rmtree(path)
    assert train(config(resumed), resume=True, progress=False).start_step == 3
    assert metric_losses(resumed) == losses
    again = final_weights(resumed)
    assert again.keys() == weights.keys() and all(torch.equal(again[k], weights[k]) for k in weights)

    # Autocast over the same start takes other numbers (the twin is not autocast under another name).
    autocast = train(config(tmp_path / "autocast", precision="bf16"), progress=False)
    assert autocast.steps == 6 and metric_losses(tmp_path / "autocast") != losses
