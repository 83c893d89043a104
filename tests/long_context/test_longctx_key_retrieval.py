"""Key retrieval: prompt length and key position, determinism, the scorer, the run and the CLI."""

from __future__ import annotations

import ast
import json

import pytest

from codellama.cli import main
from codellama.generation import Completion
from long_context.key_retrieval import (
    KEY_NAME,
    FillerPool,
    build_prompts,
    extract_value,
    make_prompt,
    run_key_retrieval,
    score,
)


@pytest.fixture(scope="module")
def pool(tiny_tokenizer, stdlib_texts):
    return FillerPool(tiny_tokenizer, stdlib_texts)


@pytest.mark.parametrize("length", [300, 2048, 8192, 16384])
@pytest.mark.parametrize("position", [0.0, 0.3, 1.0])
def test_prompt_has_the_requested_length_and_key_position(tiny_tokenizer, pool, length, position):
    item = make_prompt(tiny_tokenizer, length, position, seed=1, pool=pool)
    ids = tiny_tokenizer.encode(item.prompt, bos=True)
    assert len(ids) == item.prompt_tokens
    assert abs(item.prompt_tokens - length) <= 0.01 * length
    # The key function starts at key_offset, at the requested fraction of the filler (+-1% of the prompt).
    assert tiny_tokenizer.decode(ids[item.key_offset :]).startswith(f"def {KEY_NAME}() -> int:")
    assert abs(item.key_offset - 1 - position * item.filler_tokens) <= 0.01 * length
    assert item.prompt.count(f"def {KEY_NAME}(") == 1
    assert item.prompt.endswith(f"assert {KEY_NAME}() ==")
    # A long Python file: it parses once the model supplies the value.
    ast.parse(item.prompt + f" {item.answer}\n")


def test_llama2_tokenizer_lengths(llama2_tokenizer_path, stdlib_texts):
    from codellama.tokenizer import CodeLlamaTokenizer

    tokenizer = CodeLlamaTokenizer.extend_llama(llama2_tokenizer_path)
    item = make_prompt(tokenizer, 8192, 0.5, seed=0, pool=FillerPool(tokenizer, stdlib_texts))
    assert abs(len(tokenizer.encode(item.prompt, bos=True)) - 8192) <= 82


def test_prompts_are_deterministic_per_seed(tiny_tokenizer, stdlib_texts, pool):
    first = make_prompt(tiny_tokenizer, 1024, 0.5, seed=7, pool=pool)
    again = make_prompt(tiny_tokenizer, 1024, 0.5, seed=7, pool=FillerPool(tiny_tokenizer, stdlib_texts))
    other = make_prompt(tiny_tokenizer, 1024, 0.5, seed=8, pool=pool)
    assert first == again
    assert other.prompt != first.prompt and other.answer != first.answer
    assert 10_000 <= first.answer <= 99_999  # 5 digits by default
    assert str(first.answer) in first.prompt


def test_too_short_or_bad_position_is_refused(tiny_tokenizer, pool):
    with pytest.raises(ValueError, match="too short"):
        make_prompt(tiny_tokenizer, 20, 0.5, seed=0, pool=pool)
    with pytest.raises(ValueError, match="within"):
        make_prompt(tiny_tokenizer, 1000, 1.5, seed=0, pool=pool)
    with pytest.raises(ValueError, match="too small"):
        make_prompt(tiny_tokenizer, 50_000, 0.5, seed=0, pool=FillerPool(tiny_tokenizer, ["x = 1\n", "y = 2\n"]))


@pytest.mark.parametrize(
    "completion,value",
    [
        (" 42", 42),
        ("42", 42),
        (" 42\n", 42),
        ("  42  # the answer", 42),
        (" (42)", 42),
        (" 42)", 42),
        (" -7", -7),
        (" 12_345", 12345),
        (" 42\n\ndef foo():", 42),
        ("\t 9", 9),
        (" 42, 'msg'", 42),
        (" 42.5", None),
        (" 42abc", None),
        (" my_function()", None),
        (" x", None),
        ("", None),
        (" None", None),
        (" 0x2A", None),
    ],
)
def test_scorer_extracts_the_value(completion, value):
    assert extract_value(completion) == value
    assert score(completion, 42) == (value == 42)


