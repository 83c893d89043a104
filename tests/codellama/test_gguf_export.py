"""`codellama export gguf`: every exported file is read back by transformers' own GGUF loader
(an implementation independent of ours) and must give the source model's logits and token ids,
with the infilling ids marked where llama.cpp's `/infill` looks for them."""

from __future__ import annotations

import json

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
from codellama.gguf_export import export_gguf, llama3_rope_factors

# Max |logit difference| allowed against the float source, as a fraction of the largest |logit| (about 3
# for the random tiny models below). f32 must be exact (1e-5 absolute); f16 and bf16 round each weight to
# 11 / 8 significant bits, q8_0 to 8 bits per block of 32 (measured: 0.05%, 0.4%, 1.2%).
TOLERANCE = {"f32": 1e-5, "f16": 2e-3, "bf16": 1.5e-2, "q8_0": 3e-2}


def assert_close(got: torch.Tensor, want: torch.Tensor, out_type: str) -> None:
    diff = (got - want).abs().max().item()
    bound = TOLERANCE[out_type] * (1.0 if out_type == "f32" else want.abs().max().item())
    assert diff <= bound, f"{out_type}: max |logit diff| {diff:.3g} > {bound:.3g}"


def rounded_like_gguf(model, out_type: str):
    """The source model with every matrix rounded as the GGUF stores it (norms stay f32)."""
    import copy

    import gguf

    qtype = {"f16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16}.get(out_type)
    qtype = qtype or gguf.GGMLQuantizationType.Q8_0
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            if p.dim() == 2:
                q = gguf.quants.quantize(p.detach().numpy(), qtype)
                p.copy_(torch.from_numpy(gguf.quants.dequantize(q, qtype).reshape(p.shape)))
    return twin


@pytest.fixture(scope="module")
def bpe(stdlib_texts):
    return train_bpe(stdlib_texts[:60])


@pytest.fixture(scope="module")
def bpe_models(bpe, tmp_path_factory):
    """Two byte-level BPE checkpoints: tied embeddings with MHA, and untied output with GQA (4 heads, 2 KV)."""
    out = {}
    for kind, tied, n_kv in (("tied", True, 4), ("untied-gqa", False, 2)):
        path = tmp_path_factory.mktemp("bpe") / kind
        model = random_llama(bpe.get_vocab_size(), tied=tied, n_kv=n_kv, seed=len(kind))
        model.save_pretrained(path)
        save_bpe_tokenizer(bpe, path)
        out[kind] = (path, model)
    return out


@pytest.fixture(scope="module")
def token_ids():
    return torch.randint(0, 1000, (2, 48), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("out_type", ["f32", "f16", "bf16", "q8_0"])
@pytest.mark.parametrize("kind", ["tied", "untied-gqa"])
def test_bpe_export_gives_the_source_logits_in_transformers(bpe_models, token_ids, tmp_path, kind, out_type):
    src_dir, model = bpe_models[kind]
    out = export_gguf(src_dir, tmp_path / f"{kind}.gguf", out_type=out_type)
    meta = gguf_metadata(out)
    tensors = meta["__tensors__"]
    assert ("output.weight" in tensors) == (kind != "tied")  # llama.cpp reads token_embd when it is absent
    assert meta["llama.attention.head_count_kv"] == model.config.num_key_value_heads
    expected_matrix_type = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}[out_type]
    assert tensors["blk.0.attn_q.weight"] == expected_matrix_type and tensors["blk.0.attn_norm.weight"] == "F32"

    theirs = logits_of(load_gguf_with_transformers(out), token_ids)
    assert_close(theirs, logits_of(model, token_ids), out_type)
    if out_type != "f32":  # and exactly the source's logits once its weights are rounded the same way
        assert (theirs - logits_of(rounded_like_gguf(model, out_type), token_ids)).abs().max().item() < 1e-4


def test_bpe_export_tokenizer_metadata_and_token_ids(bpe_models, bpe, tmp_path):
    from transformers import AutoTokenizer

    src_dir, _ = bpe_models["tied"]
    out = export_gguf(src_dir, tmp_path / "m.gguf", out_type="f32")
    meta = gguf_metadata(out)
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "smollm"  # digits one by one, then GPT-2's split
    assert len(meta["tokenizer.ggml.tokens"]) == bpe.get_vocab_size() == meta["llama.vocab_size"]
    assert len(meta["tokenizer.ggml.merges"]) == len(json.loads(bpe.to_str())["model"]["merges"])
    assert meta["tokenizer.ggml.token_type"][bpe.token_to_id("<PRE>")] == 3  # CONTROL
    assert meta["tokenizer.ggml.bos_token_id"] == bpe.token_to_id("<|im_start|>")
    assert meta["tokenizer.ggml.eos_token_id"] == bpe.token_to_id("<|im_end|>")
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.chat_template"] == CHATML

    fim = {k: meta[f"tokenizer.ggml.{k}"] for k in ("fim_pre_token_id", "fim_suf_token_id", "fim_mid_token_id")}
    assert fim == {
        "fim_pre_token_id": bpe.token_to_id("<PRE>"),
        "fim_suf_token_id": bpe.token_to_id("<SUF>"),
        "fim_mid_token_id": bpe.token_to_id("<MID>"),
    }
    assert meta["tokenizer.ggml.prefix_token_id"] == fim["fim_pre_token_id"]
    assert meta["tokenizer.ggml.suffix_token_id"] == fim["fim_suf_token_id"]
    assert meta["tokenizer.ggml.middle_token_id"] == fim["fim_mid_token_id"]
    assert meta["tokenizer.ggml.eot_token_id"] == bpe.token_to_id("<EOT>")

    text = stdlib_file_text()
    theirs = AutoTokenizer.from_pretrained(str(out.parent), gguf_file=out.name)
    assert theirs(text).input_ids == bpe.encode(text).ids


def test_sentencepiece_export_logits_token_ids_and_infilling_ids(tiny_model_dir, tiny_tokenizer, tmp_path):
    from transformers import AutoTokenizer, LlamaForCausalLM

    out = export_gguf(tiny_model_dir, tmp_path / "tiny.gguf", out_type="f32")
    meta = gguf_metadata(out)
    assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.add_bos_token"] is True
    assert [meta[f"tokenizer.ggml.fim_{r}_token_id"] for r in ("pre", "suf", "mid")] == [2007, 2008, 2009]
    assert meta["tokenizer.ggml.eot_token_id"] == 2010

    source = LlamaForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(0, 2016, (1, 64), generator=torch.Generator().manual_seed(1))
    assert_close(logits_of(load_gguf_with_transformers(out), ids), logits_of(source, ids), "f32")

    text = stdlib_file_text()
    theirs = AutoTokenizer.from_pretrained(str(out.parent), gguf_file=out.name)
    assert theirs(text).input_ids == tiny_tokenizer.encode(text, bos=True)


@pytest.mark.slow  # transformers rebuilds 32,016 merges from the scores: ~30 s
def test_code_llama_32016_vocabulary_keeps_ids_and_types(llama2_tokenizer_path, tmp_path):
    from transformers import AutoTokenizer

    from codellama.checkpoint import save_checkpoint
    from codellama.model import build_model
    from codellama.presets import get_preset
    from codellama.tokenizer import CodeLlamaTokenizer

    tok = CodeLlamaTokenizer.extend_llama(llama2_tokenizer_path)
    model = build_model(get_preset("tiny").replace(vocab_size=32016), seed=0)
    src = save_checkpoint(model, tmp_path / "cl", tok)
    out = export_gguf(src, tmp_path / "cl.gguf", out_type="q8_0")
    meta = gguf_metadata(out)
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == 32016
    assert tokens[32007:32011] == ["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"]
    assert [meta[f"tokenizer.ggml.{k}_token_id"] for k in ("prefix", "suffix", "middle", "eot")] == [
        32007,
        32008,
        32009,
        32010,
    ]
    assert types[0] == 2 and types[1] == types[2] == 3 and types[tokens.index("<0x0A>")] == 6  # unk, control, byte
    assert types[32007] == 3 and meta["tokenizer.ggml.scores"][100] == tok.sp.get_score(100)
    assert meta["tokenizer.ggml.add_space_prefix"] is True

    text = stdlib_file_text()
    theirs = AutoTokenizer.from_pretrained(str(out.parent), gguf_file=out.name)
    assert theirs(text).input_ids == tok.encode(text, bos=True)


def _with_rope(src_dir, tmp_path, rope: dict, context: int = 256):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(src_dir)
    model.config.rope_parameters = {"rope_theta": 10000.0, **rope}
    model.config.max_position_embeddings = context
    out = tmp_path / rope["rope_type"]
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "infilling_tokens.json"):
        (out / name).write_bytes((src_dir / name).read_bytes())
    return out


