"""GGUF (llama.cpp's single-file format) -> a float Hugging Face Llama checkpoint with its tokenizer.

Many Llama-family bases circulate only as GGUF files, often quantized (Q4_1, Q8_0, K-quants).
Training needs float weights, so every tensor is dequantized with the `gguf` package's own
dequantizers, streamed one at a time into safetensors shards. The q/k rows are permuted back
from llama.cpp's interleaved rotary layout to transformers' half-split one.

The tokenizer is rebuilt from the GGUF's metadata: a SentencePiece `llama` vocabulary becomes a
`tokenizer.model` (pieces, scores and types as stored), a byte-level `gpt2` vocabulary becomes a
`tokenizer.json` with the pre-tokenizer llama.cpp names in `tokenizer.ggml.pre`. BOS/EOS/pad,
the chat template and the infilling token ids (as `infilling_tokens.json`) come along.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from tqdm import tqdm

from codellama.convert import _ShardWriter, permute_for_hf
from codellama.gguf_export import ARCH_NAME, INFILL_RECORD, LLAMA3_SPLIT, tensor_names
from codellama.io import atomic_directory, atomic_write_json, read_json_file

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TT = gguf.TokenType
# llama.cpp's pre-tokenizer names -> how the tokenizers library splits text the same way.
DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "codeshell", "exaone")
GPT2_ONLY = ("gpt-2", "gpt2", "mpt", "olmo", "jais", "default")
LLAMA3_NAMES = ("llama-bpe", "llama3", "llama-v3", "smaug-bpe", "falcon3", "dbrx")
# FIM token names some vocabularies use without marking them in the GGUF metadata.
FIM_NAMES = (
    ("▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"),
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>", None),
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", None),
)


@dataclass
class GGUFModel:
    """An opened GGUF file: its metadata as Python values and its tensors (memory-mapped)."""

    path: Path
    reader: gguf.GGUFReader
    meta: dict

    def get(self, key: str, default=None):
        return self.meta.get(key, default)

    def arch(self, key: str, default=None):
        return self.meta.get(f"{ARCH_NAME}.{key}", default)


def open_gguf(path: str | os.PathLike) -> GGUFModel:
    """Read a GGUF's header; a missing, corrupt or truncated file is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    try:
        reader = gguf.GGUFReader(str(path))
        meta = {name: f.contents() for name, f in reader.fields.items()}
    except Exception as exc:  # the reader raises ValueError, IndexError, struct errors... on bad bytes
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path} is not a readable GGUF file (corrupt or truncated: {detail})") from None
    return GGUFModel(path, reader, meta)


