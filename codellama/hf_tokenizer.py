"""Export a `CodeLlamaTokenizer` as the files transformers' `AutoTokenizer` opens.

transformers converts the SentencePiece model into a `tokenizers` BPE (tokenizer.json);
we let it do that conversion rather than writing the JSON by hand.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from codellama.tokenizer import CodeLlamaTokenizer


def to_hf_tokenizer(tokenizer: CodeLlamaTokenizer):
    from transformers import CodeLlamaTokenizer as HFCodeLlamaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.model").write_bytes(tokenizer.proto_bytes)
        # fill_token=None: "<FILL_ME>" would otherwise get an id past the model's vocabulary.
        return HFCodeLlamaTokenizer.from_pretrained(tmp, fill_token=None, legacy=False)


def write_hf_tokenizer_files(tokenizer: CodeLlamaTokenizer, out_dir: Path) -> None:
    to_hf_tokenizer(tokenizer).save_pretrained(str(out_dir))