def test_rope_scaling_is_written_as_llama_cpp_names_it(bpe_models, tmp_path, caplog):
    import logging

    src, _ = bpe_models["tied"]
    meta = gguf_metadata(
        export_gguf(_with_rope(src, tmp_path, {"rope_type": "linear", "factor": 4.0}, 1024), tmp_path / "l.gguf")
    )
    assert (meta["llama.rope.scaling.type"], meta["llama.rope.scaling.factor"]) == ("linear", 4.0)
    assert meta["llama.context_length"] == 1024 and meta["llama.rope.freq_base"] == 10000.0

    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256}
    meta = gguf_metadata(export_gguf(_with_rope(src, tmp_path, yarn, 1024), tmp_path / "y.gguf"))
    assert (meta["llama.rope.scaling.type"], meta["llama.rope.scaling.factor"]) == ("yarn", 4.0)
    assert meta["llama.rope.scaling.original_context_length"] == 256

    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    llama3_dir = _with_rope(src, tmp_path, {**llama3, "original_max_position_embeddings": 64}, 512)
    path = export_gguf(llama3_dir, tmp_path / "l3.gguf", out_type="f32")
    meta = gguf_metadata(path)
    assert "llama.rope.scaling.type" not in meta and meta["__tensors__"]["rope_freqs.weight"] == "F32"
    import gguf

    stored = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == "rope_freqs.weight")
    from transformers import LlamaConfig

    factors = llama3_rope_factors(LlamaConfig.from_pretrained(llama3_dir))
    assert torch.allclose(torch.from_numpy(stored.data.copy()), factors)
    assert factors.min() == 1.0 and factors.max() == 8.0  # high frequencies kept, low ones divided by the factor

    with caplog.at_level(logging.WARNING, logger="codellama.gguf_export"):
        meta = gguf_metadata(
            export_gguf(_with_rope(src, tmp_path, {"rope_type": "dynamic", "factor": 2.0}), tmp_path / "d.gguf")
        )
    assert "llama.rope.scaling.type" not in meta and "dynamic-NTK" in caplog.text


