"""Chat formats: Llama 2's [INST] format (as Code Llama - Instruct is trained on it), or the base's own template.

A SentencePiece Llama 2 / Code Llama tokenizer, or any tokenizer without a chat template, uses
Llama 2's format. A base whose tokenizer ships a chat template (SmolLM2's ChatML, Llama 3's, ...)
keeps its own: the dialog is rendered with transformers' `apply_chat_template`, and the loss mask
is found by rendering prefixes of the dialog (everything the template writes for an assistant
message, its end-of-turn token included, is the answer) and mapping those character spans to
tokens through the tokenizer's offsets.

Llama 2's format: one dialog is `<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer} </s>` followed
by `<s>[INST] {user} [/INST] {answer} </s>` for each later turn (the system prompt folds into the
first user message, as in Meta's reference code). For training, every token gets a loss-mask
bit: 1 on answers (and the `</s>` that ends them), 0 on everything the user or system wrote,
so the model learns to answer, not to imitate questions. Packing dialogs into training shards
is the data layer's job (`codellama/data/chat.py`).
"""

from __future__ import annotations

from codellama.tokenizer import Tokenizer

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
ROLES = ("system", "user", "assistant")
LLAMA2 = "llama2-chat"
TEMPLATE = "chat-template"


def chat_format(tokenizer: Tokenizer | None) -> str:
    """Which format a model with this tokenizer is prompted and trained in."""
    return TEMPLATE if tokenizer is not None and tokenizer.chat_template else LLAMA2


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


def encode_dialog(tokenizer: Tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Tokens of a finished dialog and its loss mask (1 exactly on answer tokens and their EOS).

    Llama 2's format: prompt and answer are encoded separately: SentencePiece never merges
    across the space between `[/INST]` and the answer, so this equals encoding the whole turn at
    once (Meta's way) while telling us where the answer starts.
    """
    pairs, pending = turns(messages)
    if pending is not None or not pairs:
        raise ValueError("a training dialog must end with an assistant message")
    if chat_format(tokenizer) == TEMPLATE:
        return _encode_with_template(tokenizer, messages)
    tokens: list[int] = []
    mask: list[int] = []
    for question, answer in pairs:
        prompt = tokenizer.encode(f"{B_INST} {question} {E_INST}", bos=True)
        reply = tokenizer.encode(f"{answer} ", eos=True)
        tokens += prompt + reply
        mask += [0] * len(prompt) + [1] * len(reply)
    return tokens, mask


def _encode_with_template(tokenizer: Tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """The base's template: mask 1 on the tokens that start inside what the template wrote for an assistant."""
    full = tokenizer.render_chat(messages)
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.render_chat(messages[:k], add_generation_prompt=True)
        through = tokenizer.render_chat(messages[: k + 1])
        if not (through.startswith(before) and full.startswith(through)):
            raise ValueError(
                "the chat template does not render a dialog as its turns one after another, "
                "so the assistant's tokens cannot be told apart"
            )
        spans.append((len(before), len(through)))
    ids, offsets = tokenizer.encode_with_offsets(full, special=True)
    mask = [int(any(a <= start < b for a, b in spans)) for start, _ in offsets]
    if tokenizer.bos_id is not None and ids[:1] != [tokenizer.bos_id]:
        ids, mask = [tokenizer.bos_id] + ids, [0] + mask
    return ids, mask


def prompt_text(tokenizer: Tokenizer | None, messages: list[dict]) -> str:
    """The text a model continues to answer `messages` (ending with a user message), without BOS.

    With a chat template this holds the template's special-token strings: encode it with
    `special=True` (local generators do; OpenAI-compatible servers parse them too)."""
    pairs, pending = turns(messages)
    if pending is None:
        raise ValueError("the dialog must end with a user message to prompt for an answer")
    if chat_format(tokenizer) == TEMPLATE:
        return tokenizer.render_chat(messages, add_generation_prompt=True)
    if pairs:
        raise ValueError("a multi-turn [INST] prompt has BOS/EOS ids between turns: use prompt_tokens")
    return f"{B_INST} {pending} {E_INST}"


def prompt_tokens(tokenizer: Tokenizer, messages: list[dict]) -> list[int]:
    """Tokens to feed the model to get the next answer (dialog ending with a user message)."""
    pairs, pending = turns(messages)
    if pending is None:
        raise ValueError("the dialog must end with a user message to prompt for an answer")
    if chat_format(tokenizer) == TEMPLATE:
        return tokenizer.encode(prompt_text(tokenizer, messages), bos=True, special=True)
    tokens: list[int] = []
    for question, answer in pairs:
        tokens += tokenizer.encode(f"{B_INST} {question} {E_INST}", bos=True) + tokenizer.encode(f"{answer} ", eos=True)
    return tokens + tokenizer.encode(f"{B_INST} {pending} {E_INST}", bos=True)
