"""Hugging Face Llama checkpoint -> one GGUF file for llama.cpp, Ollama and the editors' servers.

Editor plugins (llama.vim, llama.vscode) talk to llama.cpp's `llama-server`, whose `/infill`
answers 501 unless the GGUF marks the infilling token ids; llama.cpp's own converter writes them
only for Code Llama's exact 32,016-piece vocabulary. We write them for every checkpoint that
records its infilling tokens (`infilling_tokens.json`, or Code Llama's SentencePiece pieces).

The file is written with the `gguf` package that llama.cpp publishes (its writer, tensor-name
map and quantizers), streamed tensor by tensor so a 70B model needs no more memory than its
largest tensor. Two layout facts matter for correct logits:
- llama.cpp rotates adjacent channel pairs (Meta's layout) while transformers rotates the two
  halves of each head, so q/k rows are permuted here (and permuted back on import);
- a tied model has no `output.weight`: llama.cpp then reads the embedding matrix.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors import safe_open
from tqdm import tqdm

from codellama.io import read_json_file

log = logging.getLogger(__name__)

ARCH = gguf.MODEL_ARCH.LLAMA
ARCH_NAME = gguf.MODEL_ARCH_NAMES[ARCH]  # "llama"
INFILL_RECORD = "infilling_tokens.json"
INFILL_ROLES = ("prefix", "suffix", "middle", "eot")
SPM_INFILL_PIECES = {"prefix": "▁<PRE>", "suffix": "▁<SUF>", "middle": "▁<MID>", "eot": "▁<EOT>"}
Q = gguf.GGMLQuantizationType

# --type -> (type of 2-D weights, llama.cpp's file type). Norms and other 1-D tensors stay F32.
OUT_TYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}

# Byte-level BPE pre-tokenizers llama.cpp knows, by the regex that splits text before the merges.
# `tokenizer.ggml.pre` names one; llama.cpp refuses a BPE vocabulary whose name it does not know.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_PRE_NAMES = {LLAMA3_SPLIT: "llama-bpe"}


# -- tensors ----------------------------------------------------------------------------------------
def permute_for_gguf(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """transformers' half-split rotary channel order -> llama.cpp's interleaved pairs (q/k rows)."""
    rows, cols = weight.shape
    return weight.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def tensor_names(n_layers: int) -> dict[str, str]:
    """Hugging Face parameter name -> GGUF tensor name, from the gguf package's own map."""
    name_map = gguf.get_tensor_name_map(ARCH, n_layers)
    hf = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    for i in range(n_layers):
        hf += [
            f"model.layers.{i}.{part}.weight"
            for part in (
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
                "input_layernorm",
                "post_attention_layernorm",
            )
        ]
    out = {}
    for name in hf:
        mapped = name_map.get_name(name, try_suffixes=(".weight",))
        if mapped is None:  # the gguf package changed its map: a bug here, not bad input
            raise RuntimeError(f"the gguf package has no llama tensor name for {name}")
        out[name] = mapped
    return out


