"""Llama 2 chat format and instruct loss masking: the loss sees answer tokens and nothing else."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from codellama.chat import encode_dialog, prompt_tokens, render
from codellama.data.chat import pack_dialogs, read_chat_jsonl
from codellama.data.shards import TokenShards
from codellama.train.data import IGNORE_INDEX, count_targets, make_labels

DIALOG = [
    {"role": "system", "content": "You write short Python."},
    {"role": "user", "content": "Reverse a list xs."},
    {"role": "assistant", "content": "return xs[::-1]"},
    {"role": "user", "content": "Now sort it."},
    {"role": "assistant", "content": "return sorted(xs)"},
]


def test_render_is_the_llama2_chat_template():
    assert render(DIALOG) == (
        "<s>[INST] <<SYS>>\nYou write short Python.\n<</SYS>>\n\nReverse a list xs. [/INST] return xs[::-1] </s>"
        "<s>[INST] Now sort it. [/INST] return sorted(xs) </s>"
    )
    assert render([{"role": "user", "content": "hi"}]) == "<s>[INST] hi [/INST]"


def test_mask_covers_exactly_the_answers(tiny_tokenizer):
    tokens, mask = encode_dialog(tiny_tokenizer, DIALOG)
    assert len(tokens) == len(mask)
    tokens, mask = np.array(tokens), np.array(mask)
    # Every masked run is one answer followed by EOS; everything else is prompt.
    runs = np.split(np.arange(len(mask)), np.nonzero(np.diff(mask))[0] + 1)
    answers = [tokens[r] for r in runs if mask[r[0]] == 1]
    assert [tiny_tokenizer.decode(a[:-1]).strip() for a in answers] == ["return xs[::-1]", "return sorted(xs)"]
    assert all(a[-1] == tiny_tokenizer.eos_id for a in answers)
    prompt_text = tiny_tokenizer.decode(tokens[mask == 0])
    assert "Reverse a list xs." in prompt_text and "Now sort it." in prompt_text
    assert "return" not in prompt_text and "You write short Python." in prompt_text
    assert (tokens[mask == 0] == tiny_tokenizer.bos_id).sum() == 2


def test_split_encoding_equals_meta_joint_encoding(tiny_tokenizer):
    # Meta encodes f"[INST] {q} [/INST] {a} " in one piece; the split must not change a token.
    tokens, _ = encode_dialog(tiny_tokenizer, DIALOG[1:3])
    joint = tiny_tokenizer.encode("[INST] Reverse a list xs. [/INST] return xs[::-1] ", bos=True, eos=True)
    assert tokens == joint
    prompt = prompt_tokens(tiny_tokenizer, DIALOG[1:4])
    assert (
        prompt[: len(tokens)] == tokens
        and tiny_tokenizer.decode(prompt[len(tokens) :]) == "[INST] Now sort it. [/INST]"
    )


def test_labels_ignore_everything_but_answers(tiny_tokenizer, tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [{"messages": DIALOG}, {"instruction": "Add one to x.", "response": "return x + 1"}] * 6
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    stats = pack_dialogs(read_chat_jsonl(path), tiny_tokenizer, tmp_path / "shards", seq_len=96)
    shards = TokenShards(tmp_path / "shards")
    assert shards.has_loss_mask and stats.dialogs == 12 and stats.truncated == 0
    tokens = torch.from_numpy(np.stack([shards[i] for i in range(len(shards))]))
    masks = torch.from_numpy(np.stack([shards.loss_mask(i) for i in range(len(shards))]))
    labels = make_labels(tokens, masks)
    kept = labels[labels != IGNORE_INDEX]
    text = tiny_tokenizer.decode([t for t in kept.tolist() if t != tiny_tokenizer.eos_id])
    assert text.split() == ("return xs[::-1] return sorted(xs) return x + 1 " * 6).split()
    assert count_targets(labels) == stats.answer_tokens
    # A dialog never straddles two packed sequences: each starts with <s>[INST].
    assert all(int(t[0]) == tiny_tokenizer.bos_id for t in tokens)


def test_bad_chat_records_are_reported_with_line_numbers(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"messages": DIALOG})
        + "\n"
        + json.dumps({"messages": [{"role": "assistant", "content": "hi"}]})
        + "\n"
    )
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*expected 'user'"):
        list(read_chat_jsonl(path))
    path.write_text('{"prompt": 1}\n')
    with pytest.raises(ValueError, match=r":1: a chat record needs"):
        list(read_chat_jsonl(path))
