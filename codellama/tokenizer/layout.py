"""Code Llama's PSM / SPM token layout, written once for training data and for inference prompts.

    PSM: <PRE> prefix <SUF> suffix <MID> middle [<EOT>]
    SPM: <PRE> <SUF> suffix <MID> prefix middle [<EOT>]

Training (`codellama.data.fim`) lays out a whole document and ends it with <EOT>; an inference
prompt (`Tokenizer.infilling_prompt`) is the same layout with an empty middle and no <EOT>, so the
model is asked exactly what it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

InfillMode = Literal["psm", "spm"]


def infill_layout(
    mode: InfillMode,
    prefix: Sequence[int],
    suffix: Sequence[int],
    middle: Sequence[int],
    markers: Sequence[int],
    *,
    eot: bool = False,
) -> list[int]:
    """Ids of one infilling example; `markers` = (<PRE>, <SUF>, <MID>, <EOT>) ids (an `InfillingTokens.ids`)."""
    pre, suf, mid, end = markers
    tail = [end] if eot else []
    if mode == "psm":
        return [pre, *prefix, suf, *suffix, mid, *middle, *tail]
    if mode == "spm":
        return [pre, suf, *suffix, mid, *prefix, *middle, *tail]
    raise ValueError(f"infilling mode must be 'psm' or 'spm', got {mode!r}")
