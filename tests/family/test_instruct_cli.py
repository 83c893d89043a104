"""`codellama instruct-data generate` end to end through an OpenAI-compatible endpoint (a scripted test double)."""

import json
import time

from _instruct_helpers import PASSING, QUESTIONS, SCRIPT, Script, scripted_server

from codellama.cli import main
from codellama.io import read_jsonl


def test_generate_through_an_endpoint_keeps_exactly_the_passing_questions(tmp_path, capsys):
    script = Script()
    out = tmp_path / "data"
    with scripted_server(script) as url:
        start = time.monotonic()
        args = [
            "instruct-data",
            "generate",
            "--question-model",
            url,
            "--solver-model",
            url,
            "--questions",
            str(len(QUESTIONS)),
            "--solutions-per-question",
            "3",
            "--out",
            str(out),
            "--timeout",
            "1.0",
            "--workers",
            "2",
            "--system-prompt",
            "Be brief.",
        ]
        assert main(args) == 0
        elapsed = time.monotonic() - start
        printed = capsys.readouterr().out
        rows = read_jsonl(out / "dataset.jsonl")
        assert [r["question"] for r in rows] == [SCRIPT[name][0] for name in PASSING]
        assert all(r["messages"][0] == {"role": "system", "content": "Be brief."} for r in rows)
        assert elapsed < 60  # a loop and a fork bomb among the solutions did not stall it
        assert script.calls == {"questions": 1, "tests": 7, "solution": 18}

        for line in (
            "questions generated              9",
            "kept after dedup                 7      77.8%",
            "with tests                       6      85.7%",
            "with a passing solution          3      50.0%",
        ):
            assert line in printed
        assert "sandbox: 18 programs, 7 passed (38.9%)" in printed and "timeout 6" in printed
        assert json.loads((out / "summary.json").read_text())["dataset_examples"] == 3

        # Rerunning the finished run changes nothing and asks the models nothing.
        before = (out / "dataset.jsonl").read_bytes()
        assert main(args) == 0
        assert script.calls == {"questions": 1, "tests": 7, "solution": 18}
        assert (out / "dataset.jsonl").read_bytes() == before


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert (
        main(
            [
                "instruct-data",
                "generate",
                "--question-model",
                str(tmp_path / "missing"),
                "--solver-model",
                str(tmp_path / "missing"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "neither a checkpoint directory nor an http(s) URL" in capsys.readouterr().err
    assert (
        main(
            [
                "instruct-data",
                "generate",
                "--question-model",
                "http://127.0.0.1:9/v1",
                "--solver-model",
                "http://127.0.0.1:9/v1",
                "--questions",
                "0",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "questions must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_question_model_in_process_and_solver_behind_an_endpoint(tiny_model_dir, tmp_path, capsys):
    """Backends mix: a local checkpoint (random tiny model: gibberish questions) asks, the endpoint solves."""
    script = Script()
    out = tmp_path / "mixed"
    with scripted_server(script) as url:
        assert (
            main(
                [
                    "instruct-data",
                    "generate",
                    "--question-model",
                    str(tiny_model_dir),
                    "--solver-model",
                    url,
                    "--questions",
                    "1",
                    "--questions-per-prompt",
                    "1",
                    "--question-tokens",
                    "16",
                    "--temperature",
                    "0",
                    "--out",
                    str(out),
                    "--workers",
                    "1",
                ]
            )
            == 0
        )
    kept = read_jsonl(out / "dedup.jsonl")
    assert read_jsonl(out / "questions.jsonl") and kept
    assert script.calls == {"tests": len(kept)}  # the endpoint only got the solver's requests
    assert read_jsonl(out / "dataset.jsonl") == []  # gibberish gets no tests from the script: nothing to keep
    assert "with tests                       0" in capsys.readouterr().out
