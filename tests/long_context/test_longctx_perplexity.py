"""Perplexity versus context length: the numbers equal a direct computation over the same tokens."""

from __future__ import annotations

import json
import math

import pytest
import torch

from codellama.checkpoint import load_model
from codellama.cli import main
from codellama.rope import rope_set, set_rope
from long_context.perplexity import corpus_tokens, long_ppl, prefix_token_nll, sample_windows, token_nll


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(tiny_model_dir).eval()


@pytest.fixture(scope="module")
def windows(tiny_tokenizer, stdlib_texts):
    return sample_windows(corpus_tokens(tiny_tokenizer, 2 * 700, stdlib_texts), 2, 700)


def _direct_nll(model, ids: torch.Tensor) -> torch.Tensor:
    """Textbook: full logits, log-softmax, the log-probability of each next token."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids[None]).logits[0].double(), dim=-1)
    return -logp[:-1].gather(1, ids[1:, None])[:, 0]


def test_corpus_is_concatenated_files_and_windows_share_prefixes(tiny_tokenizer, stdlib_texts, windows):
    first = tiny_tokenizer.encode(stdlib_texts[0], bos=True, eos=True)
    stream = corpus_tokens(tiny_tokenizer, 1400, stdlib_texts)
    assert stream[: len(first)].tolist() == first[:1400]
    assert windows.shape == (2, 700) and torch.equal(windows.flatten(), stream)
    with pytest.raises(ValueError, match="only"):
        corpus_tokens(tiny_tokenizer, 10**8, stdlib_texts[:2])


def test_long_ppl_matches_a_direct_computation(model, windows):
    lengths = [64, 700]
    points = long_ppl(model, windows, lengths, progress=False)
    for point, length in zip(points, lengths):
        nll = torch.cat([_direct_nll(model, row[:length]) for row in windows])
        assert point.length == length and point.tokens == 2 * (length - 1) == nll.numel()
        assert point.nll == pytest.approx(nll.mean().item(), rel=1e-5)
        assert point.ppl == pytest.approx(math.exp(nll.mean().item()), rel=1e-5)


def test_one_forward_scores_every_length_unless_the_rope_follows_the_length(tiny_model_dir, windows):
    """The shorter lengths come from the longest forward's prefix, except for dynamic NTK, whose
    frequencies change with the sequence it is given: there each length gets its own forward."""
    row, lengths = windows[0], [64, 700]
    for scaling in (None, {"rope_type": "linear", "factor": 2.0}, {"rope_type": "dynamic", "factor": 2.0}):
        model = load_model(tiny_model_dir).eval()
        if scaling:
            set_rope(model, scaling=scaling, max_context=model.config.max_position_embeddings)
        got = prefix_token_nll(model, row, lengths)
        for n in lengths:
            assert got[n].shape == (n - 1,)
            assert torch.allclose(got[n], token_nll(model, row[None, :n])[0], atol=1e-5), (scaling, n)
    # dynamic NTK really does score a prefix differently inside a longer sequence
    assert not torch.allclose(token_nll(model, row[None, :700])[0, :63], got[64], atol=1e-3)


def test_sliding_window_scores_each_token_once_with_at_most_window_context(model, windows):
    row = windows[0, :300]
    full = token_nll(model, row[None])[0]
    assert torch.allclose(token_nll(model, row[None], window=512)[0], full)  # window >= length: no change
    window, stride = 64, 40
    got = token_nll(model, row[None], window=window, stride=stride)[0]
    assert got.numel() == 299
    # Reference, window by window from full logits: windows start every `stride` tokens, and each
    # scores the targets the previous windows have not scored yet.
    expected = torch.empty(299, dtype=torch.float64)
    scored_to, begin = 1, 0
    while scored_to < 300:
        end = min(begin + window, 300)
        nll = _direct_nll(model, row[begin:end])  # targets begin+1 .. end-1
        expected[scored_to - 1 : end - 1] = nll[scored_to - begin - 1 :]
        scored_to, begin = end, begin + stride
    assert torch.allclose(got.double(), expected, atol=1e-5)
    # Less context than the full prefix: later tokens get different (here: not identical) losses.
    assert not torch.allclose(got[window:], full[window:])
    with pytest.raises(ValueError, match="stride"):
        token_nll(model, row[None], window=8, stride=9)


@pytest.mark.slow
def test_long_ppl_cli_compares_models(tmp_path, tiny_model_dir, model, capsys):
    raised = tmp_path / "raised"
    rope_set(tiny_model_dir, raised, base=1e6)
    out = tmp_path / "ppl"
    assert (
        main(
            [
                "eval",
                "long-ppl",
                "--model",
                f"base={tiny_model_dir}",
                "--model",
                f"1m={raised}",
                "--lengths",
                "128,512",
                "--samples",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "long_ppl.json").read_text())
    assert list(report["models"]) == ["base", "1m"] and report["lengths"] == [128, 512]
    assert report["models"]["1m"]["rope_parameters"]["rope_theta"] == 1e6
    base, raised_points = (report["models"][k]["points"] for k in ("base", "1m"))
    assert all(p["tokens"] == 2 * (p["length"] - 1) for p in base)
    # Same tokens, different RoPE: the numbers differ; the base model's are long_ppl's on the default corpus.
    assert base[1]["ppl"] != raised_points[1]["ppl"]
    from codellama.tokenizer import load_tokenizer

    default = sample_windows(corpus_tokens(load_tokenizer(tiny_model_dir), 2 * 512), 2, 512)
    direct = long_ppl(model, default, [128, 512], progress=False)
    assert [p["ppl"] for p in base] == pytest.approx([p.ppl for p in direct], rel=1e-6)
    assert (out / "long_ppl.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in capsys.readouterr().out
    assert main(["eval", "long-ppl", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert (
        main(["eval", "long-ppl", "--model", str(tiny_model_dir), "--stride", "8", "--out", str(tmp_path / "o3")]) == 2
    )
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
