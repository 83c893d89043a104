"""Meta's native layout -> Hugging Face: logits must match a reference forward of Meta's layout."""

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

from codellama.checkpoint import load_model
from codellama.cli import main
from codellama.convert import convert_meta_to_hf

PARAMS = {
    "dim": 64,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "vocab_size": 96,
    "multiple_of": 32,
    "norm_eps": 1e-5,
    "rope_theta": 10000.0,
}


def ffn_dim(p):
    hidden = int(2 * 4 * p["dim"] / 3)
    return p["multiple_of"] * ((hidden + p["multiple_of"] - 1) // p["multiple_of"])


def random_meta_weights(p, seed=0):
    g = torch.Generator().manual_seed(seed)
    d, h, kv, f = p["dim"], p["n_heads"], p["n_kv_heads"], ffn_dim(p)
    hd = d // h

    def w(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    sd = {
        "tok_embeddings.weight": w(p["vocab_size"], d),
        "norm.weight": 1 + w(d),
        "output.weight": w(p["vocab_size"], d),
        "rope.freqs": torch.zeros(hd // 2),
    }
    for i in range(p["n_layers"]):
        sd.update(
            {
                f"layers.{i}.attention.wq.weight": w(h * hd, d),
                f"layers.{i}.attention.wk.weight": w(kv * hd, d),
                f"layers.{i}.attention.wv.weight": w(kv * hd, d),
                f"layers.{i}.attention.wo.weight": w(d, h * hd),
                f"layers.{i}.feed_forward.w1.weight": w(f, d),
                f"layers.{i}.feed_forward.w2.weight": w(d, f),
                f"layers.{i}.feed_forward.w3.weight": w(f, d),
                f"layers.{i}.attention_norm.weight": 1 + w(d),
                f"layers.{i}.ffn_norm.weight": 1 + w(d),
            }
        )
    return sd


def shard(sd, n):
    """Split like Meta's model-parallel files: column-parallel by rows, row-parallel by columns."""
    shards = [{} for _ in range(n)]
    for k, v in sd.items():
        if k.endswith(("wq.weight", "wk.weight", "wv.weight", "w1.weight", "w3.weight", "output.weight")):
            parts = v.chunk(n, dim=0)
        elif k.endswith(("wo.weight", "w2.weight", "tok_embeddings.weight")):
            parts = v.chunk(n, dim=1)
        else:
            parts = [v] * n
        for s, part in zip(shards, parts):
            s[k] = part.clone()
    return shards


def meta_reference_forward(sd, p, tokens):
    """Meta's llama/model.py math: complex (interleaved) rotary embedding, RMSNorm, SwiGLU, GQA."""
    d, h, kv = p["dim"], p["n_heads"], p["n_kv_heads"]
    hd = d // h
    T = tokens.shape[1]
    freqs = 1.0 / (p["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
    freqs_cis = torch.polar(torch.ones(T, hd // 2), torch.outer(torch.arange(T).float(), freqs))

    def rope(x):
        xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(xc * freqs_cis[None, :, None, :]).flatten(3)

    def norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + p["norm_eps"]) * w

    x = sd["tok_embeddings.weight"][tokens]
    mask = torch.full((T, T), float("-inf")).triu(1)
    for i in range(p["n_layers"]):
        L = lambda name: sd[f"layers.{i}.{name}.weight"]  # noqa: E731
        a = norm(x, L("attention_norm"))
        q = (a @ L("attention.wq").T).view(1, T, h, hd)
        k = (a @ L("attention.wk").T).view(1, T, kv, hd)
        v = (a @ L("attention.wv").T).view(1, T, kv, hd)
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(h // kv, dim=2), v.repeat_interleave(h // kv, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd) + mask
        out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(1, T, d)
        x = x + out @ L("attention.wo").T
        f = norm(x, L("ffn_norm"))
        x = x + (F.silu(f @ L("feed_forward.w1").T) * (f @ L("feed_forward.w3").T)) @ L("feed_forward.w2").T
    return norm(x, sd["norm.weight"]) @ sd["output.weight"].T


def write_meta_checkpoint(directory, sd, n_shards, params=PARAMS):
    directory.mkdir()
    (directory / "params.json").write_text(json.dumps(params))
    for i, s in enumerate(shard(sd, n_shards)):
        torch.save(s, directory / f"consolidated.{i:02d}.pth")


@pytest.mark.parametrize("n_shards", [1, 2])
def test_converted_logits_match_meta_reference(tmp_path, n_shards):
    sd = random_meta_weights(PARAMS)
    write_meta_checkpoint(tmp_path / "meta", sd, n_shards)
    out = convert_meta_to_hf(tmp_path / "meta", tmp_path / "hf")
    model = load_model(out)
    assert model.config.num_key_value_heads == 2 and model.config.intermediate_size == ffn_dim(PARAMS)
    tokens = torch.randint(0, PARAMS["vocab_size"], (1, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(tokens).logits
    torch.testing.assert_close(ours, meta_reference_forward(sd, PARAMS, tokens), atol=1e-4, rtol=1e-4)


def test_conversion_shards_safetensors_and_cli(tmp_path, capsys):
    params = {**PARAMS, "rope_theta": 1_000_000.0}
    sd = random_meta_weights(params, seed=3)
    write_meta_checkpoint(tmp_path / "meta", sd, 2, params)
    rc = main(
        [
            "convert",
            "meta-to-hf",
            "--input",
            str(tmp_path / "meta"),
            "--out",
            str(tmp_path / "hf"),
            "--max-shard-gb",
            "0.00005",
        ]
    )
    assert rc == 0
    assert len(list((tmp_path / "hf").glob("model-*-of-*.safetensors"))) > 1
    out = capsys.readouterr().out
    assert re.search(r"^rope_theta\s+1000000.0$", out, re.M) and re.search(r"^preset\s+custom$", out, re.M)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    tokens = torch.arange(17)[None] % PARAMS["vocab_size"]
    with torch.no_grad():
        torch.testing.assert_close(
            model(tokens).logits, meta_reference_forward(sd, params, tokens), atol=1e-4, rtol=1e-4
        )


def test_conversion_errors_are_one_line_and_leave_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["convert", "meta-to-hf", "--input", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no params.json" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "params.json").write_text(json.dumps(PARAMS))
    (bad / "consolidated.00.pth").write_bytes(b"garbage")
    assert main(["convert", "meta-to-hf", "--input", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("codellama: error: cannot read") and err.count("\n") == 1
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))