def nbytes_of(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape[:-1], dtype=np.int64)) * (shape[-1] // block) * block_bytes


@dataclass
class _Planned:
    name: str  # GGUF name
    shape: tuple[int, ...]  # numpy order (rows, cols)
    qtype: gguf.GGMLQuantizationType
    load: Callable[[], torch.Tensor]


# -- vocabulary -------------------------------------------------------------------------------------
@dataclass
class Vocab:
    """The tokenizer section of a GGUF (llama.cpp's names in comments)."""

    model: str  # tokenizer.ggml.model: "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    pre: str | None = None  # tokenizer.ggml.pre (BPE only)
    add_space_prefix: bool | None = None
    remove_extra_whitespaces: bool | None = None
    special: dict[str, int] = field(default_factory=dict)  # bos/eos/unk/pad -> id
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | list | None = None
    source: Path | None = None


def _pad_tokens(vocab: Vocab, n_vocab: int) -> None:
    if len(vocab.tokens) > n_vocab:
        raise ValueError(
            f"{vocab.source} has {len(vocab.tokens)} tokens but the model's vocabulary (config.json vocab_size) "
            f"is only {n_vocab}"
        )
    for i in range(len(vocab.tokens), n_vocab):  # llama.cpp's own padding convention
        vocab.tokens.append(f"[PAD{i}]")
        vocab.types.append(int(gguf.TokenType.UNUSED))
        if vocab.scores is not None:
            vocab.scores.append(-1000.0)


def sentencepiece_vocab(path: Path, n_vocab: int) -> Vocab:
    """tokenizer.model -> pieces, scores and types exactly as SentencePiece numbers them."""
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    try:
        proto = sp_pb2.ModelProto.FromString(path.read_bytes())
    except Exception:
        raise ValueError(f"{path} is not a SentencePiece model") from None
    if not proto.pieces:
        raise ValueError(f"{path} is not a SentencePiece model (no pieces)")
    # SentencePiece's piece types (NORMAL=1 .. BYTE=6) are llama.cpp's token types, number for number.
    vocab = Vocab(
        model="llama",
        tokens=[p.piece for p in proto.pieces],
        types=[int(p.type) for p in proto.pieces],
        scores=[float(p.score) for p in proto.pieces],
        add_space_prefix=bool(proto.normalizer_spec.add_dummy_prefix),
        remove_extra_whitespaces=bool(proto.normalizer_spec.remove_extra_whitespaces),
        add_bos=True,
        source=path,
    )
    spec = proto.trainer_spec
    for role, idx in (("unk", spec.unk_id), ("bos", spec.bos_id), ("eos", spec.eos_id), ("pad", spec.pad_id)):
        if 0 <= idx < len(proto.pieces):
            vocab.special[role] = idx
    _pad_tokens(vocab, n_vocab)
    return vocab


def _pre_tokenizer_name(pre: dict | None, path: Path) -> str:
    """Name llama.cpp gives the pre-tokenizer of a byte-level tokenizer.json."""
    parts = (pre or {}).get("pretokenizers") if (pre or {}).get("type") == "Sequence" else [pre] if pre else []
    kinds = [p.get("type") for p in parts]
    byte_level = parts[-1] if kinds and kinds[-1] == "ByteLevel" else None
    if byte_level is None or byte_level.get("add_prefix_space"):
        raise ValueError(f"{path}: not a byte-level BPE pre-tokenizer llama.cpp can run ({kinds or 'none'})")
    regex = byte_level.get("use_regex", True)
    if kinds == ["ByteLevel"] and regex:
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and regex:
        return "smollm"  # single digits, then GPT-2's split: SmolLM/StarCoder (llama.cpp: "smollm")
    if kinds == ["Split", "ByteLevel"] and not regex:
        pattern = (parts[0].get("pattern") or {}).get("Regex")
        if pattern in SPLIT_PRE_NAMES:
            return SPLIT_PRE_NAMES[pattern]
    raise ValueError(
        f"{path}: pre-tokenizer {kinds} is not one llama.cpp names "
        "(supported: GPT-2 byte-level, SmolLM/StarCoder digits + byte-level, Llama 3 split + byte-level)"
    )


def bpe_vocab(path: Path, n_vocab: int, tokenizer_config: dict) -> Vocab:
    """tokenizer.json (byte-level BPE) -> tokens in id order, merges, types and the pre-tokenizer name."""
    data = read_json_file(path)
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"{path}: tokenizer model {model.get('type')!r} is not BPE (only byte-level BPE exports)")
    pre = _pre_tokenizer_name(data.get("pre_tokenizer"), path)
    added = {int(t["id"]): t for t in data.get("added_tokens", [])}
    size = max([*model.get("vocab", {}).values(), *added, -1]) + 1
    tokens: list[str | None] = [None] * size
    for token, idx in model.get("vocab", {}).items():
        tokens[int(idx)] = token
    types = [int(gguf.TokenType.NORMAL)] * size
    for idx, tok in added.items():
        tokens[idx] = tok["content"]
        types[idx] = int(gguf.TokenType.CONTROL if tok.get("special") else gguf.TokenType.USER_DEFINED)
    for i, tok in enumerate(tokens):
        if tok is None:
            tokens[i], types[i] = f"[PAD{i}]", int(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    vocab = Vocab(model="gpt2", tokens=tokens, types=types, merges=merges, pre=pre, source=path)
    _pad_tokens(vocab, n_vocab)

    ids = {t: i for i, t in reversed(list(enumerate(vocab.tokens)))}
    for role in ("bos", "eos", "unk", "pad"):
        token = tokenizer_config.get(f"{role}_token")
        if isinstance(token, dict):
            token = token.get("content")
        if token is not None and token in ids:
            vocab.special[role] = ids[token]
    if model.get("unk_token") in ids:
        vocab.special.setdefault("unk", ids[model["unk_token"]])
    vocab.add_bos, vocab.add_eos = _added_specials(path, vocab.special)
    return vocab


def _added_specials(path: Path, special: dict[str, int]) -> tuple[bool, bool]:
    """Whether the tokenizer's post-processor adds BOS / EOS (what llama.cpp must then do too)."""
    from tokenizers import Tokenizer

    try:
        ids = Tokenizer.from_file(str(path)).encode("a", add_special_tokens=True).ids
    except Exception as exc:
        raise ValueError(f"{path} is not a valid tokenizer.json ({str(exc).splitlines()[0]})") from None
    bos, eos = special.get("bos"), special.get("eos")
    return bool(ids) and ids[0] == bos and bos is not None, bool(ids) and ids[-1] == eos and eos is not None


def _chat_template(model_dir: Path, tokenizer_config: dict) -> str | list | None:
    template = tokenizer_config.get("chat_template")
    jinja = model_dir / "chat_template.jinja"
    if template is None and jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    return template


def load_vocab(model_dir: Path, n_vocab: int, config: dict) -> Vocab:
    tokenizer_config = {}
    if (model_dir / "tokenizer_config.json").is_file():
        tokenizer_config = read_json_file(model_dir / "tokenizer_config.json")
    if (model_dir / "tokenizer.model").is_file():
        vocab = sentencepiece_vocab(model_dir / "tokenizer.model", n_vocab)
        if "add_bos_token" in tokenizer_config:
            vocab.add_bos = bool(tokenizer_config["add_bos_token"])
        vocab.add_eos = bool(tokenizer_config.get("add_eos_token", False))
    elif (model_dir / "tokenizer.json").is_file():
        vocab = bpe_vocab(model_dir / "tokenizer.json", n_vocab, tokenizer_config)
    else:
        raise FileNotFoundError(f"{model_dir} has no tokenizer (neither tokenizer.model nor tokenizer.json)")
    # The model's own config decides its special ids; the tokenizer's fill the gaps.
    for role in ("bos", "eos", "pad"):
        value = config.get(f"{role}_token_id")
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int) and 0 <= value < n_vocab:
            vocab.special[role] = value
    vocab.chat_template = _chat_template(model_dir, tokenizer_config)
    return vocab


