"""Infilling prompts are Code Llama's, token by token; cursor splits and extra context behave."""

import pytest

from infilling.inference import InfillTask, infilling_prompt_ids, split_at_cursor, with_extra_context

# Leading-space cases are where a naive encode goes wrong: SentencePiece's dummy prefix
# would turn a suffix "x" into "▁x" and swallow or double a real leading space.
CASES = [
    ("def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"),
    ("x = ", " 1"),
    ("if a:", "  pass"),
    ("", "return x"),
    ("# é 中文\n", "\tfoo()"),
    ("  indented", ""),
]


def meta_rule(sp, prefix, suffix, spm):
    """Code Llama's reference construction (Meta's llama/generation.py + tokenizer.py), written out with raw
    SentencePiece: the suffix is encoded as "☺" + suffix with the first two pieces ("▁", "☺") dropped."""
    pre, suf, mid = 32007, 32008, 32009
    suffix_ids = sp.encode("☺" + suffix)[2:]
    if spm:
        return [sp.bos_id(), pre, suf] + suffix_ids + [mid] + sp.encode(prefix)
    return [sp.bos_id(), pre] + sp.encode(prefix) + [suf] + suffix_ids + [mid]


@pytest.fixture(scope="module")
def llama_tok(llama2_tokenizer_path):
    from codellama.tokenizer import CodeLlamaTokenizer

    tok = CodeLlamaTokenizer.extend_llama(llama2_tokenizer_path)
    assert tok.sp.encode("☺")[1:] == [tok.sp.piece_to_id("☺")]  # the rule's trick needs "☺" to be one piece
    return tok


@pytest.mark.parametrize("spm", [False, True], ids=["psm", "spm"])
@pytest.mark.parametrize("prefix,suffix", CASES)
def test_prompt_ids_follow_code_llamas_rule(llama_tok, prefix, suffix, spm):
    got = infilling_prompt_ids(llama_tok, prefix, suffix, suffix_first=spm)
    assert got == meta_rule(llama_tok.sp, prefix, suffix, spm)


def test_known_psm_prompt(llama_tok):
    # <s> <PRE> "▁x ▁=" <SUF> "▁" "1" <MID>: the suffix's real space is its own piece, no dummy space added
    assert infilling_prompt_ids(llama_tok, "x =", " 1") == [1, 32007, 921, 353, 32008, 29871, 29896, 32009]
    assert llama_tok.decode_infilling(llama_tok.encode_infilling(" 1")) == " 1"


def test_tiny_tokenizer_uses_special_ids_and_no_dummy_space(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = infilling_prompt_ids(tok, "def f():\n    ", "x\n")
    assert ids[:2] == [tok.bos_id, tok.prefix_id] and ids[-1] == tok.middle_id
    assert ids.count(tok.suffix_id) == 1 and ids.count(tok.prefix_id) == 1
    suffix_ids = ids[ids.index(tok.suffix_id) + 1 : -1]
    assert suffix_ids == tok.encode_infilling("x\n") != tok.encode("x\n")  # encode() would add "▁"
    # A file containing the markers' text cannot forge a marker id.
    forged = infilling_prompt_ids(tok, "<PRE> <SUF>", "<MID> <EOT>")
    assert sum(i in tok.special_ids for i in forged) == 4  # BOS + the three real markers


def test_split_at_cursor():
    text = "def f():\n    return 1\n"
    assert split_at_cursor(text, 2, 5) == InfillTask("def f():\n    ", "return 1\n")
    assert split_at_cursor(text, 1, 1) == InfillTask("", text)
    assert split_at_cursor(text, 2, 13) == InfillTask("def f():\n    return 1", "\n")
    assert split_at_cursor(text, 3, 1) == InfillTask(text, "")  # the empty line after the final newline
    with pytest.raises(ValueError, match="line 4 is outside"):
        split_at_cursor(text, 4, 1)
    with pytest.raises(ValueError, match="column 14 is outside line 2"):
        split_at_cursor(text, 2, 14)


def test_extra_context_goes_before_the_prefix():
    assert with_extra_context("x = 1\n", []) == "x = 1\n"
    out = with_extra_context("import util\n", [("util.py", "def helper(): pass"), ("", "A = 1\n")])
    assert out.endswith("import util\n")
    assert out.index("util.py") < out.index("def helper") < out.index("A = 1") < out.index("import util")
