"""`codellama infill` with a local model, and the commands' bad-input errors."""

from _infill_helpers import EXAMPLES, taught_model_dir

from codellama.cli import main

PREFIX, MIDDLE, SUFFIX = EXAMPLES[0]


def test_infill_at_a_cursor_with_a_local_model(tiny_model_dir, tmp_path, capsys):
    model = taught_model_dir(tiny_model_dir, tmp_path)
    f = tmp_path / "area.py"
    f.write_text(PREFIX + SUFFIX)
    for extra in ([], ["--spm"], ["--syntax-truncate"]):
        assert main(["infill", "--model", str(model), "--file", str(f), "--line", "2", "--col", "5", *extra]) == 0
        assert capsys.readouterr().out == MIDDLE + "\n"
    assert main(["infill", "--model", str(model), "--file", str(f), "--line", "2", "--col", "5", "--show-file"]) == 0
    assert capsys.readouterr().out == PREFIX + MIDDLE + SUFFIX


def test_bad_input_is_one_line_and_exit_2(tiny_model_dir, tmp_path, capsys):
    f = tmp_path / "a.py"
    f.write_text("x = 1\n")
    cases = [
        (
            [
                "infill",
                "--model",
                str(tiny_model_dir),
                "--file",
                str(tmp_path / "nope.py"),
                "--line",
                "1",
                "--col",
                "1",
            ],
            "file not found",
        ),
        (
            ["infill", "--model", str(tiny_model_dir), "--file", str(f), "--line", "7", "--col", "1"],
            "line 7 is outside the file",
        ),
        (
            [
                "infill",
                "--model",
                str(tiny_model_dir),
                "--file",
                str(f),
                "--line",
                "1",
                "--col",
                "1",
                "--temperature",
                "-1",
            ],
            "temperature must be >= 0",
        ),
        (
            ["infill", "--server", "http://127.0.0.1:9", "--file", str(f), "--line", "1", "--col", "1", "--spm"],
            "--spm applies to a local --model",
        ),
        (["serve", "--model", str(tmp_path / "missing")], "model directory not found"),
        (["serve", "--model", str(tiny_model_dir), "--max-batch", "0"], "--max-batch must be >= 1"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("codellama: error: ") and message in err and err.count("\n") == 1
