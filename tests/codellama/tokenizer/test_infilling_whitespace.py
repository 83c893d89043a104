"""Where the middle meets prefix and suffix on a byte-level BPE: the whitespace at both ends goes to the middle.

Such a tokenizer writes a newline and the next line's indentation as one token, so an infilling prompt that
ends on the newline ends where no text did, and a middle of whole lines that ends on a lone newline ends on a
token the model never writes there. Infilling tokens the toolkit adds to it record that prompts and FIM
training data leave the prefix's trailing whitespace and the suffix's leading whitespace to the middle, and
generation leaves the model's echo of the one and its tail of the other out.
"""

from __future__ import annotations

import json
import random

import pytest

from codellama.data.fim import FimSample, fim_tokens, parse_fim_tokens
from codellama.generation import GenerationRequest, HFGenerator, SamplingParams, Sink
from codellama.generation.stopping import drop_tail, safe_to_stream, skip_echo
from codellama.tokenizer import INFILLING_TOKENS_FILE, load_tokenizer
from infilling.inference import FitLimits, fit_infill

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PREFIX, SUFFIX = "def area(w, h):\n    ", "\n\nprint(area(2, 3))\n"
# a hole of one whole line, as HumanEval's single-line infilling and an editor at a line start ask
LINE_PREFIX, LINE_MIDDLE, LINE_SUFFIX = "def f(x):\n", "    if x:\n", "        return total\n"


def test_added_tokens_on_a_merging_bpe_move_the_whitespace_and_reused_ones_do_not(extended_bpe):
    added, reused = load_tokenizer(extended_bpe("chatml")), load_tokenizer(extended_bpe("starcoder"))
    assert added.merges_newline_with_indent()
    assert added.infilling.whitespace_to_middle and added.infilling_echo(PREFIX) == "\n    "
    assert json.loads((extended_bpe("chatml") / INFILLING_TOKENS_FILE).read_text())["whitespace_to_middle"] is True
    for suffix_first in (False, True):
        assert added.infilling_prompt(PREFIX, SUFFIX, suffix_first=suffix_first) == added.infilling_prompt(
            PREFIX.rstrip(), SUFFIX, suffix_first=suffix_first
        )
    # StarCoder-style FIM tokens keep the format their base was trained in (and the record stays as it was)
    assert not reused.infilling.whitespace_to_middle and reused.infilling_echo(PREFIX) == ""
    assert "whitespace_to_middle" not in json.loads((extended_bpe("starcoder") / INFILLING_TOKENS_FILE).read_text())
    assert reused.infilling_prompt(PREFIX, SUFFIX) != reused.infilling_prompt(PREFIX.rstrip(), SUFFIX)
    assert not reused.infilling.suffix_whitespace_to_middle and reused.infilling_tail(LINE_SUFFIX) == ""


def test_the_middle_ends_on_the_token_the_model_writes_there(extended_bpe):
    """The suffix's leading whitespace that the BPE writes with the newline before it goes to the middle's end,
    so a middle of whole lines ends on the same token as in the whole text (newline + indent), then <EOT>."""
    tok = load_tokenizer(extended_bpe("chatml"))
    assert tok.infilling.suffix_whitespace_to_middle
    assert json.loads((extended_bpe("chatml") / INFILLING_TOKENS_FILE).read_text())["suffix_whitespace_to_middle"]
    tail = tok.infilling_tail(LINE_SUFFIX)
    assert tail and not tail.strip() and LINE_SUFFIX.startswith(tail)
    assert tok.infilling_tail("return total") == tok.infilling_tail(" return total") == ""  # nothing to move
    for mode in ("psm", "spm"):
        ids = fim_tokens(FimSample(mode, LINE_PREFIX, LINE_MIDDLE, LINE_SUFFIX), tok, eos=False)
        prompt = tok.infilling_prompt(LINE_PREFIX, LINE_SUFFIX, suffix_first=mode == "spm")
        assert ids[: len(prompt)] == prompt and ids[-1] == tok.eot_id
        middle = ids[len(prompt) : -1]
        assert tok.decode_infilling(middle) == tok.infilling_echo(LINE_PREFIX) + LINE_MIDDLE + tail
        assert middle[-1] in tok.encode(LINE_PREFIX + LINE_MIDDLE + LINE_SUFFIX)  # the whole text's own token
        assert tok.decode_infilling(middle[-1:]).startswith("\n")
        assert parse_fim_tokens(ids, tok).text == LINE_PREFIX + LINE_MIDDLE + LINE_SUFFIX
    suffix_ids = tok.infilling_prompt(LINE_PREFIX, LINE_SUFFIX)[
        -1 - len(tok.encode_infilling(LINE_SUFFIX[len(tail) :])) : -1
    ]
    assert tok.decode_infilling(suffix_ids) == LINE_SUFFIX[len(tail) :]