# -- config -----------------------------------------------------------------------------------------
def _f32(value) -> float:
    """A float32 metadata value as the decimal it was written from (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(value)))


def _required(model: GGUFModel, key: str):
    value = model.arch(key)
    if value is None:
        raise ValueError(f"{model.path}: GGUF lacks {ARCH_NAME}.{key}")
    return value


def llama_config(model: GGUFModel, dtype: torch.dtype):
    """transformers' LlamaConfig from llama.cpp's metadata keys."""
    from transformers import LlamaConfig

    arch = model.get("general.architecture")
    if arch != ARCH_NAME:
        raise ValueError(
            f"{model.path}: architecture {arch!r} is not supported (only Llama-architecture GGUFs, 'llama')"
        )
    n_heads = int(_required(model, "attention.head_count"))
    hidden = int(_required(model, "embedding_length"))
    names = {t.name for t in model.reader.tensors}
    embd = next((t for t in model.reader.tensors if t.name == "token_embd.weight"), None)
    if embd is None:
        raise ValueError(f"{model.path}: GGUF has no token_embd.weight tensor")
    n_vocab = int(model.arch("vocab_size") or embd.shape[1])
    head_dim = int(model.arch("attention.key_length") or model.arch("rope.dimension_count") or hidden // n_heads)
    specials = {
        role: model.get(f"tokenizer.ggml.{key}")
        for role, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id"))
    }
    config = LlamaConfig(
        vocab_size=n_vocab,
        hidden_size=hidden,
        intermediate_size=int(_required(model, "feed_forward_length")),
        num_hidden_layers=int(_required(model, "block_count")),
        num_attention_heads=n_heads,
        num_key_value_heads=int(model.arch("attention.head_count_kv") or n_heads),
        head_dim=head_dim,
        max_position_embeddings=int(model.arch("context_length") or 4096),
        rms_norm_eps=_f32(model.arch("attention.layer_norm_rms_epsilon") or 1e-5),
        rope_parameters=rope_parameters(model, head_dim),
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=specials["bos"],
        eos_token_id=specials["eos"],
        pad_token_id=specials["pad"],
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
    )
    config.dtype = dtype
    config.architectures = ["LlamaForCausalLM"]
    return config


def rope_parameters(model: GGUFModel, head_dim: int) -> dict:
    """RoPE base and scaling in transformers' vocabulary (llama.cpp's scaling keys, or Llama 3 factors)."""
    params: dict = {"rope_type": "default", "rope_theta": _f32(model.arch("rope.freq_base") or 10_000.0)}
    kind = model.arch("rope.scaling.type")
    factor = model.arch("rope.scaling.factor")
    if kind == "linear" and factor:
        params.update(rope_type="linear", factor=_f32(factor))
    elif kind == "yarn" and factor:
        params.update(rope_type="yarn", factor=_f32(factor))
        for gguf_key, hf_key in (
            ("rope.scaling.original_context_length", "original_max_position_embeddings"),
            ("rope.scaling.yarn_beta_fast", "beta_fast"),
            ("rope.scaling.yarn_beta_slow", "beta_slow"),
            ("rope.scaling.attn_factor", "attention_factor"),
        ):
            if model.arch(gguf_key) is not None:
                params[hf_key] = _f32(model.arch(gguf_key))
        if "original_max_position_embeddings" in params:
            params["original_max_position_embeddings"] = int(params["original_max_position_embeddings"])
    elif kind not in (None, "none", "linear", "yarn") or (kind and not factor):
        raise ValueError(f"{model.path}: RoPE scaling {kind!r} is not supported for import")
    freqs = next((t for t in model.reader.tensors if t.name == "rope_freqs.weight"), None)
    if freqs is not None:
        factors = np.asarray(gguf.quants.dequantize(freqs.data, freqs.tensor_type), dtype=np.float64).reshape(-1)
        params.update(_llama3_from_factors(factors, params["rope_theta"], head_dim, model.path))
    return params


def _llama3_from_factors(factors: np.ndarray, base: float, head_dim: int, path: Path) -> dict:
    """Recover Llama 3's RoPE parameters from llama.cpp's per-dimension factors.

    The factors are a function of (factor, low/high frequency factors, original context); we try
    the published band settings at power-of-two contexts and accept one only if it reproduces every
    factor.
    """
    inv = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / inv
    factor = float(factors.max())
    for original in (8192, *(2**k for k in range(8, 21))):
        for low, high in ((1.0, 4.0), (1.0, 2.0), (2.0, 4.0), (1.0, 8.0)):
            low_wl, high_wl = original / low, original / high
            smooth = (original / wavelen - low) / (high - low)
            expect = np.where(
                wavelen < high_wl, 1.0, np.where(wavelen > low_wl, factor, 1.0 / ((1 - smooth) / factor + smooth))
            )
            if expect.shape == factors.shape and np.allclose(expect, factors, rtol=1e-4, atol=1e-5):
                return {
                    "rope_type": "llama3",
                    "factor": factor,
                    "low_freq_factor": low,
                    "high_freq_factor": high,
                    "original_max_position_embeddings": original,
                }
    raise ValueError(f"{path}: rope_freqs.weight matches no Llama 3 RoPE setting; cannot import its scaling")


# -- tensors ----------------------------------------------------------------------------------------
def _dequantize(model: GGUFModel, tensor) -> np.ndarray:
    try:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise ValueError(
            f"{model.path}: tensor {tensor.name} uses {tensor.tensor_type.name}, which cannot be dequantized"
        ) from None
    shape = [int(n) for n in reversed(tensor.shape.tolist())]  # GGML order (ne0 first) -> numpy
    return np.array(values, dtype=np.float32).reshape(shape)  # a writable copy, off the memory map


def _plan(model: GGUFModel, config) -> list[tuple[object, str]]:
    """(GGUF tensor, HF name) for every weight, after checking names and shapes against the config."""
    hf_of = {g: h for h, g in tensor_names(config.num_hidden_layers).items()}
    d, f, v, hd = config.hidden_size, config.intermediate_size, config.vocab_size, config.head_dim
    n_q, n_kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    shapes = {
        "model.embed_tokens.weight": (v, d),
        "lm_head.weight": (v, d),
        "model.norm.weight": (d,),
        "q_proj": (n_q, d),
        "k_proj": (n_kv, d),
        "v_proj": (n_kv, d),
        "o_proj": (d, n_q),
        "gate_proj": (f, d),
        "up_proj": (f, d),
        "down_proj": (d, f),
        "layernorm": (d,),
    }
    plan, seen = [], set()
    for t in model.reader.tensors:
        if t.name == "rope_freqs.weight" or t.name.endswith(".attn_rot_embd"):
            continue  # RoPE factors went into the config; rot_embd is a cache
        hf = hf_of.get(t.name)
        if hf is None:
            raise ValueError(f"{model.path}: unexpected tensor {t.name} for a Llama model")
        key = hf if hf in shapes else next(k for k in shapes if k in hf)
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        if shape != shapes[key]:
            raise ValueError(f"{model.path}: tensor {t.name} has shape {shape}, the metadata implies {shapes[key]}")
        plan.append((t, hf))
        seen.add(hf)
    missing = [
        h for h in hf_of.values() if h not in seen and not (h == "lm_head.weight" and config.tie_word_embeddings)
    ]
    if missing:
        raise ValueError(f"{model.path}: GGUF lacks {len(missing)} tensors (first: {missing[0]})")
    return plan


def _torch_tensor(model: GGUFModel, tensor, hf_name: str, config, dtype: torch.dtype) -> torch.Tensor:
    t = torch.from_numpy(_dequantize(model, tensor))
    if hf_name.endswith("q_proj.weight"):
        t = permute_for_hf(t, config.num_attention_heads)
    elif hf_name.endswith("k_proj.weight"):
        t = permute_for_hf(t, config.num_key_value_heads)
    return t.to(dtype).contiguous()


def default_dtype(model: GGUFModel) -> torch.dtype:
    """The smallest float type that holds every value of the file exactly (float32 for quantized files)."""
    matrices = {t.tensor_type for t in model.reader.tensors if len(t.shape) == 2}
    half = {gguf.GGMLQuantizationType.F16: torch.float16, gguf.GGMLQuantizationType.BF16: torch.bfloat16}
    if len(matrices) != 1 or next(iter(matrices)) not in half:
        return torch.float32
    dtype = half[next(iter(matrices))]
    for t in model.reader.tensors:  # llama.cpp keeps norms in F32: they must survive the cast too
        if t.tensor_type == gguf.GGMLQuantizationType.F32:
            values = torch.from_numpy(np.array(t.data, dtype=np.float32))
            if not torch.equal(values.to(dtype).float(), values):
                return torch.float32
    return dtype


# -- tokenizer --------------------------------------------------------------------------------------
def _tokenizer_fields(model: GGUFModel) -> dict:
    tokens = model.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ValueError(f"{model.path}: GGUF has no tokenizer (tokenizer.ggml.tokens)")
    n = len(tokens)
    return {
        "model": model.get("tokenizer.ggml.model"),
        "tokens": list(tokens),
        "types": list(model.get("tokenizer.ggml.token_type") or [int(TT.NORMAL)] * n),
        "scores": list(model.get("tokenizer.ggml.scores") or [0.0] * n),
        "merges": list(model.get("tokenizer.ggml.merges") or []),
        "pre": model.get("tokenizer.ggml.pre"),
        "bos": model.get("tokenizer.ggml.bos_token_id"),
        "eos": model.get("tokenizer.ggml.eos_token_id"),
        "unk": model.get("tokenizer.ggml.unknown_token_id"),
        "pad": model.get("tokenizer.ggml.padding_token_id"),
        "add_bos": model.get("tokenizer.ggml.add_bos_token"),
        "add_eos": model.get("tokenizer.ggml.add_eos_token"),
        "add_space_prefix": model.get("tokenizer.ggml.add_space_prefix"),
        "remove_extra_whitespaces": model.get("tokenizer.ggml.remove_extra_whitespaces"),
        "chat_template": model.get("tokenizer.chat_template"),
    }


def sentencepiece_proto(fields: dict, path: Path) -> bytes:
    """A SentencePiece BPE model with the GGUF's pieces, scores and types (llama.cpp keeps them all)."""
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    proto = sp_pb2.ModelProto()
    spec = proto.trainer_spec
    spec.model_type = sp_pb2.TrainerSpec.BPE
    spec.vocab_size = len(fields["tokens"])
    spec.byte_fallback = int(TT.BYTE) in fields["types"]
    types = fields["types"]

    def special(role: str, wanted: int) -> int:
        idx = fields[role]
        return idx if idx is not None and 0 <= idx < len(types) and types[idx] == wanted else -1

    spec.unk_id = special("unk", int(TT.UNKNOWN))
    spec.bos_id = special("bos", int(TT.CONTROL))
    spec.eos_id = special("eos", int(TT.CONTROL))
    pad = special("pad", int(TT.CONTROL))
    spec.pad_id = pad if pad not in (spec.bos_id, spec.eos_id) else -1
    for role, idx in (("unk", spec.unk_id), ("bos", spec.bos_id), ("eos", spec.eos_id), ("pad", spec.pad_id)):
        if idx >= 0:
            setattr(spec, f"{role}_piece", fields["tokens"][idx])
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = True if fields["add_space_prefix"] is None else bool(fields["add_space_prefix"])
    norm.remove_extra_whitespaces = bool(fields["remove_extra_whitespaces"])
    norm.escape_whitespaces = True
    for token, score, kind in zip(fields["tokens"], fields["scores"], types):
        piece = proto.pieces.add()
        piece.piece = token
        piece.score = float(score)
        piece.type = int(kind) if int(kind) in (1, 2, 3, 4, 5, 6) else int(TT.NORMAL)
    if spec.unk_id < 0:
        raise ValueError(f"{path}: SentencePiece vocabulary has no unknown token")
    return proto.SerializeToString()


