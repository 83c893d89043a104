"""TEST DOUBLES for the instruct-data tests: a scripted "model" that returns fixed completions.

`respond(prompt, seed)` is the script: it recognises which stage asks (questions, tests,
solution) and which question, and answers from the tables below. `ScriptedGenerator` serves it
in-process (Generator protocol); `scripted_server()` serves it as an OpenAI-compatible
/v1/completions endpoint on 127.0.0.1 (FastAPI + uvicorn, ephemeral port). No model is involved.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter

from codellama.generation import Completion, truncate_at_stop
from codellama.instruct.pipeline import request_seed

# function name -> (question, tests, solutions in sample order). None = the tests are unparseable.
SCRIPT = {
    "add": (
        "Write a function add(a, b) that returns the sum of two integers a and b.",
        ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"],
        [
            "def add(a, b):\n    return a - b\n",  # wrong
            "def add(a, b):\n    return a + b\n",  # passes: the kept one
            "def add(a, b):\n    return b + a\n",
        ],
    ),
    "reverse_words": (
        "Write a function reverse_words(s) that reverses the order of the words in a sentence.",
        ["assert reverse_words('a b c') == 'c b a'", "assert reverse_words('') == ''"],
        ["def reverse_words(s):\n    return ' '.join(reversed(s.split()))\n"] * 3,
    ),
    "is_prime": (
        "Write a function is_prime(n) that tells whether an integer n is a prime number.",
        ["assert is_prime(7)", "assert not is_prime(9)"],
        [
            "def is_prime(n):\n    return n % 2 == 1\n",  # fails on 9
            "def is_prime(n):\n    return True\n",
            "def is_prime(n):\n    raise NotImplementedError\n",
        ],
    ),
    "count_vowels": (
        "Write a function count_vowels(s) that counts the vowels in a string.",
        ["assert count_vowels('banana') == 3"],
        ["def count_vowels(s):\n    while True:\n        pass\n"] * 3,
    ),  # hangs
    "factorial": (
        "Write a function factorial(n) that returns the factorial of a non-negative integer n.",
        ["assert factorial(5) == 120"],
        [
            "import os\n\ndef factorial(n):\n    while True:\n        try:\n            os.fork()\n"
            "        except OSError:\n            pass\n"
        ]
        * 3,
    ),  # fork bomb
    "max_of": (
        "Write a function max_of(xs) that returns the largest element of a non-empty list.",
        ["assert max_of([1, 5, 2]) == 5", "assert max_of([-3]) == -3"],
        [
            "import sys\n\ndef max_of(xs):\n    return 0\n\nsys.exit(0)\n",  # exits before the tests: no proof
            "def max_of(xs):\n    return max(xs)\n",
            "def max_of(xs):\n    return sorted(xs)[-1]\n",
        ],
    ),
    "draw_cat": ("Write a function draw_cat() that prints an ASCII-art picture of a cat.", None, []),
}
EXACT_DUP = "write a function add(a,b) that returns the sum of two integers a and b"
NEAR_DUP = "Write a function add(a, b) that returns the sum of two integers a and b in Python."
QUESTIONS = [
    SCRIPT["add"][0],
    EXACT_DUP,
    NEAR_DUP,
    SCRIPT["reverse_words"][0],
    SCRIPT["is_prime"][0],
    SCRIPT["count_vowels"][0],
    SCRIPT["factorial"][0],
    SCRIPT["draw_cat"][0],
    SCRIPT["max_of"][0],
]
# With 3 solutions per question, these get a passing solution (name -> index of the first that passes).
PASSING = {"add": 1, "reverse_words": 0, "max_of": 1}
UNIQUE = [n for n in SCRIPT]  # after dedup, in order


def _seed_table(base_seed: int, n_questions: int, n_solutions: int) -> dict[int, int]:
    """seed -> sample index, as the pipeline derives seeds (the script answers sample k with solution k)."""
    return {request_seed(base_seed, "s", f"q{i:06d}", k): k for i in range(n_questions) for k in range(n_solutions)}


class Script:
    def __init__(self, base_seed: int = 0, n_solutions: int = 3):
        self.seeds = _seed_table(base_seed, len(QUESTIONS), n_solutions)
        self.calls: Counter = Counter()
        self.lock = threading.Lock()

    def respond(self, prompt: str, seed: int | None) -> str:
        kind = (
            "questions"
            if "interview questions" in prompt
            else "tests"
            if "[TESTS]" in prompt
            else "solution"
            if "[PYTHON]" in prompt
            else "unknown"
        )
        with self.lock:
            self.calls[kind] += 1
        if kind == "questions":  # the prompt ends inside the list ("... 3."): continue it
            start = int(prompt.rstrip()[:-1].rsplit("\n", 1)[-1])
            return (
                "".join(f"{'' if i == 0 else f'{start + i}.'} {q}\n" for i, q in enumerate(QUESTIONS))
                + "\nThese questions cover many subjects.</s>"
            )
        name = next((n for n in SCRIPT if f"function {n}(" in prompt.split("Problem:")[-1]), None)
        if name is None:
            return "I do not know."
        _, tests, solutions = SCRIPT[name]
        if kind == "tests":
            if tests is None:
                return "Here are some tests: draw it and look at it.\n[/TESTS]"
            return "".join(f"# Test case {i}:\n{t}\n" for i, t in enumerate(tests, 1)) + "[/TESTS]\nDone."
        k = self.seeds.get(seed, 0)
        return solutions[k % len(solutions)] + "[/PYTHON]\nThis solution works."


class ScriptedGenerator:
    """The script as an in-process Generator; `fail_after` raises KeyboardInterrupt after that many calls."""

    def __init__(self, script: Script, fail_after: int | None = None):
        self.script, self.fail_after, self.batches = script, fail_after, 0

    def generate(self, requests, *, on_text=None, is_cancelled=None):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt("scripted interruption")
        self.batches += 1
        out = []
        for r in requests:
            text, hit = truncate_at_stop(self.script.respond(r.prompt, r.params.seed), r.params.stop)
            out.append(Completion(text, [], "stop" if hit else "length", 0))
        return out


@contextlib.contextmanager
def scripted_server(script: Script):
    """The script behind an OpenAI-compatible completions endpoint; yields its base URL (…/v1)."""
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI(title="scripted completions (test double)")

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "scripted", "object": "model", "created": 0, "owned_by": "test"}]}

    @app.post("/v1/completions")
    def completions(body: dict):
        stop = body.get("stop") or []
        text, hit = truncate_at_stop(
            script.respond(body["prompt"], body.get("seed")), [stop] if isinstance(stop, str) else stop
        )
        return {
            "id": "cmpl-scripted",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model", "scripted"),
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the scripted server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
