"""Small real inputs for the GGUF tests: a byte-level BPE trained on stdlib code and tiny random Llamas."""

from __future__ import annotations

import json
from pathlib import Path

import torch

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<PRE>", "<SUF>", "<MID>", "<EOT>"]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def stdlib_file_text() -> str:
    """A real source file whose encoding the tests compare (digits, indentation, strings, unicode)."""
    import json.decoder

    return Path(json.decoder.__file__).read_text(encoding="utf-8")


def train_bpe(texts: list[str], vocab_size: int = 1000):
    """A SmolLM2-style byte-level BPE (single digits, then GPT-2's split) trained with `tokenizers`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def save_bpe_tokenizer(tok, out_dir: Path, *, infilling: bool = True) -> None:
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", chat_template=CHATML
    )
    hf.save_pretrained(str(out_dir))
    if infilling:
        roles = dict(zip(("prefix", "suffix", "middle", "eot"), ("<PRE>", "<SUF>", "<MID>", "<EOT>")))
        record = {f"{role}_id": tok.token_to_id(text) for role, text in roles.items()}
        record["tokens"] = roles
        (out_dir / "infilling_tokens.json").write_text(json.dumps(record), encoding="utf-8")


def random_llama(
    vocab_size: int,
    *,
    tied: bool,
    n_kv: int = 2,
    hidden: int = 64,
    heads: int = 4,
    layers: int = 2,
    ffn: int = 128,
    rope: dict | None = None,
    context: int = 256,
    seed: int = 0,
):
    """A random LlamaForCausalLM whose logits differ clearly between tokens (|logit| up to ~3).

    Weights are N(0, 0.05): larger ones make a 2-layer random model chaotic, so that rounding
    noise of a fraction of a percent swings logits by several percent.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=n_kv,
        max_position_embeddings=context,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        rope_parameters=rope or {"rope_type": "default", "rope_theta": 10000.0},
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.05)
    return model


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()


def load_gguf_with_transformers(path: Path):
    """transformers' own GGUF loader: the independent reference every export is checked against."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def gguf_metadata(path: Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(str(path))
    meta = {name: field.contents() for name, field in reader.fields.items()}
    meta["__tensors__"] = {t.name: t.tensor_type.name for t in reader.tensors}
    return meta
