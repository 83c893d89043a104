"""The one tokenizer interface: what data, training, generation, serving and evals call.

A base ships either a SentencePiece `tokenizer.model` (Llama 2, Code Llama) or a Hugging Face
`tokenizer.json` (Llama 3, SmolLM2, most newer bases); both backends implement `Tokenizer`, so
no caller asks which one it has. The infilling tokens are recorded in `infilling_tokens.json`
beside the tokenizer files, so every later command finds them without guessing from names.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from codellama.io import atomic_write_json, read_json_file
from codellama.tokenizer.layout import infill_layout

INFILLING_TOKENS_FILE = "infilling_tokens.json"
ROLES = ("prefix", "suffix", "middle", "eot")
WHITESPACE_KEY = "whitespace_to_middle"
SUFFIX_WHITESPACE_KEY = "suffix_whitespace_to_middle"
NO_INFILLING_HINT = "run `codellama tokenizer extend --base DIR --out NEW_DIR` to add them"


@dataclass(frozen=True)
class InfillingTokens:
    """Which ids are <PRE>, <SUF>, <MID> and <EOT>, and their text (as `infilling_tokens.json` holds them)."""

    prefix_id: int
    suffix_id: int
    middle_id: int
    eot_id: int
    prefix: str
    suffix: str
    middle: str
    eot: str
    # Whether an infilling prompt leaves the prefix's trailing whitespace (a newline, an indent) to the
    # middle. A byte-level BPE writes a newline and the next line's indentation as one token, so a prefix
    # cut at a line start ends on a lone newline no text ever did, and the middle's first token (the
    # indent alone) is one pretraining never predicted either: on SmolLM2 that first token cost 6.6 nats
    # under SPM against 1.0 when the whitespace went with the middle. Set when the toolkit adds infilling
    # tokens to such a tokenizer (its FIM data is then made the same way); off for Code Llama's own format.
    whitespace_to_middle: bool = False
    # The same at the other end: whether the middle also ends with the suffix's leading whitespace that such a
    # BPE writes together with a newline before it (`Tokenizer.infilling_tail`). Otherwise a middle of whole
    # lines ends on a lone newline, a token the model hardly writes there (it writes the newline and the next
    # indent as one), so it seldom reaches the point where training put <EOT>: on SmolLM2 after 122,880 FIM
    # tokens the lone newline had 2-10% of the probability after the hole's line.
    suffix_whitespace_to_middle: bool = False

    @property
    def ids(self) -> tuple[int, int, int, int]:
        return (self.prefix_id, self.suffix_id, self.middle_id, self.eot_id)

    @property
    def tokens(self) -> tuple[str, str, str, str]:
        return (self.prefix, self.suffix, self.middle, self.eot)

    def to_json(self) -> dict:
        raw = {
            **{f"{role}_id": i for role, i in zip(ROLES, self.ids)},
            "tokens": dict(zip(ROLES, self.tokens)),
        }
        for key, value in (
            (WHITESPACE_KEY, self.whitespace_to_middle),
            (SUFFIX_WHITESPACE_KEY, self.suffix_whitespace_to_middle),
        ):
            if value:  # only when set: files (and fingerprints) made before it stay the same
                raw[key] = True
        return raw

    @classmethod
    def from_json(cls, raw, where: str) -> InfillingTokens:
        tokens = raw.get("tokens") if isinstance(raw, dict) else None
        ids = [raw.get(f"{role}_id") for role in ROLES] if isinstance(raw, dict) else []
        if (
            not isinstance(tokens, dict)
            or any(type(i) is not int or i < 0 for i in ids)
            or any(not isinstance(tokens.get(role), str) for role in ROLES)
        ):
            raise ValueError(
                f"{where}: expected {{prefix_id, suffix_id, middle_id, eot_id: int, "
                f"tokens: {{prefix, suffix, middle, eot: str}}}}"
            )
        if len(set(ids)) != len(ids):
            raise ValueError(f"{where}: the infilling ids {ids} are not four different ids")
        flags = {key: raw.get(key, False) for key in (WHITESPACE_KEY, SUFFIX_WHITESPACE_KEY)}
        for key, value in flags.items():
            if type(value) is not bool:
                raise ValueError(f"{where}: {key} must be true or false, got {value!r}")
        return cls(*ids, *(tokens[role] for role in ROLES), **flags)

    @classmethod
    def read(cls, directory: str | os.PathLike) -> InfillingTokens | None:
        path = Path(directory) / INFILLING_TOKENS_FILE
        if not path.is_file():
            return None
        return cls.from_json(read_json_file(path), str(path))

    def write(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / INFILLING_TOKENS_FILE
        atomic_write_json(path, self.to_json())
        return path


class Tokenizer(ABC):
    """Text <-> ids for one base, with Code Llama's infilling layout and the base's chat format.

    `encode` never produces a special token from text (a source file that contains "<PRE>" or
    "<|endoftext|>" is encoded as those characters), unless `special=True` says the text is a
    rendered chat template whose special-token strings are meant.
    """

    backend: str  # "sentencepiece" | "tokenizers"
    file_name: str  # the file that holds the vocabulary: tokenizer.model | tokenizer.json
    bos_id: int | None  # None: the base does not start sequences with a BOS token
    eos_id: int
    pad_id: int | None

    # -- vocabulary --------------------------------------------------------------------------------
    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids (the largest id + 1): the model needs at least this many embedding rows."""

    @property
    @abstractmethod
    def special_ids(self) -> set[int]:
        """Ids that text never produces (BOS, EOS, infilling markers, chat-template tokens, ...)."""

    @property
    @abstractmethod
    def infilling(self) -> InfillingTokens | None:
        """The infilling tokens, or None when this tokenizer has none yet."""

    @abstractmethod
    def piece(self, token_id: int) -> str:
        """The vocabulary entry of one id, for display."""

    def _infill(self) -> InfillingTokens:
        infill = self.infilling
        if infill is None:
            raise KeyError(f"this tokenizer has no infilling tokens: {NO_INFILLING_HINT}")
        return infill

    @property
    def end_ids(self) -> set[int]:
        """Ids that end a generation: EOS, the end-of-infill token, and the base's other end-of-text tokens."""
        infill = self.infilling
        return {self.eos_id} | ({infill.eot_id} if infill is not None else set())

    @property
    def prefix_id(self) -> int:
        return self._infill().prefix_id

    @property
    def suffix_id(self) -> int:
        return self._infill().suffix_id

    @property
    def middle_id(self) -> int:
        return self._infill().middle_id

    @property
    def eot_id(self) -> int:
        return self._infill().eot_id

    # -- encoding ----------------------------------------------------------------------------------
    @abstractmethod
    def encode(self, text: str, *, bos: bool = False, eos: bool = False, special: bool = False) -> list[int]:
        """Ids of `text` (+ BOS / EOS ids when asked and the base has them)."""

    @abstractmethod
    def encode_batch(self, texts: list[str], *, num_threads: int = -1) -> list[list[int]]:
        """`encode` of many texts in one call (the data pipeline's fast path)."""

    @abstractmethod
    def encode_infilling(self, text: str) -> list[int]:
        """Ids of a suffix or middle: without a dummy leading space (Code Llama's rule)."""

    @abstractmethod
    def encode_infilling_batch(self, texts: list[str], *, num_threads: int = -1) -> list[list[int]]:
        """`encode_infilling` of many texts in one call."""

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special tokens decode to nothing."""

    @abstractmethod
    def decode_infilling(self, ids: Iterable[int]) -> str:
        """Text of ids made by `encode_infilling` (or generated after a prompt): a leading space is kept."""

    def infilling_prompt(self, prefix: str, suffix: str, *, suffix_first: bool = False, bos: bool = True) -> list[int]:
        """Code Llama's infilling prompt (PSM, or SPM with `suffix_first`), ready for the model to write the middle.

        Without the prefix's trailing whitespace where the infilling tokens say so: the model then writes
        it back first (`infilling_echo`), and generation leaves that echo out of the middle. Likewise the
        suffix's leading whitespace the middle ends with (`infilling_tail`)."""
        head = [self.bos_id] if bos and self.bos_id is not None else []
        mode = "spm" if suffix_first else "psm"
        kept = prefix[: len(prefix) - len(self.infilling_echo(prefix))]
        after = suffix[len(self.infilling_tail(suffix)) :]
        return head + infill_layout(mode, self.encode(kept), self.encode_infilling(after), [], self._infill().ids)

    def infilling_echo(self, prefix: str) -> str:
        """The end of `prefix` an infilling prompt leaves to the middle: its trailing whitespace when the
        infilling tokens move it there (`InfillingTokens.whitespace_to_middle`), else nothing."""
        infill = self.infilling
        if infill is None or not infill.whitespace_to_middle:
            return ""
        return prefix[len(prefix.rstrip()) :]

    def infilling_tail(self, suffix: str) -> str:
        """The start of `suffix` an infilling prompt leaves to the middle (`InfillingTokens.suffix_whitespace_to_middle`):
        the leading whitespace this tokenizer writes as one token with a newline before it (without the space a
        BPE keeps with the suffix's first word, " return"), so that a middle of whole lines ends on the token
        the model writes there ("\\n" + indent) and then <EOT>. Else nothing."""
        infill = self.infilling
        lead = len(suffix) - len(suffix.lstrip())
        if infill is None or not infill.suffix_whitespace_to_middle or not lead:
            return ""
        first = self.decode_infilling(self.encode_infilling("\n" + suffix[: lead + 1])[:1])
        return suffix[: len(first) - 1] if first.startswith("\n") and not first.strip() else ""

    def render(self, ids: Iterable[int]) -> str:
        """Decode with special tokens made visible (for `data inspect` and debugging)."""
        special = self.special_ids
        out, run = [], []
        for i in ids:
            i = int(i)
            if i in special:
                if run:
                    out.append(self.decode(run))
                    run = []
                out.append(self.piece(i))
            else:
                run.append(i)
        if run:
            out.append(self.decode(run))
        return "".join(out)

    # -- chat ----------------------------------------------------------------------------------------
    @property
    def chat_template(self) -> str | None:
        """The base's Jinja chat template, or None (then Llama 2's [INST] format is used)."""
        return None

    def render_chat(self, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
        """The dialog as text through the chat template (transformers' `apply_chat_template`)."""
        raise ValueError("this tokenizer has no chat template")

    def encode_with_offsets(self, text: str, *, special: bool = True) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of `text` and each id's character span (to map a chat template's text spans to tokens)."""
        raise NotImplementedError(f"{type(self).__name__} does not report offsets")

    # -- files -------------------------------------------------------------------------------------
    @abstractmethod
    def save(self, out_dir: str | os.PathLike, *, for_transformers: bool = True) -> Path:
        """Write the tokenizer files (and `infilling_tokens.json`) into `out_dir`.

        `for_transformers=False` writes only what this toolkit reads back (a shard directory needs
        no `AutoTokenizer` files)."""

    @abstractmethod
    def with_infilling_tokens(self) -> tuple[Tokenizer, str]:
        """This tokenizer with infilling tokens (itself when it has them), and a few words on what was done."""

    @abstractmethod
    def fingerprint(self) -> str:
        """sha256 that changes exactly when the ids text maps to change (data records it)."""
