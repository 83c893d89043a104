"""benchmarks/fim_in_distribution.py: the middle NLL of held-out code cut exactly as the FIM data stage cuts it."""

from __future__ import annotations

import json

from _bench_helpers import load_benchmark

fim_in_distribution = load_benchmark("fim_in_distribution")


def test_rows_are_the_training_examples_split_before_the_middle(extended_bpe, stdlib_texts):
    """PSM / SPM rows are the data stage's own example tokens, split where the middle starts (the target is
    the healed middle and <EOT>); prefix-only scores the same middle tokens after the prefix alone."""
    import random

    from codellama.data.fim import FimOptions, FimSample, fim_tokens, fim_transform, heal_whitespace
    from codellama.tokenizer import load_tokenizer

    tok = load_tokenizer(extended_bpe("chatml"))
    chunks = fim_in_distribution.cut_chunks(stdlib_texts, 6, 600, seed=0)
    assert len(chunks) == 6 and all(c.endswith("\n") and len(c) <= 600 for c in chunks)
    rows = fim_in_distribution.fim_rows(chunks, tok, "python", seed=0)
    expected = []
    for i, chunk in enumerate(chunks):
        cut = fim_transform(chunk, random.Random(f"0/{i}"), FimOptions(1.0, 0.0, "syntax"), "python")
        healed = heal_whitespace(cut, tok)
        if tok.encode_infilling(healed.middle) and tok.encode(healed.prefix):
            expected.append((cut, healed))
    assert 0 < len(expected) == len(rows["psm"]) == len(rows["spm"]) == len(rows["prefix"])
    for (cut, healed), psm, spm, prefix in zip(expected, rows["psm"], rows["spm"], rows["prefix"]):
        assert psm[0] + psm[1] == fim_tokens(cut, tok, eos=False)
        assert spm[0] + spm[1] == fim_tokens(FimSample("spm", cut.prefix, cut.middle, cut.suffix), tok, eos=False)
        assert psm[1] == spm[1] and psm[1][-1] == tok.eot_id
        assert tok.decode_infilling(psm[1][:-1]) == healed.middle
        assert prefix == (tok.encode(healed.prefix), psm[1][:-1])


def test_cli_scores_a_model_and_refuses_bad_input(extended_bpe, stdlib_texts, tmp_path, capsys):
    docs = tmp_path / "heldout.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in stdlib_texts[:8]))
    model = extended_bpe("chatml")
    out = tmp_path / "r.json"
    args = ["--documents", str(docs), "--model", str(model), "--chunks", "4", "--chars", "500", "--out", str(out)]
    assert fim_in_distribution.main([*args, "--dtype", "float32"]) == 0
    result = json.loads(out.read_text())["results"][0]
    assert 1 <= result["chunks"] <= 4 and result["psm"]["mean"] > 0 and result["psm <EOT>"]["mean"] > 0
    gap = result["psm"]["mean"] - result["prefix"]["mean"]
    assert abs(result["psm-prefix"]["mean"] - gap) < 1e-4  # the paired gap is the gap of the means
    assert "| PSM - prefix |" in capsys.readouterr().out.replace("| NLL PSM", "").replace(
        "SPM - prefix", "PSM - prefix"
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "x"}\n')
    assert fim_in_distribution.main(["--documents", str(bad), "--model", str(model)]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.jsonl" in err and "'text'" in err and len(err.splitlines()) == 1
