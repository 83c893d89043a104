"""The Code Llama tokenizer: Llama's SentencePiece BPE plus the infilling pieces.

Code Llama extends Llama 2's 32,000 pieces with 16 more; four of them are the infilling
markers `▁<PRE>` 32007, `▁<SUF>` 32008, `▁<MID>` 32009 and `▁<EOT>` 32010, the rest are
reserved. We add them as CONTROL pieces: SentencePiece never produces a control piece
from text, so a file that happens to contain "<PRE>" can't forge a marker, and each
marker is always exactly one id.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from codellama.io import atomic_directory, atomic_write_bytes
from codellama.tokenizer.base import InfillingTokens, Tokenizer

log = logging.getLogger(__name__)

PREFIX, SUFFIX, MIDDLE, EOT = "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"
INFILL_PIECES = (PREFIX, SUFFIX, MIDDLE, EOT)
N_EXTRA_PIECES = 16
INFILL_OFFSET = 7  # ▁<PRE> sits at base_vocab + 7 (32007 for Llama 2)
TOKENIZER_FILE = "tokenizer.model"


def _extra_piece_names(base_vocab: int) -> list[str]:
    names = [f"<reserved_{base_vocab + i}>" for i in range(N_EXTRA_PIECES)]
    names[INFILL_OFFSET : INFILL_OFFSET + len(INFILL_PIECES)] = INFILL_PIECES
    return names


@dataclass(frozen=True)
class TrainOptions:
    """Llama 2's SentencePiece recipe; only the vocabulary size is usually changed."""

    vocab_size: int = 32000
    character_coverage: float = 0.99995
    max_sentence_length: int = 16384
    input_sentence_size: int = 0  # 0 = every line; lower it for very large corpora
    num_threads: int = os.cpu_count() or 1


