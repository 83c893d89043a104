"""Hugging Face fast tokenizers (`tokenizer.json`): byte-level BPE bases such as Llama 3 and SmolLM2.

Encoding and decoding are the `tokenizers` library's own; this module only decides what the
toolkit needs around it:

- BOS is what the tokenizer's post-processor puts first (Llama 3: `<|begin_of_text|>`), or the
  config's BOS when `add_bos_token` says so; many byte-level bases (SmolLM2) have none.
- Special tokens are never made from text: with `encode_special_tokens` on, a file that contains
  "<|endoftext|>" is encoded as those characters. Rendered chat templates are the exception
  (`special=True`), since their special-token strings are meant.
- Code Llama's "no dummy prefix" rule for suffix and middle: for a tokenizer whose normalizer or
  pre-tokenizer adds a leading "▁" or space (SentencePiece-converted Llama tokenizers) a twin
  without it encodes infilling text; for byte-level BPE the twin is the tokenizer itself.
- The infilling ids come from `infilling_tokens.json` (written by `codellama tokenizer extend`).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken
from tokenizers import Tokenizer as RawTokenizer

from codellama.io import atomic_write_text
from codellama.tokenizer.base import INFILLING_TOKENS_FILE, InfillingTokens, Tokenizer

log = logging.getLogger(__name__)

HF_TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
# Files of a Hugging Face tokenizer directory that travel with it unchanged.
EXTRA_FILES = ("special_tokens_map.json", "chat_template.jinja")
EOS_FALLBACKS = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")
# End-of-text and end-of-turn tokens: a chat base whose EOS is <|im_end|> still ends documents with
# <|endoftext|>, and Llama 3's turns end with <|eot_id|>; generation stops at any of them.
END_TOKENS = (*EOS_FALLBACKS, "<|im_end|>", "<|eot_id|>", "<|end|>")

# StarCoder-style FIM tokens a base may already have (reused, with its end-of-text as <EOT>) ...
STARCODER_FIM = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")
# ... Code Llama's pieces as a converted tokenizer.json spells them ...
CODELLAMA_PIECES = ("▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>")
# ... or the four tokens `codellama tokenizer extend` adds.
NEW_TOKENS = ("<PRE>", "<SUF>", "<MID>", "<EOT>")


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def without_dummy_prefix(spec: dict) -> dict:
    """A copy of a tokenizer.json spec (or of its normalizer / pre_tokenizer / decoder entries) that adds no
    leading "▁" or space to the text: Code Llama's rule for suffix and middle."""
    spec = copy.deepcopy(spec)

    def strip_normalizer(n):
        if not isinstance(n, dict):
            return n
        if n.get("type") == "Prepend":
            return None
        if n.get("type") == "Sequence":
            n["normalizers"] = [m for m in (strip_normalizer(m) for m in n.get("normalizers", [])) if m is not None]
        return n

    def no_prefix(p, key):  # pre-tokenizers and decoders
        if not isinstance(p, dict):
            return p
        kind = p.get("type")
        if kind == "Sequence":
            p[key] = [q for q in (no_prefix(q, key) for q in p.get(key, [])) if q is not None]
        elif kind == "Metaspace":
            p["prepend_scheme"] = "never"
            p.pop("add_prefix_space", None)
        elif kind == "ByteLevel" and key == "pretokenizers":  # the ByteLevel decoder adds nothing
            p["add_prefix_space"] = False
        elif kind == "Strip" and key == "decoders" and p.get("start", 0) > 0:
            return None  # the decoder side of the dummy prefix: it removes the first space
        return p

    spec["normalizer"] = strip_normalizer(spec.get("normalizer"))
    spec["pre_tokenizer"] = no_prefix(spec.get("pre_tokenizer"), "pretokenizers")
    spec["decoder"] = no_prefix(spec.get("decoder"), "decoders")
    return spec


