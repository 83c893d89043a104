"""Llama-family bases as they are downloaded: a Hugging Face byte-level BPE tokenizer.json (trained here with
the `tokenizers` library, as Llama 3 / SmolLM2 ship theirs) beside a tiny tied-embedding `LlamaForCausalLM`."""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# starcoder: StarCoder-style FIM tokens in the vocabulary, no chat template (reused by `tokenizer extend`);
# chatml: SmolLM2-like, no FIM tokens (extend adds four) and a ChatML chat template.
BPE_VARIANTS = {
    "starcoder": {
        "specials": ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"],
        "config": {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"},
    },
    "chatml": {
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "config": {"eos_token": "<|im_end|>", "bos_token": "<|im_start|>", "chat_template": CHATML_TEMPLATE},
    },
}


def write_bpe_tokenizer(texts: list[str], variant: str, out: Path, vocab_size: int = 1024) -> Path:
    """Train a byte-level BPE with the `tokenizers` library and write tokenizer.json + tokenizer_config.json."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    spec = BPE_VARIANTS[variant]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=spec["specials"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **spec["config"]}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out


def tiny_llama_config(vocab_size: int, **changes):
    """The shape of every tiny Llama the tests build directly with transformers (grouped heads: 4 query, 2 KV)."""
    from transformers import LlamaConfig

    shape = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    return LlamaConfig(vocab_size=vocab_size, **{**shape, **changes})


def write_tied_llama(out: Path, vocab_size: int, eos_id: int, seed: int = 0) -> Path:
    """A tiny random `LlamaForCausalLM` with tied embeddings, saved by transformers itself."""
    import torch
    from transformers import LlamaForCausalLM

    config = tiny_llama_config(
        vocab_size,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(str(out))
    return out