class CodeLlamaTokenizer(Tokenizer):
    """SentencePiece processor with Code Llama's infilling ids and helpers."""

    backend = "sentencepiece"
    file_name = TOKENIZER_FILE

    def __init__(self, model_proto: bytes):
        self.proto_bytes = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        # A twin processor without the dummy prefix: Code Llama encodes the suffix and
        # the middle "without an implicit leading space".
        proto = sp_pb2.ModelProto.FromString(model_proto)
        proto.normalizer_spec.add_dummy_prefix = False
        self._sp_no_prefix = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        self.bos_id, self.eos_id, self.unk_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.unk_id()
        self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else None

    def __getstate__(self) -> dict:  # processors do not pickle; the model bytes do (data workers)
        return {"proto": self.proto_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["proto"])

    # -- construction -------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> CodeLlamaTokenizer:
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no SentencePiece model at {path}")
        data = path.read_bytes()
        try:
            return cls(data)
        except Exception as exc:  # sentencepiece raises RuntimeError/OSError with C++ text
            raise ValueError(f"{path} is not a valid SentencePiece model ({exc})") from None

    @classmethod
    def train(cls, texts: Iterable[str], options: TrainOptions = TrainOptions()) -> CodeLlamaTokenizer:
        """Train Llama-style BPE on `texts` (documents), then add Code Llama's 16 pieces.

        The base model gets `vocab_size - 16` pieces, so the result has exactly
        `vocab_size` pieces with the infilling markers at vocab_size - 9 .. - 6
        (32007..32010 when vocab_size is 32016).
        """
        if options.vocab_size <= N_EXTRA_PIECES + 259:
            raise ValueError(f"vocab_size {options.vocab_size} is too small (byte fallback alone needs 259 pieces)")
        buffer = _ProtoBuffer()
        try:
            _train_sentencepiece(texts, options, buffer)
        except RuntimeError as exc:
            raise ValueError(
                f"tokenizer training failed: {str(exc).splitlines()[0]}"
                " (a smaller --vocab-size or a larger corpus helps)"
            ) from None
        return cls(extend_proto(buffer.data))

    @classmethod
    def extend_llama(cls, base_model_path: str | os.PathLike) -> CodeLlamaTokenizer:
        """Llama 2's tokenizer.model (32,000 pieces) -> Code Llama's (32,016)."""
        path = Path(base_model_path)
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer model at {path}")
        try:
            proto = sp_pb2.ModelProto.FromString(path.read_bytes())
        except Exception:
            raise ValueError(f"{path} is not a SentencePiece model") from None
        if any(p.piece == PREFIX for p in proto.pieces):
            log.info("%s already has the infilling pieces; left unchanged", path)
            return cls(proto.SerializeToString())
        return cls(extend_proto(proto.SerializeToString()))

    # -- vocabulary -------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def piece_id(self, piece: str) -> int:
        idx = self.sp.piece_to_id(piece)
        if self.sp.id_to_piece(idx) != piece:
            raise KeyError(f"piece {piece!r} is not in the vocabulary")
        return idx

    def piece(self, token_id: int) -> str:
        return self.sp.id_to_piece(int(token_id))

    @functools.cached_property
    def infilling(self) -> InfillingTokens | None:
        """Code Llama's pieces, found by name (they are part of the model file)."""
        try:
            ids = [self.piece_id(p) for p in INFILL_PIECES]
        except KeyError:
            return None
        return InfillingTokens(*ids, *INFILL_PIECES)

    @functools.cached_property
    def special_ids(self) -> set[int]:
        return {i for i in range(self.vocab_size) if self.sp.is_control(i)}

    # -- encoding -----------------------------------------------------------------
    def encode(self, text: str, *, bos: bool = False, eos: bool = False, special: bool = False) -> list[int]:
        # `special` changes nothing: SentencePiece never makes a control piece from text.
        ids = self.sp.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_batch(self, texts: list[str], *, num_threads: int = -1) -> list[list[int]]:
        return self.sp.encode(texts, num_threads=num_threads)

    def encode_infilling_batch(self, texts: list[str], *, num_threads: int = -1) -> list[list[int]]:
        """encode_infilling for many texts in one SentencePiece call (the data pipeline's fast path)."""
        return self._sp_no_prefix.encode(texts, num_threads=num_threads)

    def encode_infilling(self, text: str) -> list[int]:
        """Encode without SentencePiece's dummy leading space (Code Llama's suffix/middle rule)."""
        return self._sp_no_prefix.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def decode_infilling(self, ids: Iterable[int]) -> str:
        """Decode a middle/suffix that was encoded without the dummy prefix."""
        return self._sp_no_prefix.decode([int(i) for i in ids])

    def render(self, ids: Iterable[int]) -> str:
        """Decode with control pieces made visible (for `data inspect` and debugging)."""
        out, run = [], []
        for i in ids:
            i = int(i)
            if self.sp.is_control(i) or self.sp.is_unknown(i):
                if run:
                    out.append(self.decode(run))
                    run = []
                out.append(self.piece(i).replace("▁", " "))
            else:
                run.append(i)
        if run:
            out.append(self.decode(run))
        return "".join(out)

    # -- files --------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike, *, for_transformers: bool = True) -> Path:
        """Write tokenizer.model (+ the infilling record, + the Hugging Face files `AutoTokenizer` loads)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out_dir / TOKENIZER_FILE, self.proto_bytes)
        if self.infilling is not None:
            self.infilling.write(out_dir)
        if for_transformers:
            _write_hf_files(self.proto_bytes, out_dir)
        return out_dir

    def fingerprint(self) -> str:
        return hashlib.sha256(self.proto_bytes).hexdigest()

    def with_infilling_tokens(self) -> tuple[CodeLlamaTokenizer, str]:
        if self.infilling is not None:
            return self, "already has the infilling pieces"
        return CodeLlamaTokenizer(extend_proto(self.proto_bytes)), f"added Code Llama's {N_EXTRA_PIECES} pieces"


def _write_hf_files(proto_bytes: bytes, out_dir: Path) -> None:
    """transformers converts the SentencePiece model into its tokenizer.json (we do not write that JSON by hand)."""
    from transformers import CodeLlamaTokenizer as HFCodeLlamaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / TOKENIZER_FILE).write_bytes(proto_bytes)
        # fill_token=None: "<FILL_ME>" would otherwise get an id past the model's vocabulary.
        hf = HFCodeLlamaTokenizer.from_pretrained(tmp, fill_token=None, legacy=False)
    hf.save_pretrained(str(out_dir))


def extend_proto(proto_bytes: bytes) -> bytes:
    """Append Code Llama's 16 pieces (4 infilling + 12 reserved) as control pieces."""
    proto = sp_pb2.ModelProto.FromString(proto_bytes)
    base = len(proto.pieces)
    existing = {p.piece for p in proto.pieces}
    for name in _extra_piece_names(base):
        if name in existing:
            raise ValueError(f"base tokenizer already has piece {name!r}")
        piece = proto.pieces.add()
        piece.piece = name
        piece.score = 0.0
        piece.type = sp_pb2.ModelProto.SentencePiece.CONTROL
    proto.trainer_spec.vocab_size = len(proto.pieces)
    return proto.SerializeToString()


def save_tokenizer_dir(tokenizer: Tokenizer, out_dir: str | os.PathLike) -> Path:
    """Write the tokenizer files into a fresh directory, atomically."""
    with atomic_directory(out_dir) as tmp:
        tokenizer.save(tmp)
    return Path(out_dir)


def _train_sentencepiece(texts: Iterable[str], options: TrainOptions, buffer: _ProtoBuffer) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=_lines(texts),
        model_writer=buffer,
        model_type="bpe",
        vocab_size=options.vocab_size - N_EXTRA_PIECES,
        character_coverage=options.character_coverage,
        byte_fallback=True,
        split_digits=True,
        split_by_unicode_script=True,
        split_by_whitespace=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        max_sentence_length=options.max_sentence_length,
        input_sentence_size=options.input_sentence_size,
        shuffle_input_sentence=False,  # deterministic: same corpus, same tokenizer
        num_threads=options.num_threads,
        seed_sentencepiece_size=1_000_000,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )


def _lines(texts: Iterable[str]) -> Iterator[str]:
    # SentencePiece trains on sentences; like Llama we feed source lines, so newlines are
    # never merged into pieces and are encoded through byte fallback (<0x0A>).
    for text in texts:
        for line in text.split("\n"):
            if line.strip():
                yield line


class _ProtoBuffer:
    """`model_writer` target for SentencePieceTrainer: keeps the model in memory."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data
