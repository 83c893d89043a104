"""Prompts and the parsers that turn model answers into questions, tests and solutions."""

from _instruct_helpers import QUESTIONS

from codellama.instruct.dedup import find_duplicates
from codellama.instruct.prompts import (
    PromptConfig,
    checked_program,
    parse_questions,
    parse_solution,
    parse_tests,
    question_prompt,
    solution_prompt,
    unit_tests_prompt,
)


def test_prompts_are_llama2_chat_turns_with_the_answer_started():
    cfg = PromptConfig(questions_per_prompt=7)
    q = question_prompt(cfg)
    assert q.startswith("[INST] Write 7 programming interview questions") and "<s>" not in q
    assert q.endswith("[/INST]\n1. " + cfg.seed_examples[0] + "\n2. " + cfg.seed_examples[1] + "\n3.")
    t = unit_tests_prompt("Reverse a list.", cfg)
    assert t.startswith("[INST] Write 5 unit tests") and t.endswith("Problem: Reverse a list. [/INST] [TESTS]\n")
    s = solution_prompt("Reverse a list.", "assert rev([1, 2]) == [2, 1]")
    assert "Test: assert rev([1, 2]) == [2, 1] [/INST] [PYTHON]\n" in s


def test_questions_continue_the_numbered_list_and_stop_where_it_ends():
    completion = (
        " Write a function that merges two sorted lists\n   into one sorted list.\n"
        "4. Given a string, return its longest palindromic substring.\n"
        "5. ok\n"  # too short to be a question
        "7. Numbering broke here, so this is not taken.\n"
    )
    assert parse_questions(completion, 3) == [
        "Write a function that merges two sorted lists into one sorted list.",
        "Given a string, return its longest palindromic substring.",
    ]
    trailing = " Count the words in a sentence.\n\nI hope these questions help!</s>"
    assert parse_questions(trailing, 3) == ["Count the words in a sentence."]
    assert parse_questions("", 3) == []


def test_tests_are_the_valid_asserts_of_the_block():
    block = "# Test case 1:\nassert f(1) == 2\n# Test case 2:\nassert f(\n    2) == 3\nprint('hi')\n[/TESTS] more"
    assert parse_tests(block) == ["assert f(1) == 2", "assert f(\n    2) == 3"]
    broken = "# Test case 1:\nassert f(1) == 2\nassert f(2 == \nassert f(3) == 4\n"
    assert parse_tests(broken) == ["assert f(1) == 2", "assert f(3) == 4"]
    assert parse_tests("no tests here") == []


def test_solution_is_valid_python_that_defines_something():
    assert parse_solution("def f(x):\n    return x + 1\n[/PYTHON]\nExplanation") == "def f(x):\n    return x + 1\n"
    assert parse_solution("Here:\n```python\ndef g():\n    pass\n```\nDone") == "def g():\n    pass\n"
    assert parse_solution("def f(x):\n    return (x\n") is None  # does not parse
    assert parse_solution("print('no function')\n") is None
    assert parse_solution("   \n") is None
    program = checked_program("def f(x):\n    return x\n", ["assert f(1) == 1", "assert f(2) == 2"])
    assert program == "def f(x):\n    return x\n\n\nassert f(1) == 1\nassert f(2) == 2\n"


def test_exact_and_near_duplicate_questions_are_found():
    dups = find_duplicates(QUESTIONS)
    assert dups == {1: "exact", 2: "near"}
    assert find_duplicates(["Sort a list of numbers.", "Reverse a linked list in place."]) == {}
    assert find_duplicates([]) == {}


def test_rehearsal_mix_is_a_data_pipeline_mixture_of_code_and_language():
    from importlib import resources

    from codellama.data.mix import load_mix

    spec = load_mix(resources.files("codellama.instruct") / "rehearsal.yaml")
    assert spec.shares == {"code": 0.75, "natural-language": 0.25}  # 6% : 2% of the training samples
    assert [s.spec.language for s in spec.sources] == [None, "text"]
