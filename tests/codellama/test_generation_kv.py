"""The generation path's KV cache (grows in place) and attention (grouped heads, not repeated) give the
same numbers as transformers' own."""

import pytest
import torch
from _bases_helpers import tiny_llama_config
from transformers import DynamicCache, LlamaForCausalLM

from codellama.generation.attention import use_grouped_attention
from codellama.generation.kv import GrowingLayer, growing_cache

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny_llama(kv_heads: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = tiny_llama_config(
        300, num_key_value_heads=kv_heads, max_position_embeddings=256, attn_implementation="sdpa"
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def gqa_model():
    return _tiny_llama(kv_heads=2)


def _chunked_logits(model, cache, ids, mask, chunks):
    """Logits of the last position after feeding `ids` in `chunks` (prompt chunks, then single tokens)."""
    out, start = [], 0
    for size in chunks:
        part = slice(start, start + size)
        attention = mask[:, : start + size]
        positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, part]
        with torch.inference_mode():
            logits = model(input_ids=ids[:, part], attention_mask=attention, position_ids=positions, cache=cache).logits
        out.append(logits[:, -1])
        start += size
    return torch.stack(out)


@pytest.mark.parametrize("padded", [True, False], ids=["padded batch", "one row, no mask"])
def test_grouped_attention_and_the_growing_cache_match_transformers(gqa_model, padded):
    """Prompt chunks then one token at a time: stock sdpa + DynamicCache against grouped attention +
    GrowingLayer, position by position; a left-padded batch (a mask) and a lone row (causal, no mask)."""
    ids = torch.randint(3, 300, (2 if padded else 1, 40))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :7] = 0  # the second row is 7 tokens shorter (left padding)
    chunks = [16, 16] + [1] * 8
    stock = _chunked_logits(gqa_model, DynamicCache(config=gqa_model.config), ids, mask, chunks)
    assert use_grouped_attention(gqa_model)
    try:
        ours = _chunked_logits(gqa_model, growing_cache(gqa_model.config), ids, mask, chunks)
    finally:
        gqa_model.set_attn_implementation("sdpa")
    torch.testing.assert_close(ours, stock, rtol=1e-4, atol=1e-4)


def test_appends_write_into_spare_room_and_never_into_a_view_handed_out():
    layer = GrowingLayer()
    k = torch.randn(1, 2, 100, 8)
    layer.update(k, k.clone())
    storage = layer.keys.untyped_storage().data_ptr()
    handed_out = layer.keys[0]  # what the prompt cache keeps of a finished prompt
    before = handed_out.clone()
    for _ in range(10):  # decode steps
        step = torch.randn(1, 2, 1, 8)
        keys, values = layer.update(step, step.clone())
        assert torch.equal(keys[..., -1:, :], step) and torch.equal(values[..., -1:, :], step)
    assert layer.keys.untyped_storage().data_ptr() == storage  # no reallocation: room was kept
    assert layer.get_seq_length() == 110
    torch.testing.assert_close(layer.keys[..., :100, :], k, rtol=0, atol=0)
    assert torch.equal(handed_out, before)

    layer.keys, layer.values = layer.keys[:, :, 5:], layer.values[:, :, 5:]  # the decoder trims a column block
    trimmed = layer.keys
    layer.update(torch.ones(1, 2, 1, 8), torch.ones(1, 2, 1, 8))
    assert layer.get_seq_length() == 106 and torch.equal(layer.keys[..., :105, :], trimmed)
    assert layer.keys.untyped_storage().data_ptr() != storage  # assigned storage is never written past its end


def test_a_model_without_grouped_heads_keeps_its_attention():
    model = _tiny_llama(kv_heads=4)
    assert not use_grouped_attention(model) and model.config._attn_implementation == "sdpa"
