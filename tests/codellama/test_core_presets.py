import pytest
import torch

from codellama.model import build_model, count_parameters, preset_from_config, resize_vocab_mean_init
from codellama.presets import CODELLAMA_VOCAB, PRESETS, PUBLISHED_PARAMETER_COUNTS, get_preset


@pytest.mark.parametrize(
    "name", ["llama2-7b", "llama2-13b", "llama2-70b", "codellama-7b", "codellama-13b", "codellama-70b"]
)
def test_parameter_counts_match_meta(name):
    assert count_parameters(get_preset(name)) == PUBLISHED_PARAMETER_COUNTS[name]


def test_codellama_34b_as_released_by_meta():
    # Meta released Code Llama 34B without the infilling pieces (32,000 vocab).
    assert (
        count_parameters(get_preset("codellama-34b").replace(vocab_size=32000))
        == PUBLISHED_PARAMETER_COUNTS["codellama-34b@32000"]
    )


def test_llama2_7b_documented_count():
    assert count_parameters(get_preset("llama2-7b")) == 6_738_415_616


@pytest.mark.parametrize(
    "size,shape",
    [
        ("7b", (4096, 32, 32, 32, 11008)),
        ("13b", (5120, 40, 40, 40, 13824)),
        ("34b", (8192, 48, 64, 8, 22016)),
        ("70b", (8192, 80, 64, 8, 28672)),
    ],
)
def test_meta_shapes(size, shape):
    llama, code = get_preset(f"llama2-{size}"), get_preset(f"codellama-{size}")
    for p in (llama, code):
        assert (p.dim, p.n_layers, p.n_heads, p.n_kv_heads, p.ffn_dim) == shape
        assert p.norm_eps == 1e-5
    assert (llama.vocab_size, llama.rope_theta, llama.max_seq_len) == (32000, 10_000, 4096)
    assert (code.vocab_size, code.rope_theta, code.max_seq_len) == (CODELLAMA_VOCAB, 1_000_000, 16384)


def test_unknown_preset_names_choices():
    with pytest.raises(KeyError, match="llama2-7b"):
        get_preset("llama-9b")


def test_model_is_llama_with_sdpa_and_switches():
    model = build_model(get_preset("tiny"), dtype=torch.bfloat16, gradient_checkpointing=True)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config._attn_implementation == "sdpa"
    assert model.dtype == torch.bfloat16 and model.is_activation_checkpointing
    assert preset_from_config(model.config).replace(name="tiny") == get_preset("tiny")


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 32))
    grads = []
    for ckpt in (False, True):
        model = build_model(get_preset("tiny").replace(vocab_size=128), seed=0, gradient_checkpointing=ckpt)
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_resize_vocab_initialises_new_rows_to_mean():
    model = build_model(get_preset("tiny").replace(vocab_size=100), seed=0)
    old_in = model.get_input_embeddings().weight[:100].clone()
    old_out = model.get_output_embeddings().weight[:100].clone()
    resize_vocab_mean_init(model, 116)
    new_in, new_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert new_in.shape[0] == new_out.shape[0] == model.config.vocab_size == 116
    torch.testing.assert_close(new_in[:100], old_in)
    torch.testing.assert_close(new_in[100:], old_in.mean(0).expand(16, -1))
    torch.testing.assert_close(new_out[100:], old_out.mean(0).expand(16, -1))


def test_every_preset_is_consistent():
    for name, preset in PRESETS.items():
        assert preset.name == name
        assert preset.dim % preset.n_heads == 0 and preset.n_heads % preset.n_kv_heads == 0
