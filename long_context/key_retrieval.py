"""Code Llama's key retrieval task: find one function's return value in a long Python file.

The prompt is real Python (top-level statements of standard-library files, so it parses
and looks like a repository), one key function `def my_function() -> int: ... return V`
placed at a chosen relative position, and a closing `assert my_function() ==` that the
model must complete with V. Lengths are measured with the model's own tokenizer, and a
seed fixes the filler, the key value and hence the whole prompt.
"""

from __future__ import annotations

import ast
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from codellama.data.stdlib import iter_source_texts
from codellama.generation import GenerationRequest, SamplingParams

log = logging.getLogger(__name__)

KEY_NAME = "my_function"
QUESTION = f"\nassert {KEY_NAME}() =="


def key_function(value: int) -> str:
    return (
        f"def {KEY_NAME}() -> int:\n"
        f'    """Note that this function is used at the end of the file."""\n'
        f"    return {value}\n\n"
    )


@dataclass(frozen=True)
class KeyRetrievalPrompt:
    """One benchmark item; `key_offset` is the index of the key function's first token."""

    prompt: str
    answer: int
    context_tokens: int  # requested length
    position: float  # requested relative position of the key in the filler
    seed: int
    prompt_tokens: int  # measured length (with BOS), what the model sees
    key_offset: int
    filler_tokens: int  # prompt tokens that are neither BOS, key nor question

    @property
    def key_position(self) -> float:
        """Where the key sits within the filler: 0 = first line of the file, 1 = just before the assert."""
        return (self.key_offset - 1) / max(1, self.filler_tokens)

    def meta(self) -> dict:
        out = asdict(self)
        del out["prompt"]
        return out