def infill_ids(model_dir: Path, vocab: Vocab) -> dict[str, int] | None:
    """The infilling token ids: the checkpoint's record, else Code Llama's SentencePiece pieces."""
    path = model_dir / INFILL_RECORD
    if path.is_file():
        record = read_json_file(path)
        ids, texts = {}, record.get("tokens") or {}
        for role in INFILL_ROLES:
            idx = record.get(f"{role}_id")
            if not isinstance(idx, int) or not 0 <= idx < len(vocab.tokens):
                raise ValueError(f"{path}: {role}_id {idx!r} is not a token id of this vocabulary")
            if role in texts and texts[role] != vocab.tokens[idx]:
                raise ValueError(
                    f"{path}: {role} token {texts[role]!r} is not token {idx} ({vocab.tokens[idx]!r}) "
                    "of the checkpoint's tokenizer"
                )
            ids[role] = idx
        return ids
    if vocab.model == "llama":
        index = {t: i for i, t in enumerate(vocab.tokens)}
        if all(piece in index for piece in SPM_INFILL_PIECES.values()):
            return {role: index[piece] for role, piece in SPM_INFILL_PIECES.items()}
    return None


# -- config -----------------------------------------------------------------------------------------
def read_llama_config(model_dir: Path):
    """config.json as transformers reads it; anything but a Llama-architecture model is refused."""
    from transformers import LlamaConfig

    path = model_dir / "config.json"
    raw = read_json_file(path, missing=f"{model_dir} is not a checkpoint directory (no config.json)")
    if raw.get("model_type") != "llama":
        raise ValueError(
            f"{path}: cannot export model_type {raw.get('model_type')!r} to GGUF; "
            "only Llama-architecture checkpoints (model_type 'llama') are supported"
        )
    config = LlamaConfig.from_pretrained(str(model_dir))
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ValueError(f"{path}: Llama with bias terms is not supported for GGUF export")
    return raw, config


