"""HumanEval asked as a chat: what is taken from an answer, and where generating an answer may stop."""

from __future__ import annotations

import pytest

from evals.humaneval_chat import answer_end, completion_from_answer
from evals.problems import Problem

PROBLEM = Problem(
    task_id="HumanEval/x",
    prompt='def add(a, b):\n    """Add two numbers."""\n',
    canonical_solution="    return a + b\n",
    test="def check(candidate):\n    assert candidate(1, 2) == 3\n",
    entry_point="add",
)

FENCED = (
    "Sure! Here is the function:\n\n```python\nimport math\n\n\ndef add(a, b):\n"
    '    """Add two numbers."""\n    return a + b\n\n\ndef helper():\n    return 1\n```\n\n'
    "This adds `a` and `b`. Example:\n```python\nprint(add(1, 2))\n```\nHope it helps!"
)
BARE = (
    "from typing import List\n\n\ndef add(a, b):\n    # the sum\n    return a + b\n\n\n"
    "# tests\nprint(add(1, 2))\nif __name__ == '__main__':\n    add(3, 4)\n"
)


def test_the_completion_is_the_body_plus_imports_and_helpers():
    completion = completion_from_answer(PROBLEM, FENCED)
    assert completion == "    return a + b\n\n\nimport math\n\ndef helper():\n    return 1\n"
    assert completion_from_answer(PROBLEM, "```python\n    return a + b\n```") == "    return a + b\n"


def test_a_fenced_answer_ends_when_its_first_block_closes_and_takes_the_same_code():
    end = answer_end(FENCED, "add")
    assert FENCED[:end].endswith("return 1\n```") and "This adds" not in FENCED[:end]
    # every earlier point: generation goes on (the block is still open, or not yet started)
    assert all(answer_end(FENCED[:n], "add") is None for n in range(end))
    assert completion_from_answer(PROBLEM, FENCED[:end]) == completion_from_answer(PROBLEM, FENCED)


@pytest.mark.parametrize(
    "answer",
    [
        FENCED,
        "```\ndef add(a, b):\n    return b + a\n```\ntrailing",  # a fence without a language
        "```bash\nls\n```\n```python\ndef add(a, b):\n    return a + b\n```\nmore",  # a shell block first
        "text ```inline``` then\n```py\ndef add(a, b):\n    return a - b\n```",
    ],
)
def test_stopping_where_answer_end_says_never_changes_the_completion(answer):
    """Generated token by token, an answer stops at the first prefix whose `answer_end` is not None; with
    a fence, the completion taken from what was kept equals the one from the whole answer."""
    for n in range(len(answer) + 1):
        end = answer_end(answer[:n], "add")
        if end is not None:
            kept = answer[:n][:end]
            break
    else:
        kept = answer
    assert completion_from_answer(PROBLEM, kept) == completion_from_answer(PROBLEM, answer)


def test_bare_code_ends_at_the_first_stop_line_after_the_functions_def():
    end = answer_end(BARE, "add")
    assert BARE[:end] == "from typing import List\n\n\ndef add(a, b):\n    # the sum\n    return a + b\n\n"
    assert completion_from_answer(PROBLEM, BARE[:end]) == "    return a + b\n\n\nfrom typing import List\n"
    # before the function's def, a top-level def or comment is not yet a reason to stop
    assert answer_end("# a helper first\ndef helper():\n    pass\n\ndef ad", "add") is None
    assert answer_end("def added(x):\n    pass\n\nprint(1)", "add") is None  # another function's name