def top_level_units(source: str) -> list[str]:
    """A file cut at its top-level statements: each piece is valid Python on its own."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    starts = sorted(
        {min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) for node in tree.body}
    )
    if not starts:
        return []
    lines = source.splitlines(keepends=True)
    starts[0] = 1  # the module's leading comments belong to its first statement
    bounds = starts + [len(lines) + 1]
    units = []
    for begin, end in zip(bounds, bounds[1:]):
        text = "".join(lines[begin - 1 : end - 1]).strip("\n")
        if text and KEY_NAME not in text:
            units.append(text + "\n\n")
    return units


def in_file_cost(tokenizer, piece: str) -> int:
    """Tokens `piece` costs in the middle of a file, where more code follows it.

    Without the dummy prefix (SentencePiece) and followed by a word: byte-level BPE splits the
    newlines that end a piece differently before a word than at the end of the text.
    """
    return len(tokenizer.encode_infilling(piece + "x")) - len(tokenizer.encode_infilling("x"))


class FillerPool:
    """Filler units with their token counts, parsed and tokenized once per file on demand."""

    def __init__(self, tokenizer, texts: Sequence[str] | None = None):
        if texts is None:
            texts = list(iter_source_texts())
        if not texts:
            raise ValueError("no filler source texts")
        self.tokenizer = tokenizer
        self.texts = texts
        self._units: dict[int, list[tuple[str, int]]] = {}

    def units(self, index: int) -> list[tuple[str, int]]:
        if index not in self._units:
            pieces = top_level_units(self.texts[index])
            counts = [in_file_cost(self.tokenizer, p) for p in pieces]
            self._units[index] = list(zip(pieces, counts))
        return self._units[index]

    def stream(self, rng: random.Random):
        order = list(range(len(self.texts)))
        rng.shuffle(order)
        for index in order:
            yield from self.units(index)


def _fill(stream, budget: int, *, slack: int, max_misses: int = 200) -> tuple[list[str], int]:
    """Greedy: take units in order, skip those that would overflow, stop within `slack` tokens."""
    chosen, used, misses = [], 0, 0
    for text, n in stream:
        if budget - used <= slack or misses >= max_misses:
            break
        if used + n <= budget:
            chosen.append(text)
            used += n
            misses = 0
        else:
            misses += 1
    return chosen, used


def make_prompt(
    tokenizer, context_tokens: int, position: float, seed: int, *, pool: FillerPool | None = None, digits: int = 5
) -> KeyRetrievalPrompt:
    """A prompt of `context_tokens` tokens (within 1%; 8 tokens for short ones) with the key at `position`.

    Position 0 puts the key function first in the file, 1 just before the final assert.
    """
    if not 0.0 <= position <= 1.0:
        raise ValueError(f"key position must be within [0, 1], got {position}")
    pool = pool or FillerPool(tokenizer)
    rng = random.Random(f"key-retrieval/{seed}/{context_tokens}/{position}")
    value = rng.randint(10 ** (digits - 1), 10**digits - 1)
    key = key_function(value)
    bos = len(tokenizer.encode("", bos=True))  # 1, or 0 for a base without BOS
    fixed = bos + in_file_cost(tokenizer, key) + len(tokenizer.encode_infilling(QUESTION))
    filler_budget = context_tokens - fixed
    if filler_budget < 0:
        raise ValueError(f"context of {context_tokens} tokens is too short for the key and the question ({fixed})")
    slack = max(1, int(context_tokens * 0.002))
    stream = pool.stream(rng)
    head, head_used = _fill(stream, round(position * filler_budget), slack=slack)
    tail, _ = _fill(stream, filler_budget - head_used, slack=slack)
    head_text, tail_text = "".join(head), "".join(tail)
    prompt = head_text + key + tail_text + QUESTION
    n_tokens = len(tokenizer.encode(prompt, bos=True))
    key_offset = len(tokenizer.encode(head_text, bos=True)) if head_text else bos
    if abs(n_tokens - context_tokens) > max(8, 0.01 * context_tokens):
        # Only a filler corpus too small for the length gets here; a shorter prompt would mislabel the result.
        raise ValueError(
            f"could only build a {n_tokens}-token prompt for {context_tokens} tokens: the filler sources are too small"
        )
    log.debug("key-retrieval prompt: %d tokens (asked %d), key at token %d", n_tokens, context_tokens, key_offset)
    return KeyRetrievalPrompt(
        prompt, value, context_tokens, position, seed, n_tokens, key_offset, filler_tokens=n_tokens - fixed
    )


_NUMBER = re.compile(r"^\s*\(?\s*([+-]?\s*\d[\d_]*)(?![\w.])")


def extract_value(completion: str) -> int | None:
    """The integer a completion of `assert my_function() ==` starts with, or None.

    Accepts what a model plausibly writes after `==`: spaces, parentheses, a trailing
    comment or newline, digit separators; refuses floats, names and calls.
    """
    match = _NUMBER.match(completion)
    if not match:
        return None
    try:
        return int(match.group(1).replace(" ", ""))
    except ValueError:
        return None


def score(completion: str, answer: int) -> bool:
    return extract_value(completion) == answer


def build_prompts(
    tokenizer,
    lengths: Sequence[int],
    positions: Sequence[float],
    seeds: Sequence[int],
    *,
    pool: FillerPool | None = None,
    digits: int = 5,
) -> list[KeyRetrievalPrompt]:
    pool = pool or FillerPool(tokenizer)
    return [
        make_prompt(tokenizer, n, p, s, pool=pool, digits=digits) for n in lengths for p in positions for s in seeds
    ]


def run_key_retrieval(
    generator, prompts: Sequence[KeyRetrievalPrompt], *, digits: int = 5, progress: bool = True
) -> dict:
    """Greedy-complete every prompt through the shared generation path and score it; the JSON report."""
    from tqdm.auto import tqdm

    params = SamplingParams(max_new_tokens=digits + 6, temperature=0.0, stop=("\n",))
    records = []
    # One prompt per call: long prompts dominate the cost, and the bar then moves per item.
    for item in tqdm(prompts, desc="key retrieval", unit="prompt", disable=not progress):
        [completion] = generator.generate([GenerationRequest(item.prompt, params=params)])
        value = extract_value(completion.text)
        records.append(
            {**item.meta(), "completion": completion.text, "extracted": value, "correct": value == item.answer}
        )
    return summarize(records)


def summarize(records: list[dict]) -> dict:
    """Accuracy per (length, position) cell and overall."""
    cells: dict[str, dict[str, list[bool]]] = {}
    for r in records:
        cells.setdefault(str(r["context_tokens"]), {}).setdefault(f"{r['position']:g}", []).append(r["correct"])
    accuracy = {n: {p: sum(v) / len(v) for p, v in row.items()} for n, row in cells.items()}
    overall = sum(r["correct"] for r in records) / len(records) if records else 0.0
    return {"accuracy": accuracy, "overall": overall, "n": len(records), "items": records}


def plot_key_retrieval(report: dict, path, title: str = "key retrieval") -> None:
    """Accuracy heatmap: context length (rows) by key position (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted(report["accuracy"], key=int)
    positions = sorted({p for row in report["accuracy"].values() for p in row}, key=float)
    grid = [[report["accuracy"][n].get(p, float("nan")) for p in positions] for n in lengths]
    fig, ax = plt.subplots(figsize=(1.2 * len(positions) + 2.5, 0.6 * len(lengths) + 2))
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(positions)), positions)
    ax.set_yticks(range(len(lengths)), [f"{int(n):,}" for n in lengths])
    ax.set_xlabel("relative position of the key function")
    ax.set_ylabel("context length (tokens)")
    ax.set_title(f"{title}: exact match {report['overall']:.1%} (n={report['n']})")
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