def head_dim_of(config) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def _rope_parameters(config) -> dict:
    with contextlib.suppress(AttributeError):
        config.standardize_rope_params()
    return dict(getattr(config, "rope_parameters", None) or {})


def llama3_rope_factors(config) -> torch.Tensor:
    """llama.cpp's `rope_freqs`: per-dimension divisors turning default RoPE into Llama 3's."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = _rope_parameters(config)
    dim = head_dim_of(config)
    base = float(params.get("rope_theta", 10_000.0))
    default = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    return (default / scaled.float()).to(torch.float32)


@dataclass(frozen=True)
class RopeGGUF:
    """RoPE as llama.cpp reads it: base, rotary width, and scaling keys or Llama 3's factor tensor."""

    freq_base: float
    dimension_count: int
    scaling: dict = field(default_factory=dict)  # llama.rope.scaling.* key suffix -> value
    factors: torch.Tensor | None = None  # rope_freqs.weight (Llama 3)


def rope_for_gguf(config) -> RopeGGUF:
    """transformers' rope_parameters -> llama.cpp's names; an unsupported kind is a one-line error."""
    params = _rope_parameters(config)
    rope = RopeGGUF(float(params.get("rope_theta", 10_000.0)), head_dim_of(config))
    kind = params.get("rope_type", "default")
    if kind == "linear":
        rope.scaling.update(type="linear", factor=float(params["factor"]))
    elif kind == "yarn":
        original = params.get("original_max_position_embeddings") or config.max_position_embeddings
        rope.scaling.update(type="yarn", factor=float(params["factor"]), original_context_length=int(original))
        for hf_key, gguf_key in (
            ("beta_fast", "yarn_beta_fast"),
            ("beta_slow", "yarn_beta_slow"),
            ("attention_factor", "attn_factor"),
        ):
            if params.get(hf_key) is not None:
                rope.scaling[gguf_key] = float(params[hf_key])
    elif kind == "llama3":
        rope = RopeGGUF(rope.freq_base, rope.dimension_count, factors=llama3_rope_factors(config))
    elif kind == "dynamic":
        # llama.cpp has no dynamic NTK. Up to the trained context it equals plain RoPE, so the file
        # is right there; beyond it llama.cpp keeps the base instead of stretching it.
        log.warning(
            "llama.cpp has no dynamic-NTK RoPE: the GGUF uses plain RoPE (identical up to %d tokens)",
            params.get("original_max_position_embeddings") or config.max_position_embeddings,
        )
    elif kind != "default":
        raise ValueError(f"RoPE type {kind!r} has no llama.cpp equivalent")
    return rope


def _write_rope(writer: gguf.GGUFWriter, rope: RopeGGUF) -> None:
    writer.add_rope_freq_base(rope.freq_base)
    writer.add_rope_dimension_count(rope.dimension_count)
    for suffix, value in rope.scaling.items():
        key = f"{ARCH_NAME}.rope.scaling.{suffix}"
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_float32(key, value)


