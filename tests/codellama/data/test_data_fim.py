"""The FIM transform: exact reassembly, observed rates, single-id markers, syntax-aligned middles."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from codellama.data.fim import (
    FimOptions,
    FimSample,
    document_rng,
    fim_tokens,
    fim_tokens_batch,
    fim_transform,
    parse_fim_tokens,
)
from codellama.data.spans import char_span, syntax_nodes, syntax_span

# SentencePiece reads U+2581 ("▁") in input as its own space marker, so it decodes as " " in
# plain text too; that is a property of the tokenizer, not of FIM, and is left out here.
documents = st.text(alphabet=st.characters(blacklist_characters="\u2581", blacklist_categories=("Cs",)), max_size=300)
ALWAYS_FIM = FimOptions(fim_rate=1.0, spm_rate=0.5)
SLOW = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@given(text=st.text(max_size=200), seed=st.integers(0, 2**32), fim_rate=st.floats(0, 1), spm_rate=st.floats(0, 1))
@example(text="", seed=0, fim_rate=1.0, spm_rate=1.0)
@example(text="x", seed=3, fim_rate=1.0, spm_rate=0.0)
def test_every_sample_reassembles_into_its_document(text, seed, fim_rate, spm_rate):
    sample = fim_transform(text, random.Random(seed), FimOptions(fim_rate, spm_rate))
    assert sample.prefix + sample.middle + sample.suffix == text
    assert sample.mode in ("plain", "psm", "spm")
    if sample.mode == "plain":
        assert (sample.middle, sample.suffix) == ("", "")


@SLOW
@given(text=documents, seed=st.integers(0, 2**32))
@example(text="", seed=0)
@example(text="x", seed=1)
@example(text="é", seed=2)
@example(text=" leading space", seed=7)
@example(text="def f():\n    return 'ünïcødé ✓ 日本語 🐍'\n", seed=11)
@example(text="a file that says <PRE> <SUF> <MID> <EOT> ▁<PRE> in its text".replace("▁", ""), seed=5)
def test_tokens_decode_back_to_the_exact_document(tiny_tokenizer, text, seed):
    tok = tiny_tokenizer
    sample = fim_transform(text, random.Random(seed), ALWAYS_FIM)
    ids = fim_tokens(sample, tok)
    # each marker is exactly one control id, BOS first and EOS last (Llama convention)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    for marker in (tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id):
        assert ids.count(marker) == 1
    assert ids[-2] == tok.eot_id
    parsed = parse_fim_tokens(ids, tok)
    assert parsed.text == text
    if parsed.mode == "psm":  # the pieces themselves come back, not only their concatenation
        assert (parsed.prefix, parsed.middle, parsed.suffix) == (sample.prefix, sample.middle, sample.suffix)
    else:  # SPM writes prefix+middle back to back (and PSM with an empty prefix has the same tokens)
        assert parsed.suffix == sample.suffix
        assert parsed.prefix == sample.prefix + sample.middle


def test_token_layouts_follow_code_llama(tiny_tokenizer):
    tok = tiny_tokenizer
    sample = FimSample("psm", "def f(x):\n", "    return x", "\n\nprint(f(1))\n", "char")
    ids = fim_tokens(sample, tok, bos=False, eos=False)
    assert ids == (
        [tok.prefix_id]
        + tok.encode(sample.prefix)
        + [tok.suffix_id]
        + tok.encode_infilling(sample.suffix)
        + [tok.middle_id]
        + tok.encode_infilling(sample.middle)
        + [tok.eot_id]
    )
    spm = FimSample("spm", sample.prefix, sample.middle, sample.suffix, "char")
    assert fim_tokens(spm, tok, bos=False, eos=False) == (
        [tok.prefix_id, tok.suffix_id]
        + tok.encode_infilling(spm.suffix)
        + [tok.middle_id]
        + tok.encode(spm.prefix)
        + tok.encode_infilling(spm.middle)
        + [tok.eot_id]
    )
    plain = FimSample("plain", "x = 1\n")
    assert fim_tokens(plain, tok) == tok.encode("x = 1\n", bos=True, eos=True)
    # the PSM prompt part is exactly what inference builds (codellama.tokenizer.infilling_prompt)
    assert ids[: ids.index(tok.middle_id) + 1] == tok.infilling_prompt(sample.prefix, sample.suffix, bos=False)


def test_batched_tokens_equal_one_by_one(tiny_tokenizer, stdlib_texts):
    samples = [fim_transform(t, document_rng(0, i), FimOptions()) for i, t in enumerate(stdlib_texts[:40])]
    assert fim_tokens_batch(samples, tiny_tokenizer, num_threads=2) == [fim_tokens(s, tiny_tokenizer) for s in samples]


@pytest.mark.parametrize("fim_rate,spm_rate", [(0.9, 0.5), (0.3, 0.8), (1.0, 0.0), (0.0, 0.5)])
def test_observed_rates_match_the_settings_over_10000_documents(fim_rate, spm_rate):
    n = 10_000
    samples = [
        fim_transform("some code\n" * (i % 7 + 1), document_rng(1234, i), FimOptions(fim_rate, spm_rate))
        for i in range(n)
    ]
    fim = [s for s in samples if s.mode != "plain"]
    spm = sum(s.mode == "spm" for s in fim)
    # within 5 standard deviations of a binomial (deterministic seeds: this never flakes)
    assert abs(len(fim) / n - fim_rate) <= 5 * (fim_rate * (1 - fim_rate) / n) ** 0.5 + 1e-12
    if fim:
        assert abs(spm / len(fim) - spm_rate) <= 5 * (spm_rate * (1 - spm_rate) / len(fim)) ** 0.5 + 1e-12


def test_char_cuts_are_two_uniform_positions():
    rng = random.Random(0)
    length, n = 1000, 20_000
    spans = [char_span(length, rng) for _ in range(n)]
    assert all(0 <= a <= b <= length for a, b in spans)
    # min and max of two uniforms average 1/3 and 2/3; middle length averages 1/3 of the document
    assert abs(sum(a for a, _ in spans) / n / length - 1 / 3) < 0.01
    assert abs(sum(b for _, b in spans) / n / length - 2 / 3) < 0.01
    assert {a for a, _ in spans} >= {0} and max(b for _, b in spans) == length


def test_document_rng_does_not_depend_on_order():
    texts = ["abc" * 10, "def g(): pass\n", "x"]
    forward = [fim_transform(t, document_rng(7, i), FimOptions()) for i, t in enumerate(texts)]
    backward = [fim_transform(texts[i], document_rng(7, i), FimOptions()) for i in reversed(range(3))][::-1]
    assert forward == backward
    assert [fim_transform(texts[0], document_rng(s, 0), ALWAYS_FIM) for s in range(20)].count(forward[0]) < 20


def _is_whole_nodes(root, start_byte: int, end_byte: int) -> bool:
    """The byte range is one node, or runs from the start of one child to the end of a later sibling."""
    node = root.descendant_for_byte_range(start_byte, end_byte)
    while node is not None:
        if (node.start_byte, node.end_byte) == (start_byte, end_byte):
            return True
        children = node.children
        firsts = [i for i, c in enumerate(children) if c.start_byte == start_byte]
        lasts = [i for i, c in enumerate(children) if c.end_byte == end_byte]
        if firsts and lasts and min(firsts) <= max(lasts):
            return True
        node = node.parent
    return False


@pytest.fixture(scope="module")
def parseable_files(stdlib_texts):
    small = [t for t in stdlib_texts if len(t) < 30_000]
    return [t for t in small if syntax_nodes(t, "python") is not None][:60]


def _node_part(text: str, start: int, end: int) -> tuple[int, int]:
    """The syntax nodes inside a middle that may have been widened to whole lines (indent + newline)."""
    if start == text.rfind("\n", 0, start) + 1 and text[start:end].endswith("\n"):
        start += len(text[start:end]) - len(text[start:end].lstrip(" \t"))
        end -= 1
    return start, end


@SLOW
@given(seed=st.integers(0, 2**32), which=st.integers(0, 10_000))
@example(seed=0, which=0)
def test_syntax_middles_are_whole_nodes(parseable_files, seed, which):
    text = parseable_files[which % len(parseable_files)]
    sample = fim_transform(text, random.Random(seed), FimOptions(1.0, 0.5, "syntax"), "python")
    assert sample.span == "syntax" and sample.text == text
    start, end = _node_part(text, len(sample.prefix), len(sample.prefix) + len(sample.middle))
    start_byte, end_byte = len(text[:start].encode()), len(text[:end].encode())
    assert _is_whole_nodes(syntax_nodes(text, "python"), start_byte, end_byte), sample.middle


def test_syntax_spans_handle_non_ascii_and_cover_many_node_kinds():
    text = (
        'def grüße(name):\n    """Sagt Hallo — 日本."""\n    msg = f"Hallo {name} ✓"\n    return msg\n\n'
        "class Ä:\n    def m(self):\n        return [x * 2 for x in range(3)]\n"
    )
    root = syntax_nodes(text, "python")
    kinds = set()
    whole_lines = after_indent = 0
    for seed in range(300):
        start, end = syntax_span(text, random.Random(seed), "python")
        if text[start:end].endswith("\n") and text[start] == " ":
            whole_lines += 1  # e.g. "    msg = ...\n": a prefix that ends at a line start, as HumanEval's
        elif text[start - 1] == " ":
            after_indent += 1  # e.g. "msg = ...": the cursor after the indentation
        start, end = _node_part(text, start, end)
        sb, eb = len(text[:start].encode()), len(text[:end].encode())
        assert _is_whole_nodes(root, sb, eb)
        kinds.add(root.descendant_for_byte_range(sb, eb).type)
    assert {"function_definition", "block", "identifier"} <= kinds or len(kinds) >= 8
    assert whole_lines > 10 and after_indent > 10


@pytest.mark.parametrize(
    "text,language",
    [
        ("def broken(:\n  pass\n", "python"),
        ("# Title\n\nSome *text*.\n", "markdown"),
        ("x = 1\n", None),
        ("", "python"),
    ],
)
def test_syntax_mode_falls_back_to_char_spans(text, language):
    samples = [fim_transform(text, random.Random(s), FimOptions(1.0, 0.5, "syntax"), language) for s in range(20)]
    assert all(s.span == "char" and s.text == text for s in samples)


def test_a_chunk_cut_inside_a_function_still_gets_whole_statement_middles():
    """Training rows hold chunks of files cut at line ends: the error-free nodes inside one are still used."""
    text = (
        '    "beta": 2,\n}\ntotal = 0\nfor item in items:\n    total += item.price\n'
        "\n\ndef tax(amount):\n    rate = 0.2\n    return amount * rate\n"
    )
    root = syntax_nodes(text, "python")
    assert root is not None and root.has_error  # the chunk does not parse as a file
    middles = set()
    for seed in range(200):
        start, end = syntax_span(text, random.Random(seed), "python")
        middle = text[start:end]
        assert not syntax_nodes(middle.strip(), "python").has_error, middle
        assert middle == middle.strip() or middle.endswith(
            "\n"
        )  # a node, or whole lines  # a whole statement/expression
        middles.add(middle)
    assert "    rate = 0.2\n" in middles and any(m.startswith("def tax") for m in middles)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="fim_rate"):
        FimOptions(fim_rate=1.5)
    with pytest.raises(ValueError, match="span_mode"):
        FimOptions(span_mode="ast")
