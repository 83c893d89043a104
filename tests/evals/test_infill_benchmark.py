"""HumanEval infilling: the packaged data + the evals sandbox score reference middles 100%, runs resume."""

import gzip
import json

import pytest
from _infill_helpers import taught_model_dir

from codellama.cli import main
from codellama.io import read_jsonl
from evals.infilling import BENCHMARKS, BenchmarkConfig, build_program, data_path, load_problems, run_benchmark

STRIDE = {"single-line": 100, "multi-line": 500, "random-span": 150, "random-span-light": 16}


@pytest.fixture(scope="module")
def spread_subset(tmp_path_factory):
    """About 11 problems from each of the four benchmarks, spread over the files, as one --data file."""
    rows = []
    for name, stride in STRIDE.items():
        with gzip.open(data_path(name), "rt") as f:
            rows += [line for i, line in enumerate(f) if i % stride == 0]
    path = tmp_path_factory.mktemp("data") / "subset.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(rows)
    return path, len(rows)


def test_packaged_files_are_complete():
    sizes = {name: len(load_problems(data_path(name))) for name in BENCHMARKS}
    assert sizes == {"single-line": 1033, "multi-line": 5815, "random-span": 1640, "random-span-light": 164}
    p = load_problems(data_path("single-line"), limit=1)[0]
    program = build_program(p, p.canonical_solution)
    assert program.startswith(p.prompt + p.canonical_solution + p.suffix + "\n")
    assert program.rstrip().endswith(f"check({p.entry_point})")


def test_canonical_solutions_pass_and_wrong_ones_fail(spread_subset, tmp_path):
    path, n = spread_subset
    config = BenchmarkConfig(modes=("canonical",), ks=(1,))
    report = run_benchmark(config, tmp_path / "canon", data=path)
    summary = report["modes"]["canonical"]
    assert (
        summary["samples"] == n > 40
        and summary["pass@k"] == {"pass@1": 1.0}
        and summary["failure_kinds"] == {"passed": n}
    )
    assert (tmp_path / "canon" / "report.png").stat().st_size > 1000
    # The same programs with the hole left empty must fail: the tests really exercise the middle.
    emptied = tmp_path / "emptied.jsonl"
    with gzip.open(path, "rt") as f, open(emptied, "w") as out:
        for line in f:
            row = json.loads(line)
            out.write(json.dumps(dict(row, canonical_solution="")) + "\n")
    report = run_benchmark(config, tmp_path / "empty", data=emptied)
    assert report["modes"]["canonical"]["pass@k"]["pass@1"] < 0.2


def test_a_limited_run_spreads_its_problems_over_the_functions():
    """150 single-line problems reach 108 of the 164 functions by default, not the first 150's 28; a larger
    limit keeps the problems of a smaller one (a continued run reuses its samples)."""

    def functions(problems):
        return {p.task_id.split("/")[2] for p in problems}

    spread = load_problems(data_path("single-line"), limit=150)
    first = load_problems(data_path("single-line"), limit=150, pick="first")
    everything = load_problems(data_path("single-line"))
    assert len(spread) == len(first) == 150 and len(set(p.task_id for p in spread)) == 150
    assert len(functions(first)) == 28 and len(functions(spread)) == 108
    at = [everything.index(p) for p in spread]
    assert at[0] == 0 and at == sorted(at) and max(b - a for a, b in zip(at, at[1:])) <= 1033 // 128 + 1
    assert set(load_problems(data_path("single-line"), limit=149)) < set(spread)
    assert set(load_problems(data_path("single-line"), limit=1000)) > set(spread)
    assert load_problems(data_path("multi-line"), limit=5000) != load_problems(data_path("multi-line"))[:5000]
    with pytest.raises(ValueError, match="pick must be one of spread, first"):
        load_problems(data_path("single-line"), limit=3, pick="random")


@pytest.mark.slow
def test_model_run_is_resumable_in_psm_and_spm(tiny_model_dir, tmp_path):
    from codellama.generation import HFGenerator

    gen = HFGenerator.from_pretrained(taught_model_dir(tiny_model_dir, tmp_path), batch_size=8)
    out = tmp_path / "run"
    config = BenchmarkConfig(
        benchmark="random-span-light", max_new_tokens=8, limit=3, pick="first", ks=(1,), model="taught"
    )
    first = run_benchmark(config, out, gen)
    assert first["this_run"] == {**first["this_run"], "generated": 6, "executed": 6}
    assert set(first["modes"]) == {"psm", "spm"} and all(m["samples"] == 3 for m in first["modes"].values())
    samples = read_jsonl(out / "samples.jsonl")
    assert {(s["mode"], s["sample"]) for s in samples} == {("psm", 0), ("spm", 0)}
    # Interrupted after generating, with one execution lost: only the missing work is redone.
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:-1]))
    again = run_benchmark(config, out, gen)
    assert again["this_run"]["generated"] == 0 and again["this_run"]["executed"] == 1
    assert again["modes"] == first["modes"]
    # More problems: only the new ones are generated.
    more = run_benchmark(
        BenchmarkConfig(
            benchmark="random-span-light", max_new_tokens=8, limit=5, pick="first", ks=(1,), model="taught"
        ),
        out,
        gen,
    )
    assert more["this_run"]["generated"] == 4 and more["modes"]["psm"]["samples"] == 5
    with pytest.raises(FileExistsError, match="different settings"):
        run_benchmark(
            BenchmarkConfig(benchmark="random-span-light", max_new_tokens=9, limit=5, model="taught"), out, gen
        )


def test_cli(tmp_path, capsys):
    assert (
        main(
            [
                "eval",
                "infilling",
                "--benchmark",
                "multi-line",
                "--canonical",
                "--limit",
                "4",
                "--k",
                "1",
                "--out",
                str(tmp_path / "cli"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "multi-line" in out and "pass@1 100.0%" in out
    report = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert report["modes"]["canonical"]["samples"] == 4
    with pytest.raises(SystemExit) as bad_k:  # argparse's usage error, as for every command's bad option
        main(["eval", "infilling", "--canonical", "--out", str(tmp_path / "x"), "--k", "1,x"])
    assert bad_k.value.code == 2
    assert main(["eval", "infilling", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "y")]) == 2
    assert (
        main(["eval", "infilling", "--canonical", "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "z")])
        == 2
    )
    err = capsys.readouterr().err
    assert "--k takes comma-separated integers" in err and "model directory not found" in err
    assert "benchmark file not found" in err