def byte_level_tokenizer(fields: dict, path: Path):
    """A `tokenizers` byte-level BPE equal to the one llama.cpp runs for this GGUF."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    tokens, types = fields["tokens"], fields["types"]
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)
    merges = []
    for m in fields["merges"]:
        parts = m.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{path}: malformed BPE merge {m!r}")
        merges.append((parts[0], parts[1]))
    pre = fields["pre"] or "default"
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    split = None
    if pre in LLAMA3_NAMES:
        split = LLAMA3_SPLIT
    elif pre not in DIGITS_THEN_GPT2 + GPT2_ONLY:
        split = _transformers_split(pre)
        if split is None:
            log.warning("%s: pre-tokenizer %r is unknown here; splitting text like GPT-2", path, pre)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, ignore_merges=pre in LLAMA3_NAMES))
    if split is not None:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
            ]
        )
    elif pre in DIGITS_THEN_GPT2:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    control = [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == int(TT.CONTROL)]
    user = [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == int(TT.USER_DEFINED)]
    tok.add_special_tokens(control)
    tok.add_tokens(user)
    bos = fields["bos"]
    if fields["add_bos"] and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A {tokens[bos]} $B", special_tokens=[(tokens[bos], bos)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _transformers_split(pre: str) -> str | None:
    """The split regex transformers' GGUF support knows for other pre-tokenizer names, if any."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except ImportError:
        return None
    return GGUF_PRE_TOKENIZER_SPLITS.get(pre)


