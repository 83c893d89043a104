"""Llama 2's chat format, as Code Llama - Instruct is trained on it.

One dialog is `<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer} </s>` followed
by `<s>[INST] {user} [/INST] {answer} </s>` for each later turn (the system prompt folds into the
first user message, as in Meta's reference code). For training, every token gets a loss-mask
bit: 1 on answers (and the `</s>` that ends them), 0 on everything the user or system wrote,
so the model learns to answer, not to imitate questions.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codellama.tokenizer import CodeLlamaTokenizer

log = logging.getLogger(__name__)

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
ROLES = ("system", "user", "assistant")


def normalize(record: dict) -> list[dict]:
    """A chat record -> a list of {"role", "content"}.

    Accepts {"messages": [...]} (OpenAI style) or {"instruction", "response"} with optional
    "input" (appended to the instruction) and "system".
    """
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ValueError('"messages" must be a list of {"role", "content"} objects')
    elif "instruction" in record and "response" in record:
        user = str(record["instruction"]).strip()
        if str(record.get("input") or "").strip():
            user += "\n\n" + str(record["input"]).strip()
        messages = ([{"role": "system", "content": record["system"]}] if record.get("system") else []) + [
            {"role": "user", "content": user},
            {"role": "assistant", "content": record["response"]},
        ]
    else:
        raise ValueError('a chat record needs "messages" or "instruction" and "response"')
    for m in messages:
        if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"bad message {m!r}: role must be one of {ROLES} and content a string")
    return messages


def turns(messages: list[dict]) -> tuple[list[tuple[str, str]], str | None]:
    """(user, answer) pairs with the system prompt folded into the first user message; plus a
    trailing unanswered user message (the prompt to complete at inference), if any."""
    messages = list(messages)
    if messages and messages[0]["role"] == "system":
        if len(messages) < 2 or messages[1]["role"] != "user":
            raise ValueError("a system message must be followed by a user message")
        merged = B_SYS + messages[0]["content"].strip() + E_SYS + messages[1]["content"].strip()
        messages = [{"role": "user", "content": merged}] + messages[2:]
    expected = ("user", "assistant")
    for i, m in enumerate(messages):
        if m["role"] != expected[i % 2]:
            raise ValueError(
                f"message {i + 1} has role {m['role']!r}; expected {expected[i % 2]!r} "
                "(dialogs alternate user/assistant, with an optional system message first)"
            )
    pairs = [
        (messages[i]["content"].strip(), messages[i + 1]["content"].strip()) for i in range(0, len(messages) - 1, 2)
    ]
    pending = messages[-1]["content"].strip() if len(messages) % 2 else None
    return pairs, pending


def render(messages: list[dict]) -> str:
    """The dialog as text (for reading; training uses `encode_dialog`, which adds BOS/EOS as ids)."""
    pairs, pending = turns(messages)
    text = "".join(f"<s>{B_INST} {q} {E_INST} {a} </s>" for q, a in pairs)
    return text + (f"<s>{B_INST} {pending} {E_INST}" if pending is not None else "")


def encode_dialog(tokenizer: CodeLlamaTokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Tokens of a finished dialog and its loss mask (1 exactly on answer tokens and their EOS).

    Prompt and answer are encoded separately: SentencePiece never merges across the space
    between `[/INST]` and the answer, so this equals encoding the whole turn at once (Meta's
    way) while telling us where the answer starts.
    """
    pairs, pending = turns(messages)
    if pending is not None or not pairs:
        raise ValueError("a training dialog must end with an assistant message")
    tokens: list[int] = []
    mask: list[int] = []
    for question, answer in pairs:
        prompt = tokenizer.encode(f"{B_INST} {question} {E_INST}", bos=True)
        reply = tokenizer.encode(f"{answer} ", eos=True)
        tokens += prompt + reply
        mask += [0] * len(prompt) + [1] * len(reply)
    return tokens, mask


def prompt_tokens(tokenizer: CodeLlamaTokenizer, messages: list[dict]) -> list[int]:
    """Tokens to feed the model to get the next answer (dialog ending with a user message)."""
    pairs, pending = turns(messages)
    if pending is None:
        raise ValueError("the dialog must end with a user message to prompt for an answer")
    tokens: list[int] = []
    for question, answer in pairs:
        tokens += tokenizer.encode(f"{B_INST} {question} {E_INST}", bos=True) + tokenizer.encode(f"{answer} ", eos=True)
    return tokens + tokenizer.encode(f"{B_INST} {pending} {E_INST}", bos=True)


def read_chat_jsonl(path: str | os.PathLike) -> Iterator[list[dict]]:
    """Training dialogs of a JSONL file; a bad line is reported with its number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"chat data not found: {path}")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                messages = normalize(json.loads(line))
                if turns(messages)[1] is not None:
                    raise ValueError("a training dialog must end with an assistant message")
                yield messages
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: {exc}") from None


@dataclass(frozen=True)
class PackStats:
    dialogs: int
    sequences: int
    truncated: int
    dropped: int
    answer_tokens: int


def pack_dialogs(
    dialogs: Iterable[list[dict]],
    tokenizer: CodeLlamaTokenizer,
    out_dir: str | os.PathLike,
    seq_len: int,
    *,
    meta: dict | None = None,
) -> PackStats:
    """Pack encoded dialogs into loss-masked shards; a dialog never straddles two sequences.

    A dialog longer than `seq_len` is cut (dropped if no answer token is left); the unused
    tail of a sequence is EOS padding with mask 0. The directory is complete when index.json exists.
    """
    from codellama.data.shards import ShardWriter

    writer = ShardWriter(out_dir, seq_len, tokenizer.vocab_size, with_loss_mask=True)
    pad = tokenizer.eos_id
    row_tokens: list[int] = []
    row_mask: list[int] = []
    n_dialogs = truncated = dropped = answer_tokens = sequences = 0

    def flush() -> None:
        nonlocal row_tokens, row_mask, sequences
        if row_tokens:
            fill = seq_len - len(row_tokens)
            writer.add(np.array(row_tokens + [pad] * fill), np.array(row_mask + [0] * fill))
            sequences += 1
            row_tokens, row_mask = [], []

    for messages in dialogs:
        n_dialogs += 1
        tokens, mask = encode_dialog(tokenizer, messages)
        if len(tokens) > seq_len:
            tokens, mask = tokens[:seq_len], mask[:seq_len]
            truncated += 1
            if not any(mask[1:]):
                dropped += 1
                continue
        if len(row_tokens) + len(tokens) > seq_len:
            flush()
        row_tokens += tokens
        row_mask += mask
        answer_tokens += sum(mask)
    flush()
    if sequences == 0:
        raise ValueError("no dialog left to train on (all empty or too long)")
    writer.finish(
        meta={
            "kind": "chat",
            "dialogs": n_dialogs,
            "truncated": truncated,
            "dropped": dropped,
            "answer_tokens": answer_tokens,
            "template": "llama2-chat",
            **(meta or {}),
        }
    )
    if truncated:
        log.warning(
            "%d of %d dialogs were longer than %d tokens and were cut (%d dropped)",
            truncated,
            n_dialogs,
            seq_len,
            dropped,
        )
    return PackStats(n_dialogs, sequences, truncated, dropped, answer_tokens)