class _Oracle:
    """A generator that reads the key from the prompt, right or off by one: checks the accounting."""

    def __init__(self, wrong_when):
        self.wrong_when = wrong_when
        self.prompts = []

    def generate(self, requests, *, on_text=None, is_cancelled=None):
        out = []
        for r in requests:
            self.prompts.append(r)
            value = int(r.prompt.split(f"def {KEY_NAME}")[1].split("return ")[1].split("\n")[0])
            value += 1 if self.wrong_when(r.prompt) else 0
            out.append(Completion(f" {value}", [], "stop", 0))
        return out


def test_run_scores_each_cell(tiny_tokenizer, pool):
    prompts = build_prompts(tiny_tokenizer, [256, 512], [0.0, 1.0], range(2), pool=pool)
    assert len(prompts) == 8
    late = {p.prompt for p in prompts if p.position == 1.0}
    oracle = _Oracle(wrong_when=lambda prompt: prompt in late)
    report = run_key_retrieval(oracle, prompts, progress=False)
    assert report["accuracy"] == {"256": {"0": 1.0, "1": 0.0}, "512": {"0": 1.0, "1": 0.0}}
    assert report["overall"] == 0.5 and report["n"] == 8
    # Greedy, a few tokens, stopping at the end of the line.
    params = oracle.prompts[0].params
    assert params.temperature == 0 and params.max_new_tokens <= 16 and "\n" in params.stop


def test_hf_generator_sees_the_requested_length(tiny_model_dir, tiny_tokenizer, pool):
    """Through the shared generation path, the model gets exactly the measured prompt."""
    from codellama.checkpoint import load_model
    from codellama.generation import HFGenerator

    prompts = build_prompts(tiny_tokenizer, [400], [0.5], [0], pool=pool)
    generator = HFGenerator(load_model(tiny_model_dir), tiny_tokenizer, batch_size=1)
    seen = []

    class Recording:
        def generate(self, requests, **kwargs):
            completions = generator.generate(requests, **kwargs)
            seen.extend(c.prompt_tokens for c in completions)
            return completions

    report = run_key_retrieval(Recording(), prompts, progress=False)
    assert seen == [prompts[0].prompt_tokens]
    item = report["items"][0]
    assert item["extracted"] == extract_value(item["completion"])
    assert item["correct"] == (item["extracted"] == item["answer"])


def test_key_retrieval_cli(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "kr"
    # 768 tokens: past the tiny model's 512-token context, which the benchmark must allow.
    assert (
        main(
            [
                "eval",
                "key-retrieval",
                "--model",
                str(tiny_model_dir),
                "--lengths",
                "256,768",
                "--positions",
                "0.5",
                "--digits",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "key_retrieval.json").read_text())
    assert report["n"] == 2 and set(report["accuracy"]) == {"256", "768"}
    assert [item["prompt_tokens"] for item in report["items"]] == pytest.approx([256, 768], rel=0.01)
    assert all(100 <= item["answer"] <= 999 for item in report["items"])
    assert (out / "key_retrieval.png").read_bytes()[:4] == b"\x89PNG"
    assert "exact match" in capsys.readouterr().out
    assert main(["eval", "key-retrieval", "--model", str(tiny_model_dir), "--lengths", "256", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse rejects a position outside [0, 1]
        main(
            ["eval", "key-retrieval", "--model", str(tiny_model_dir), "--positions", "2", "--out", str(tmp_path / "x")]
        )
    assert exit_info.value.code == 2
    assert main(["eval", "key-retrieval", "--endpoint", "http://localhost:1/v1", "--out", str(tmp_path / "y")]) == 2
    assert "--tokenizer" in capsys.readouterr().err