def test_drop_tail_and_streaming_hold_back_the_suffix_whitespace():
    assert drop_tail("   ", "    y = 1\n   ") == "    y = 1\n"
    assert drop_tail("   ", "    y = 1\n") == "    y = 1\n"  # ended otherwise: kept as written
    assert drop_tail("", "x\n") == "x\n"
    assert safe_to_stream("    y = 1\n  ", (), "   ") == len("    y = 1\n")  # may still become the tail
    assert safe_to_stream("    y = 1\n", (), "   ") == len("    y = 1\n")


@pytest.mark.parametrize("key", ["whitespace_to_middle", "suffix_whitespace_to_middle"])
def test_a_bad_whitespace_record_is_a_clear_error(extended_bpe, tmp_path, key):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(extended_bpe("chatml"), copy)
    record = json.loads((copy / INFILLING_TOKENS_FILE).read_text())
    (copy / INFILLING_TOKENS_FILE).write_text(json.dumps({**record, key: "yes"}))
    with pytest.raises(ValueError, match=f"{key} must be true or false"):
        load_tokenizer(copy)


@pytest.mark.parametrize("mode", ["psm", "spm"])
def test_fim_training_rows_start_with_the_prompt_generation_uses(extended_bpe, mode):
    """What training shows before the middle is exactly the inference prompt, and the text survives."""
    tok = load_tokenizer(extended_bpe("chatml"))
    middle = "return w * h"
    ids = fim_tokens(FimSample(mode, PREFIX, middle, SUFFIX), tok, eos=False)
    prompt = tok.infilling_prompt(PREFIX, SUFFIX, suffix_first=mode == "spm")
    assert ids[: len(prompt)] == prompt
    assert tok.decode_infilling(ids[len(prompt) : -1]) == "\n    " + middle + tok.infilling_tail(SUFFIX)
    back = parse_fim_tokens(ids, tok)
    assert back.mode == mode and back.text == PREFIX + middle + SUFFIX
    plain = fim_tokens(FimSample("plain", PREFIX + middle + SUFFIX), tok, eos=False)
    assert tok.decode(plain) == PREFIX + middle + SUFFIX  # left-to-right documents are untouched


def test_skip_echo_leaves_out_only_what_the_model_wrote_back():
    assert skip_echo("\n    ", "\n    return 1") == "return 1"
    assert skip_echo("\n    ", "\n  ") == ""  # still all echo: a stream holds it back
    assert skip_echo("\n    ", "\n\n    x = 1") == "\n    x = 1"  # an empty line first is the model's own
    assert skip_echo("\n    ", "x") == "x"
    assert skip_echo("", "\n    x") == "\n    x"


class _Collect(Sink):
    """The streamed pieces of one row."""

    def __init__(self):
        self.parts = []

    def text(self, delta):
        self.parts.append(delta)


def _scripted(model, script: dict[int, int]):
    """Make `model` choose `script[last input token]` next (a forward hook on its logits)."""
    import torch

    def hook(module, args, kwargs, output):
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]
        for b, last in enumerate(ids[:, -1].tolist()):
            if last in script:
                output.logits[b, -1] = torch.full_like(output.logits[b, -1], -1e4)
                output.logits[b, -1, script[last]] = 1e4
        return output

    return model.register_forward_hook(hook, with_kwargs=True)


