"""Prompts for the question and solver models, and parsers for what they answer.

The shape follows Code Llama's self-instruct recipe (Rozière et al. 2023, section 2.5): a numbered
list of interview questions, tests between `[TESTS]` tags as asserts, solutions between
`[PYTHON]` tags. Tags make the answers parseable from any model, local or remote. A local model
whose tokenizer has a chat template is asked in its own template, anything else in Llama 2's
[INST] format; in both the answer is started for the model (the first list items, the opening tag).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from codellama.chat import TEMPLATE, chat_format, prompt_text, turns
from codellama.tokenizer import Tokenizer

DEFAULT_SEED_PROMPT = (
    "Write {count} programming interview questions of easy and medium difficulty. Cover a wide range of "
    "subjects and make every question different from the others. Each question must be solvable by one "
    "self-contained Python function that uses only the standard library."
)

# The answer is started for the model: it continues a numbered list after these examples.
DEFAULT_SEED_EXAMPLES = (
    "Write a function that returns the maximum nesting depth of a list of lists.",
    "Given a list of integers and a number k, rotate the list to the right by k places.",
)

TESTS_PROMPT = (
    "Write {count} unit tests that check the correctness of a Python function solving the problem below. "
    "Put the tests between [TESTS] and [/TESTS]. Each test is one assert statement, preceded on its own "
    'line by the comment "# Test case n:" with n counting from 1.\n'
    "Problem: {question}"
)

SOLUTION_PROMPT = (
    "Write a Python function that solves the problem below. Put the code between [PYTHON] and [/PYTHON]. "
    "The example test shows the function's name and signature.\n"
    "Problem: {question}\n"
    "Test: {example_test}"
)

TESTS_STOP = ("[/TESTS]",)
SOLUTION_STOP = ("[/PYTHON]",)


@dataclass(frozen=True)
class PromptConfig:
    """What the models are asked; part of a run's fingerprint (changing it changes the data)."""

    seed_prompt: str = DEFAULT_SEED_PROMPT
    seed_examples: tuple[str, ...] = DEFAULT_SEED_EXAMPLES
    questions_per_prompt: int = 50
    tests_per_question: int = 5


def format_prompt(messages: list[dict], tokenizer: Tokenizer | None = None) -> str:
    """A dialog ending with a user message as the model's chat text, without BOS (generators add it).

    `tokenizer`: the local model's (its chat template, if any, is used); None: Llama 2's [INST]."""
    pairs, pending = turns(messages)
    if pairs or pending is None:
        raise ValueError("a model prompt here is one user message (with an optional system message)")
    return prompt_text(tokenizer, messages)


def _started(prompt: str, tokenizer: Tokenizer | None, answer_start: str) -> str:
    """The prompt with the answer's first words written: after [/INST] a space, after a template's
    assistant header (which ends the line) nothing."""
    return prompt + (answer_start if chat_format(tokenizer) == TEMPLATE else " " + answer_start)


def question_prompt(cfg: PromptConfig, tokenizer: Tokenizer | None = None) -> str:
    """A request for a list, with the answer's first items already written."""
    request = cfg.seed_prompt.replace("{count}", str(cfg.questions_per_prompt))  # a user's file may hold other braces
    prompt = format_prompt([{"role": "user", "content": request}], tokenizer)
    listed = "".join(f"{i}. {q}\n" for i, q in enumerate(cfg.seed_examples, 1))
    if chat_format(tokenizer) == TEMPLATE:
        return f"{prompt}{listed}{len(cfg.seed_examples) + 1}."
    return f"{prompt}\n{listed}{len(cfg.seed_examples) + 1}."


def unit_tests_prompt(question: str, cfg: PromptConfig, tokenizer: Tokenizer | None = None) -> str:
    content = TESTS_PROMPT.format(count=cfg.tests_per_question, question=question)
    return _started(format_prompt([{"role": "user", "content": content}], tokenizer), tokenizer, "[TESTS]\n")


def solution_prompt(question: str, example_test: str, tokenizer: Tokenizer | None = None) -> str:
    content = SOLUTION_PROMPT.format(question=question, example_test=example_test)
    return _started(format_prompt([{"role": "user", "content": content}], tokenizer), tokenizer, "[PYTHON]\n")


_NUMBERED = re.compile(r"^\s*(\d+)[.)]\s*(.*\S)\s*$")


def parse_questions(completion: str, first_number: int) -> list[str]:
    """Questions of a numbered list that the prompt started at `first_number` ("3." then the text).

    A line without a number continues the previous question; a blank line followed by something
    else than the next number, or a number that breaks the sequence, ends the list.
    """
    text = f"{first_number}.{completion.split('</s>')[0]}"
    questions: list[str] = []
    expected, blank = first_number, False
    for line in text.splitlines():
        m = _NUMBERED.match(line)
        if m and int(m.group(1)) == expected:
            questions.append(m.group(2))
            expected, blank = expected + 1, False
        elif not line.strip():
            blank = True
        elif m or blank or not questions:
            break
        else:
            questions[-1] += " " + line.strip()
    return [q for q in (" ".join(q.split()) for q in questions) if len(q) >= 10]


def parse_tests(completion: str) -> list[str]:
    """The assert statements of a [TESTS] block that are valid Python, in order."""
    body = completion.split("[/TESTS]")[0].split("[TESTS]")[-1]
    tests = []
    for stmt in _top_level_statements(body):
        if isinstance(stmt[0], ast.Assert):
            tests.append(stmt[1])
    return tests


def _top_level_statements(source: str) -> list[tuple[ast.stmt, str]]:
    """Top-level statements with their source; a block that does not parse is read line by line."""
    try:
        tree = ast.parse(source)
        return [(s, ast.get_source_segment(source, s)) for s in tree.body]
    except SyntaxError:
        out = []
        for line in source.splitlines():
            try:
                tree = ast.parse(line.strip())
            except SyntaxError:
                continue
            out += [(s, line.strip()) for s in tree.body]
        return out


_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.S)


def parse_solution(completion: str) -> str | None:
    """The code of a [PYTHON] block (or of a ``` fence), if it is valid Python that defines something."""
    code = completion.split("[/PYTHON]")[0].split("[PYTHON]")[-1]
    if "```" in code:
        m = _FENCE.search(code + ("```" if code.count("```") % 2 else ""))
        code = m.group(1) if m else code
    code = code.strip("\n").rstrip()
    if not code.strip():
        return None
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    if not any(isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for s in tree.body):
        return None
    return code + "\n"


def checked_program(solution: str, tests: list[str]) -> str:
    """The program the sandbox runs: the solution, then every test."""
    return solution.rstrip() + "\n\n\n" + "\n".join(tests) + "\n"