def write_tokenizer(model: GGUFModel, out_dir: Path) -> dict:
    """Write tokenizer files into `out_dir`; returns the fields used (for the infilling record)."""
    fields = _tokenizer_fields(model)
    kind = fields["model"]
    if kind == "llama":
        from codellama.tokenizer import CodeLlamaTokenizer

        CodeLlamaTokenizer(sentencepiece_proto(fields, model.path)).save(out_dir)
    elif kind == "gpt2":
        from transformers import PreTrainedTokenizerFast

        def tok_at(role):
            idx = fields[role]
            return fields["tokens"][idx] if idx is not None and 0 <= idx < len(fields["tokens"]) else None

        hf = PreTrainedTokenizerFast(
            tokenizer_object=byte_level_tokenizer(fields, model.path),
            bos_token=tok_at("bos"),
            eos_token=tok_at("eos"),
            unk_token=tok_at("unk"),
            pad_token=tok_at("pad"),
        )
        hf.save_pretrained(str(out_dir))
    else:
        raise ValueError(f"{model.path}: tokenizer model {kind!r} is not supported (only 'llama' and 'gpt2')")
    config_path = out_dir / "tokenizer_config.json"
    tok_config = read_json_file(config_path) if config_path.is_file() else {}
    if fields["chat_template"]:
        tok_config["chat_template"] = fields["chat_template"]
        (out_dir / "chat_template.jinja").write_text(fields["chat_template"], encoding="utf-8")
    if fields["add_bos"] is not None:
        tok_config["add_bos_token"] = bool(fields["add_bos"])
    if fields["add_eos"] is not None:
        tok_config["add_eos_token"] = bool(fields["add_eos"])
    if model.arch("context_length"):
        tok_config["model_max_length"] = int(model.arch("context_length"))
    atomic_write_json(config_path, tok_config)
    return fields