def test_export_cli_q8_0_and_atomic_output(bpe_models, tmp_path, capsys):
    src, _ = bpe_models["untied-gqa"]
    out = tmp_path / "model-q8.gguf"
    assert main(["export", "gguf", str(src), "--out", str(out), "--type", "q8_0"]) == 0
    assert "model-q8.gguf" in capsys.readouterr().out
    assert gguf_metadata(out)["general.file_type"] == 7  # MOSTLY_Q8_0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert main(["export", "gguf", str(src), "--out", str(out)]) == 2  # never overwritten silently
    assert "already exists" in capsys.readouterr().err


def _one_line_error(capsys, *args) -> str:
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("codellama: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_export_bad_input_is_one_line_and_writes_nothing(bpe_models, tmp_path, capsys):
    src, _ = bpe_models["tied"]
    out = tmp_path / "x.gguf"

    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    err = _one_line_error(capsys, "export", "gguf", str(other), "--out", str(out))
    assert "config.json" in err and "gpt2" in err and "Llama" in err

    small = tmp_path / "small-vocab"
    model = random_llama(500, tied=True)  # the tokenizer has 1,000 tokens
    model.save_pretrained(small)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (small / name).write_bytes((src / name).read_bytes())
    err = _one_line_error(capsys, "export", "gguf", str(small), "--out", str(out))
    assert "tokenizer.json" in err and "500" in err

    (small / "tokenizer.json").unlink()
    err = _one_line_error(capsys, "export", "gguf", str(small), "--out", str(out))
    assert "no tokenizer" in err

    record = tmp_path / "bad-record"
    model = random_llama(1000, tied=True)
    model.save_pretrained(record)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (record / name).write_bytes((src / name).read_bytes())
    (record / "infilling_tokens.json").write_text(
        json.dumps({"prefix_id": 5000, "suffix_id": 4, "middle_id": 5, "eot_id": 6})
    )
    err = _one_line_error(capsys, "export", "gguf", str(record), "--out", str(out))
    assert "infilling_tokens.json" in err and "5000" in err

    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