# -- export -----------------------------------------------------------------------------------------
class _Weights:
    """Lazy access to a checkpoint's safetensors files (sharded or not)."""

    def __init__(self, model_dir: Path):
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = read_json_file(index).get("weight_map") or {}
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in model_dir.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{model_dir} has no weights (*.safetensors)")
        self.handles, self.where = [], {}
        for name in files:
            path = model_dir / name
            try:
                handle = safe_open(str(path), framework="pt")
            except Exception as exc:
                raise ValueError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
            self.handles.append(handle)
            for key in handle.keys():
                self.where[key] = (handle, path)

    def shape(self, name: str) -> tuple[int, ...]:
        handle, _ = self.where[name]
        return tuple(handle.get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        handle, path = self.where[name]
        try:
            return handle.get_tensor(name)
        except Exception as exc:
            raise ValueError(f"cannot read tensor {name} from {path}: {str(exc).splitlines()[0]}") from None


def _plan_tensors(weights: _Weights, config, out_qtype: gguf.GGMLQuantizationType, model_dir: Path):
    n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = head_dim_of(config)
    d, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    expected = {
        "model.embed_tokens.weight": (v, d),
        "model.norm.weight": (d,),
        "lm_head.weight": (v, d),
    }
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        expected.update(
            {
                p + "self_attn.q_proj.weight": (n_heads * head_dim, d),
                p + "self_attn.k_proj.weight": (n_kv * head_dim, d),
                p + "self_attn.v_proj.weight": (n_kv * head_dim, d),
                p + "self_attn.o_proj.weight": (d, n_heads * head_dim),
                p + "mlp.gate_proj.weight": (f, d),
                p + "mlp.up_proj.weight": (f, d),
                p + "mlp.down_proj.weight": (d, f),
                p + "input_layernorm.weight": (d,),
                p + "post_attention_layernorm.weight": (d,),
            }
        )
    tied = bool(config.tie_word_embeddings)
    if tied:
        expected.pop("lm_head.weight")
    names = tensor_names(config.num_hidden_layers)
    plan = []
    for hf_name, shape in expected.items():
        if hf_name not in weights.where:
            raise ValueError(f"{model_dir}: weights lack {hf_name}")
        if weights.shape(hf_name) != shape:
            raise ValueError(f"{model_dir}: {hf_name} has shape {weights.shape(hf_name)}, config.json implies {shape}")
        qtype = Q.F32
        if len(shape) == 2:
            qtype = out_qtype
            block = gguf.GGML_QUANT_SIZES[qtype][0]
            if shape[-1] % block:  # llama.cpp's fallback for rows that are not whole blocks
                qtype = Q.F16
        load = _loader(weights, hf_name, n_heads, n_kv)
        plan.append(_Planned(names[hf_name], shape, qtype, load))
    return plan


def _loader(weights: _Weights, hf_name: str, n_heads: int, n_kv: int) -> Callable[[], torch.Tensor]:
    def load() -> torch.Tensor:
        t = weights.get(hf_name).float()
        if hf_name.endswith("q_proj.weight"):
            t = permute_for_gguf(t, n_heads)
        elif hf_name.endswith("k_proj.weight"):
            t = permute_for_gguf(t, n_kv)
        return t

    return load


def _encode(t: torch.Tensor, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    array = t.detach().to(torch.float32).contiguous().numpy()
    return gguf.quants.quantize(array, qtype)


def _write_vocab(writer: gguf.GGUFWriter, vocab: Vocab, infill: dict[str, int] | None) -> None:
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges is not None:
        writer.add_token_merges(vocab.merges)
    adders = {
        "bos": writer.add_bos_token_id,
        "eos": writer.add_eos_token_id,
        "unk": writer.add_unk_token_id,
        "pad": writer.add_pad_token_id,
    }
    for role, idx in vocab.special.items():
        adders[role](idx)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.remove_extra_whitespaces is not None:
        writer.add_remove_extra_whitespaces(vocab.remove_extra_whitespaces)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
    if infill:
        keys = gguf.Keys.Tokenizer
        for role, current, legacy in (
            ("prefix", keys.FIM_PRE_ID, keys.PREFIX_ID),
            ("suffix", keys.FIM_SUF_ID, keys.SUFFIX_ID),
            ("middle", keys.FIM_MID_ID, keys.MIDDLE_ID),
        ):
            writer.add_uint32(current, infill[role])
            writer.add_uint32(legacy, infill[role])
        writer.add_eot_token_id(infill["eot"])


def export_gguf(
    model_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    out_type: str = "f16",
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write MODEL_DIR as one GGUF; `out_path` appears only when the whole file is written."""
    model_dir, out_path = Path(model_dir), Path(out_path)
    if out_type not in OUT_TYPES:
        raise ValueError(f"unknown GGUF type {out_type!r} (choose from {', '.join(OUT_TYPES)})")
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory not found: {model_dir}")
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"output {out_path} already exists")
    if out_path.is_dir():
        raise IsADirectoryError(f"output {out_path} is a directory; give a .gguf file name")

    # Everything is read and checked before the output file is opened.
    raw, config = read_llama_config(model_dir)
    qtype, file_type = OUT_TYPES[out_type]
    rope = rope_for_gguf(config)
    vocab = load_vocab(model_dir, config.vocab_size, raw)
    infill = infill_ids(model_dir, vocab)
    plan = _plan_tensors(_Weights(model_dir), config, qtype, model_dir)
    if rope.factors is not None:
        factors = rope.factors
        plan.insert(0, _Planned("rope_freqs.weight", tuple(factors.shape), Q.F32, lambda: factors))

    def metadata(writer: gguf.GGUFWriter) -> None:
        writer.add_name(name or model_dir.resolve().name)
        writer.add_file_type(int(file_type))
        if qtype not in (Q.F32, Q.F16, Q.BF16):
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_vocab_size(config.vocab_size)
        writer.add_context_length(int(config.max_position_embeddings))
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        if head_dim_of(config) != config.hidden_size // config.num_attention_heads:
            writer.add_key_length(head_dim_of(config))
            writer.add_value_length(head_dim_of(config))
        _write_rope(writer, rope)
        _write_vocab(writer, vocab, infill)

    _stream_gguf(out_path, metadata, plan, desc=f"GGUF {out_type}")
    log.info(
        "wrote %s (%s, %d tensors, vocab %s %d%s)",
        out_path,
        out_type,
        len(plan),
        vocab.model,
        len(vocab.tokens),
        ", infilling ids " + json.dumps(infill) if infill else ", no infilling tokens",
    )
    return out_path


def _stream_gguf(out_path: Path, metadata: Callable[[gguf.GGUFWriter], None], plan: list[_Planned], desc: str):
    """Write header, metadata and tensor table, then each tensor as it is converted, into a temp file
    beside `out_path`; rename it into place only when complete."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    writer_log = logging.getLogger("gguf.gguf_writer")  # logs its plan (temp names) at INFO: our bar says enough
    level = writer_log.level
    writer_log.setLevel(max(level, logging.WARNING))
    writer = gguf.GGUFWriter(tmp, ARCH_NAME)
    try:
        metadata(writer)
        for item in plan:
            nbytes = nbytes_of(item.shape, item.qtype)
            writer.add_tensor_info(item.name, item.shape, np.dtype(np.float32), nbytes, item.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        total = sum(nbytes_of(i.shape, i.qtype) for i in plan)
        with tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=None) as bar:
            for item in plan:
                writer.write_tensor_data(_encode(item.load(), item.qtype))
                bar.update(nbytes_of(item.shape, item.qtype))
        for fout in writer.fout or []:
            fout.flush()
            os.fsync(fout.fileno())
        writer.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_path)
    except BaseException:
        writer.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        writer_log.setLevel(level)