class HFTokenizer(Tokenizer):
    """A `tokenizer.json` tokenizer behind the toolkit's interface."""

    backend = "tokenizers"
    file_name = HF_TOKENIZER_FILE

    def __init__(
        self,
        spec: str,
        *,
        config: dict | None = None,
        infilling: InfillingTokens | None = None,
        files: dict[str, str] | None = None,
        source: str = "tokenizer.json",
    ):
        """`spec`: the tokenizer.json text; `config`: tokenizer_config.json; `files`: other files kept verbatim."""
        try:
            raw = RawTokenizer.from_str(spec)
        except Exception as exc:  # tokenizers raises a bare Exception with serde's message
            raise ValueError(f"{source} is not a valid tokenizer.json ({str(exc).splitlines()[0]})") from None
        self.source = source
        self.spec = raw.to_str()  # canonical: the same tokenizer always serialises to the same text
        self.config = dict(config or {})
        self.files = dict(files or {})
        self._raw = raw
        self._raw.encode_special_tokens = True  # text never makes a special token
        parts = json.loads(self.spec)
        text_rules = {key: parts.get(key) for key in ("normalizer", "pre_tokenizer", "decoder")}
        twin_rules = without_dummy_prefix(text_rules)
        self._twin_spec = None if twin_rules == text_rules else json.dumps({**parts, **twin_rules})
        self.vocab = raw.get_vocab(with_added_tokens=True)
        self._size = max(self.vocab.values(), default=-1) + 1
        self.bos_id = self._find_bos()
        self.eos_id = self._find_eos()
        pad = _token_text(self.config.get("pad_token"))
        self.pad_id = self.vocab.get(pad) if pad else None
        self._infilling = infilling
        if infilling is not None:
            self._check_infilling(infilling)

    @functools.cached_property
    def _no_prefix(self) -> RawTokenizer:
        """The tokenizer for suffix and middle text: the same one unless it adds a dummy prefix."""
        if self._twin_spec is None:
            return self._raw
        twin = RawTokenizer.from_str(self._twin_spec)
        twin.encode_special_tokens = True
        return twin

    @functools.cached_property
    def _templated(self) -> RawTokenizer:
        """A twin that parses special-token strings, for rendered chat templates only."""
        return RawTokenizer.from_str(self.spec)

    def __getstate__(self) -> dict:  # worker processes rebuild the Rust objects from the text
        return {
            "spec": self.spec,
            "config": self.config,
            "infilling": self._infilling.to_json() if self._infilling else None,
            "files": self.files,
            "source": self.source,
        }

    def __setstate__(self, state: dict) -> None:
        infill = state["infilling"]
        self.__init__(
            state["spec"],
            config=state["config"],
            infilling=InfillingTokens.from_json(infill, state["source"]) if infill else None,
            files=state["files"],
            source=state["source"],
        )

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> HFTokenizer:
        """A tokenizer.json file, or a directory holding one (with its config and infilling record)."""
        path = Path(path)
        directory, file = (path, path / HF_TOKENIZER_FILE) if path.is_dir() else (path.parent, path)
        if not file.is_file():
            raise FileNotFoundError(f"no {HF_TOKENIZER_FILE} at {file}")
        try:
            spec = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{file} is not a UTF-8 tokenizer.json") from None
        config: dict = {}
        if (directory / CONFIG_FILE).is_file():
            try:
                config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{directory / CONFIG_FILE} is not valid JSON ({exc})") from None
            if not isinstance(config, dict):
                raise ValueError(f"{directory / CONFIG_FILE} is not a JSON object")
        files = {
            name: (directory / name).read_text(encoding="utf-8") for name in EXTRA_FILES if (directory / name).is_file()
        }
        infilling = InfillingTokens.read(directory)
        return cls(spec, config=config, infilling=infilling, files=files, source=str(file))

    def _find_bos(self) -> int | None:
        plain = self._raw.encode("a", add_special_tokens=False).ids
        full = self._raw.encode("a", add_special_tokens=True).ids
        if len(full) > len(plain) and full[1 : 1 + len(plain)] == plain:
            return full[0]  # the post-processor starts every sequence with it (Llama 3, TinyLlama)
        bos = _token_text(self.config.get("bos_token"))
        if self.config.get("add_bos_token") and bos in self.vocab:
            return self.vocab[bos]
        return None

    def _find_eos(self) -> int:
        for name in (_token_text(self.config.get("eos_token")), *EOS_FALLBACKS):
            if name and name in self.vocab:
                return self.vocab[name]
        raise ValueError(
            f"{self.source} has no end-of-sequence token (set eos_token in {CONFIG_FILE}, "
            f"or have one of {', '.join(EOS_FALLBACKS)} in the vocabulary)"
        )

    def _check_infilling(self, infill: InfillingTokens) -> None:
        where = str(Path(self.source).parent / INFILLING_TOKENS_FILE)
        for role, i, text in zip(("prefix", "suffix", "middle", "eot"), infill.ids, infill.tokens):
            actual = self._raw.id_to_token(i) if i < self._size else None
            if actual != text:
                raise ValueError(f"{where}: {role}_id {i} is {actual!r} in {self.source}, not {text!r}")

    # -- vocabulary --------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._size

    @property
    def infilling(self) -> InfillingTokens | None:
        return self._infilling

    def piece(self, token_id: int) -> str:
        return self._raw.id_to_token(int(token_id)) or f"<id {int(token_id)}>"

    @functools.cached_property
    def special_ids(self) -> set[int]:
        ids = {i for i, token in self._raw.get_added_tokens_decoder().items() if token.special}
        ids.add(self.eos_id)
        if self.bos_id is not None:
            ids.add(self.bos_id)
        if self._infilling is not None:
            ids.update(self._infilling.ids)
        return ids

    @functools.cached_property
    def end_ids(self) -> set[int]:
        special = self.special_ids
        return super().end_ids | {self.vocab[t] for t in END_TOKENS if self.vocab.get(t) in special}

    # -- encoding ----------------------------------------------------------------------------------
    def encode(self, text: str, *, bos: bool = False, eos: bool = False, special: bool = False) -> list[int]:
        ids = (self._templated if special else self._raw).encode(text, add_special_tokens=False).ids
        if bos and self.bos_id is not None and not (special and ids[:1] == [self.bos_id]):
            ids = [self.bos_id] + ids  # a template that writes BOS itself does not get a second one
        return ids + [self.eos_id] if eos else ids

    def _batch(self, tok: RawTokenizer, texts: list[str], num_threads: int) -> list[list[int]]:
        if num_threads == 1 or len(texts) < 2:
            # No Rayon thread pool: a data worker process (forked) must not start one.
            return [tok.encode(t, add_special_tokens=False).ids for t in texts]
        return [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]

    def encode_batch(self, texts: list[str], *, num_threads: int = -1) -> list[list[int]]:
        return self._batch(self._raw, texts, num_threads)

    def encode_infilling(self, text: str) -> list[int]:
        return self._no_prefix.encode(text, add_special_tokens=False).ids

    def encode_infilling_batch(self, texts: list[str], *, num_threads: int = -1) -> list[list[int]]:
        return self._batch(self._no_prefix, texts, num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        return self._raw.decode([int(i) for i in ids], skip_special_tokens=True)

    def decode_infilling(self, ids: Iterable[int]) -> str:
        return self._no_prefix.decode([int(i) for i in ids], skip_special_tokens=True)

    def encode_with_offsets(self, text: str, *, special: bool = True) -> tuple[list[int], list[tuple[int, int]]]:
        enc = (self._templated if special else self._raw).encode(text, add_special_tokens=False)
        return enc.ids, [tuple(o) for o in enc.offsets]

    # -- chat ----------------------------------------------------------------------------------------
    @property
    def chat_template(self) -> str | None:
        template = self.config.get("chat_template")
        if isinstance(template, list):  # several named templates: the default one
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        return template if isinstance(template, str) and template else self.files.get("chat_template.jinja")

    @functools.cached_property
    def _transformers(self):
        """transformers' tokenizer over the same vocabulary: only for `apply_chat_template`."""
        from transformers import PreTrainedTokenizerFast

        specials = {
            name: _token_text(self.config.get(name)) for name in ("bos_token", "eos_token", "unk_token", "pad_token")
        }
        return PreTrainedTokenizerFast(
            tokenizer_object=RawTokenizer.from_str(self.spec),
            chat_template=self.chat_template,
            **{k: v for k, v in specials.items() if v},
        )

    def render_chat(self, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
        if self.chat_template is None:
            raise ValueError(f"{self.source} has no chat template")
        return self._transformers.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    # -- files -------------------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike, *, for_transformers: bool = True) -> Path:
        """tokenizer.json, tokenizer_config.json (+ the base's other tokenizer files) and infilling_tokens.json."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / HF_TOKENIZER_FILE, json.dumps(json.loads(self.spec), indent=2, ensure_ascii=False))
        config = self.config or self._default_config()
        atomic_write_text(out_dir / CONFIG_FILE, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        for name, text in self.files.items():
            atomic_write_text(out_dir / name, text)
        if self._infilling is not None:
            self._infilling.write(out_dir)
        return out_dir

    def _default_config(self) -> dict:
        """What `AutoTokenizer` needs for a bare tokenizer.json: the class and the special tokens."""
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": self.piece(self.eos_id)}
        if self.bos_id is not None:
            config["bos_token"] = self.piece(self.bos_id)
        return config

    def fingerprint(self) -> str:
        """Over the canonical tokenizer.json, the infilling ids and BOS/EOS: what decides the ids of a text."""
        identity = {
            "tokenizer": self.spec,
            "infilling": self._infilling.to_json() if self._infilling else None,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()

    # -- extension -------------------------------------------------------------------------------
    def merges_newline_with_indent(self) -> bool:
        """Whether a newline and the next line's indentation are one token (byte-level BPEs: GPT-2, SmolLM2)."""
        probe = "    x = 1"
        return self.encode("\n" + probe) != self.encode("\n") + self.encode_infilling(probe)

    def with_infilling_tokens(self) -> tuple[HFTokenizer, str]:
        """This tokenizer with infilling tokens (reused when it has FIM tokens, else added); and what was done."""
        if self._infilling is not None:
            return self, "already has infilling tokens"
        vocab = self.vocab
        if all(t in vocab for t in STARCODER_FIM):
            eot = "<|endoftext|>" if "<|endoftext|>" in vocab else self.piece(self.eos_id)
            tokens, how = (*STARCODER_FIM, eot), "reused the base's FIM tokens"
        elif all(t in vocab for t in CODELLAMA_PIECES):
            tokens, how = CODELLAMA_PIECES, "reused Code Llama's infilling pieces"
        else:
            clash = [t for t in NEW_TOKENS if t in vocab]
            if clash:
                raise ValueError(f"{self.source} already has {', '.join(clash)} but not all four infilling tokens")
            tokens, how = NEW_TOKENS, "added four special tokens"
        raw = RawTokenizer.from_str(self.spec)
        # Existing entries become special added tokens with their own ids; new ones get the next ids.
        raw.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])
        decoder = raw.get_added_tokens_decoder()
        for t in tokens:
            if not decoder[raw.token_to_id(t)].special:
                raise ValueError(f"{self.source}: {t!r} could not be made a special token")
        # New tokens get the toolkit's own convention; a base's own FIM tokens keep the format it was trained in.
        heal = tokens == NEW_TOKENS and self.merges_newline_with_indent()
        infill = InfillingTokens(
            *(raw.token_to_id(t) for t in tokens), *tokens, whitespace_to_middle=heal, suffix_whitespace_to_middle=heal
        )
        extended = HFTokenizer(raw.to_str(), config=self.config, infilling=infill, files=self.files, source=self.source)
        return extended, how
