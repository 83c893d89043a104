"""Tokenizers behind one interface: SentencePiece (`tokenizer.model`) and Hugging Face (`tokenizer.json`).

`load_tokenizer(path)` picks the backend; everything else in the toolkit sees only `Tokenizer`
(base.py). The PSM/SPM token layout lives in layout.py, used by training data and prompts alike.
"""

from codellama.tokenizer.base import INFILLING_TOKENS_FILE, NO_INFILLING_HINT, InfillingTokens, Tokenizer
from codellama.tokenizer.hf import HF_TOKENIZER_FILE, HFTokenizer
from codellama.tokenizer.layout import infill_layout
from codellama.tokenizer.load import check_model_vocab, load_tokenizer, tokenizer_file
from codellama.tokenizer.sentencepiece import (
    EOT,
    INFILL_PIECES,
    MIDDLE,
    N_EXTRA_PIECES,
    PREFIX,
    SUFFIX,
    TOKENIZER_FILE,
    CodeLlamaTokenizer,
    TrainOptions,
    extend_proto,
    save_tokenizer_dir,
)

__all__ = [
    "CodeLlamaTokenizer",
    "EOT",
    "HFTokenizer",
    "HF_TOKENIZER_FILE",
    "INFILLING_TOKENS_FILE",
    "INFILL_PIECES",
    "InfillingTokens",
    "MIDDLE",
    "NO_INFILLING_HINT",
    "N_EXTRA_PIECES",
    "PREFIX",
    "SUFFIX",
    "TOKENIZER_FILE",
    "Tokenizer",
    "TrainOptions",
    "check_model_vocab",
    "extend_proto",
    "infill_layout",
    "load_tokenizer",
    "save_tokenizer_dir",
    "tokenizer_file",
]