def test_generation_leaves_the_echo_out_of_the_middle(extended_bpe):
    """A model that writes the left-out whitespace back, then the middle, then <EOT>: the middle, streamed
    and whole, is the text after the whitespace, and a newline stop string does not fire on the echo."""
    gen = HFGenerator.from_pretrained(extended_bpe("chatml"))
    tok = gen.tokenizer
    written = tok.encode_infilling("\n    return w")
    assert len(set(written)) == len(written) and tok.decode_infilling(written[:1]).startswith("\n")
    chain = [tok.middle_id, *written, tok.eot_id]
    handle = _scripted(gen.model, dict(zip(chain, chain[1:])))
    sink = _Collect()
    params = SamplingParams(max_new_tokens=16, temperature=0.0, stop=("\n",))
    try:
        [done] = gen.generate([GenerationRequest(PREFIX, suffix=SUFFIX, params=params)], [sink])
    finally:
        handle.remove()
    assert done.token_ids == written and done.finish_reason == "stop"
    assert done.text == "return w" and "".join(sink.parts) == "return w"
    assert done.prompt_tokens == len(tok.infilling_prompt(PREFIX, SUFFIX))


def test_generation_leaves_the_suffix_whitespace_out_of_the_middle(extended_bpe):
    """A model that writes a whole line, the suffix's leading whitespace its prompt left out, then <EOT>: the
    middle, streamed and whole, is the line; one that stops by length keeps what it wrote."""
    gen = HFGenerator.from_pretrained(extended_bpe("chatml"))
    tok = gen.tokenizer
    tail = tok.infilling_tail(LINE_SUFFIX)
    written = tok.encode_infilling(tok.infilling_echo(LINE_PREFIX) + LINE_MIDDLE + tail)
    assert len(set(written)) == len(written) and tok.decode_infilling(written[-1:]) == "\n" + tail
    chain = [tok.middle_id, *written, tok.eot_id]
    handle = _scripted(gen.model, dict(zip(chain, chain[1:])))
    sink = _Collect()
    try:
        [done] = gen.generate(
            [GenerationRequest(LINE_PREFIX, suffix=LINE_SUFFIX, params=SamplingParams(max_new_tokens=32))], [sink]
        )
        [cut] = gen.generate(
            [GenerationRequest(LINE_PREFIX, suffix=LINE_SUFFIX, params=SamplingParams(max_new_tokens=len(written)))]
        )
    finally:
        handle.remove()
    assert done.finish_reason == "stop" and done.text == LINE_MIDDLE and "".join(sink.parts) == LINE_MIDDLE
    assert cut.finish_reason == "length" and cut.text == LINE_MIDDLE + tail


def test_fitted_editor_prompts_agree_with_the_plain_prompt(extended_bpe):
    """The server's fitted prompt: untyped, as `infilling_prompt`; with typed text after <MID>, the prefix's
    whitespace and the typed text follow <MID> and the typed text's own trailing whitespace is left out."""
    tok = load_tokenizer(extended_bpe("chatml"))
    limits = FitLimits(room=512, window=512)
    untyped = fit_infill(tok, PREFIX, SUFFIX, limits)
    assert untyped.prompt_ids == tok.infilling_prompt(PREFIX, SUFFIX) and tok.infilling_echo(untyped.prefix)
    typed = fit_infill(tok, PREFIX, SUFFIX, limits, middle="return ")
    assert typed.prompt_ids == tok.infilling_prompt(PREFIX, SUFFIX) + tok.encode_infilling("\n    return")
    assert tok.infilling_echo(typed.prefix) == " "
    spaces = fit_infill(tok, PREFIX, SUFFIX, limits, middle="  ")
    assert spaces.prompt_ids == tok.infilling_prompt(PREFIX, SUFFIX)
    assert tok.infilling_echo(spaces.prefix) == "\n      "


def test_random_cuts_reassemble(extended_bpe):
    tok = load_tokenizer(extended_bpe("chatml"))
    text = "class A:\n    def f(self):\n        return 1\n\n    def g(self):\n        pass\n"
    rng = random.Random(0)
    for _ in range(30):
        a, b = sorted(rng.randint(0, len(text)) for _ in range(2))
        for mode in ("psm", "spm"):
            sample = FimSample(mode, text[:a], text[a:b], text[b:])
            assert parse_fim_tokens(fim_tokens(sample, tok), tok).text == text