def infilling_record(model: GGUFModel, fields: dict) -> dict | None:
    """`infilling_tokens.json` content from the FIM keys (or well-known FIM token names)."""
    keys = gguf.Keys.Tokenizer
    tokens = fields["tokens"]
    ids = {
        "prefix": model.get(keys.FIM_PRE_ID, model.get(keys.PREFIX_ID)),
        "suffix": model.get(keys.FIM_SUF_ID, model.get(keys.SUFFIX_ID)),
        "middle": model.get(keys.FIM_MID_ID, model.get(keys.MIDDLE_ID)),
        "eot": model.get(keys.EOT_ID),
    }
    if any(ids[r] is None for r in ("prefix", "suffix", "middle")):
        index = {t: i for i, t in enumerate(tokens)}
        for names in FIM_NAMES:
            if all(n in index for n in names[:3]):
                ids.update(zip(("prefix", "suffix", "middle"), (index[n] for n in names[:3])))
                if names[3] in index and ids["eot"] is None:
                    ids["eot"] = index[names[3]]
                break
        else:
            return None
    if ids["eot"] is None:
        ids["eot"] = fields["eos"]  # StarCoder-style vocabularies end an infill with end-of-text
    if any(not isinstance(i, int) or not 0 <= i < len(tokens) for i in ids.values()):
        raise ValueError(f"{model.path}: infilling token ids {ids} are not all in the vocabulary")
    return {
        **{f"{role}_id": int(idx) for role, idx in ids.items()},
        "tokens": {role: tokens[idx] for role, idx in ids.items()},
    }


# -- conversion -------------------------------------------------------------------------------------
def convert_gguf_to_hf(
    gguf_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = 5 * 2**30,
    overwrite: bool = False,
) -> Path:
    """Convert; `out_dir` appears only when the whole checkpoint (weights + tokenizer) is written."""
    model = open_gguf(gguf_path)
    dtype = dtype or default_dtype(model)
    config = llama_config(model, dtype)
    plan = _plan(model, config)
    _tokenizer_fields(model)  # a GGUF without a vocabulary fails before anything is written
    log.info(
        "converting %s: %d layers, width %d, vocab %d, %s -> %s",
        model.path.name,
        config.num_hidden_layers,
        config.hidden_size,
        config.vocab_size,
        ", ".join(sorted({t.tensor_type.name for t, _ in plan})),
        str(dtype).removeprefix("torch."),
    )
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        writer = _ShardWriter(tmp, max_shard_bytes)
        for tensor, hf_name in tqdm(plan, desc="dequantizing", unit="tensor", disable=None):
            writer.add({hf_name: _torch_tensor(model, tensor, hf_name, config, dtype)})
        writer.finish()
        config.save_pretrained(tmp)
        _write_generation_config(config, tmp)
        fields = write_tokenizer(model, tmp)
        record = infilling_record(model, fields)
        if record is not None:
            atomic_write_json(tmp / INFILL_RECORD, record)
    log.info("wrote %s%s", out_dir, " (with infilling tokens)" if record else "")
    return Path(out_dir)


def _write_generation_config(config, out_dir: Path) -> None:
    from transformers import GenerationConfig

    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    ).save_pretrained(str(out_dir))
