import hashlib

import pytest

from codellama.tokenizer import EOT, MIDDLE, PREFIX, SUFFIX, CodeLlamaTokenizer, TrainOptions, save_tokenizer_dir


def test_trained_tokenizer_reserves_infilling_pieces(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.vocab_size == 2016
    assert (tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id) == (2007, 2008, 2009, 2010)
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)


def test_round_trip_is_byte_exact(tiny_tokenizer, stdlib_texts):
    odd = [
        "",
        "x",
        " ",
        "\n",
        "  leading spaces",
        "tab\tand\r\nCRLF\n",
        "émoji 🐍 and 中文 ",
        "\x00\x1f\x7f",
        "trailing space ",
        "\n\n\ndef f():\n\treturn 1\n",
    ]
    for text in stdlib_texts + odd:
        assert tiny_tokenizer.decode(tiny_tokenizer.encode(text)) == text


def test_infilling_pieces_are_never_produced_from_text(tiny_tokenizer):
    ids = tiny_tokenizer.encode("a <PRE> b <SUF> c <MID> d <EOT> ▁<PRE>")
    assert not set(ids) & {2007, 2008, 2009, 2010}


def test_encode_infilling_drops_the_dummy_space(tiny_tokenizer):
    tok = tiny_tokenizer
    for text in ["return x", " return x", "\n    pass", "x"]:
        ids = tok.encode_infilling(text)
        assert tok.decode_infilling(ids) == text
    # Plain encoding adds SentencePiece's dummy "▁" to a leading word; infilling encoding does not.
    assert tok.sp.id_to_piece(tok.encode("return")[0]).startswith("▁")
    assert not tok.sp.id_to_piece(tok.encode_infilling("return")[0]).startswith("▁")


def test_infilling_prompt_layout(tiny_tokenizer):
    tok = tiny_tokenizer
    pre, suf = "def f(x):\n    ", "\n    return y\n"
    psm = tok.infilling_prompt(pre, suf)
    assert psm == [
        tok.bos_id,
        tok.prefix_id,
        *tok.encode(pre),
        tok.suffix_id,
        *tok.encode_infilling(suf),
        tok.middle_id,
    ]
    spm = tok.infilling_prompt(pre, suf, suffix_first=True)
    assert spm == [
        tok.bos_id,
        tok.prefix_id,
        tok.suffix_id,
        *tok.encode_infilling(suf),
        tok.middle_id,
        *tok.encode(pre),
    ]
    assert tok.render(psm).startswith("<s> <PRE>")


def test_extend_meta_llama2_tokenizer(llama2_tokenizer_path, tmp_path):
    import sentencepiece as spm

    assert hashlib.md5(llama2_tokenizer_path.read_bytes()).hexdigest() == "eeec4125e9c7560836b4873b6f8e3025"
    base = spm.SentencePieceProcessor(model_file=str(llama2_tokenizer_path))
    tok = CodeLlamaTokenizer.extend_llama(llama2_tokenizer_path)
    assert tok.vocab_size == 32016
    assert [tok.piece_id(p) for p in (PREFIX, SUFFIX, MIDDLE, EOT)] == [32007, 32008, 32009, 32010]
    assert all(tok.sp.id_to_piece(i) == base.id_to_piece(i) for i in range(32000))
    assert all(tok.sp.get_score(i) == base.get_score(i) for i in range(0, 32000, 97))
    known = [1, 11644, 338, 278, 29871, 29946, 29945, 386, 7178, 310, 278, 3303, 3900, 29973]
    assert tok.encode("Who is the 45th President of the United States?", bos=True) == known
    # Code Llama's own rule for suffixes: encode("☺" + s)[2:] (☺ is one piece in Llama's vocabulary).
    for s in ["    return x\n", "x = 1", " spaced", "\tdef g():"]:
        assert tok.encode_infilling(s) == tok.encode("☺" + s)[2:]

    from transformers import AutoTokenizer

    out = save_tokenizer_dir(tok, tmp_path / "tok")
    hf = AutoTokenizer.from_pretrained(out)
    assert len(hf) == 32016
    assert hf.convert_tokens_to_ids([PREFIX, SUFFIX, MIDDLE, EOT]) == [32007, 32008, 32009, 32010]
    assert hf.encode("Who is the 45th President of the United States?") == known


def test_hf_tokenizer_matches_sentencepiece(tiny_tokenizer_dir, tiny_tokenizer, stdlib_texts):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    for text in stdlib_texts[:20]:
        text = text[:3000]
        assert hf.encode(text, add_special_tokens=False) == tiny_tokenizer.encode(text)
        assert hf.decode(tiny_tokenizer.encode(text)) == text


def test_train_rejects_tiny_vocab(stdlib_texts):
    with pytest.raises(ValueError, match="too small"):
        CodeLlamaTokenizer.train(stdlib_texts[:3], TrainOptions(vocab_size=100))


def test_load_rejects_garbage(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a valid SentencePiece model"):
        CodeLlamaTokenizer.load(bad)


@pytest.mark.slow
def test_main_job_tokenizer_round_trips_every_stdlib_file():
    """The tiny run's trained tokenizer (every stdlib file, 4,016 pieces) loses no byte of any file."""
    import yaml

    from codellama.data.stdlib import iter_source_texts
    from family.config import config_path

    texts = list(iter_source_texts())
    assert len(texts) > 1000
    vocab = yaml.safe_load(config_path("tiny").read_text())["tokenizer"]["vocab_size"]
    tok = CodeLlamaTokenizer.train(texts, TrainOptions(vocab_size=vocab))
    assert [tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id] == [vocab - 9, vocab - 8, vocab - 7, vocab - 6]
    broken = [i for i, (text, ids) in enumerate(zip(texts, tok.encode_batch(texts))) if tok.decode(ids) != text]
    assert broken == []
