"""Named configs, the held-out split and row-sized FIM units: fast checks, no model runs."""

import yaml

from codellama.cli import main
from family.config import DEFAULT_CONFIG, load_config, named_configs
from family.split import chunk_rows, is_heldout, row_chunks, split_documents


def test_named_configs_and_default(capsys):
    assert {"tiny", "smollm2"} <= set(named_configs()) and DEFAULT_CONFIG in named_configs()
    tiny, default = load_config("tiny"), load_config("default")
    assert default.to_dict() == load_config(DEFAULT_CONFIG).to_dict()
    assert DEFAULT_CONFIG == "smollm2"  # the main job starts from a real pretrained model
    # tiny is the smoke run: from scratch, no controls, no held-out split
    assert tiny.base.model == "tiny" and not any(vars(tiny.controls).values()) and tiny.data.heldout_fraction == 0
    real = load_config("smollm2")
    assert real.base.model == "smollm2-135m" and real.tokenizer.base is None
    assert (real.data.fim_rate, real.data.spm_rate, real.data.fim_unit, real.data.fim_unit_tokens) == (
        0.9,
        0.5,
        "row",
        256,
    )
    assert real.eval.infilling.limit_for("single-line") == 150 and real.eval.infilling.limit_for("multi-line") == 20
    assert real.controls.no_fim and real.controls.base and real.data.heldout_fraction == 0.05
    assert load_config("smollm2", ["controls.no_fim=false"]).controls.no_fim is False
    assert main(["pipeline", "--show-default-config"]) == 0
    out = capsys.readouterr().out
    assert "smollm2" in out and "tiny" in out and yaml.safe_load(out)["base"]["model"] == default.base.model


def test_bad_config_names_and_values(tmp_path, capsys):
    assert main(["pipeline", "--config", "smollm3", "--dry-run", "--run", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "smollm3" in err and "tiny" in err and "smollm2" in err and len(err.strip().splitlines()) == 1
    for override, words in (
        ("eval.code_loss.models=[code]", "heldout_fraction"),
        ("eval.infilling.modes=[psm,middle]", "eval.infilling.modes"),
        ("data.fim_unit=line", "data.fim_unit"),
        ("data.fim_unit_tokens=256", "data.fim_unit=row"),  # tiny packs whole documents: no unit to size
        ("eval.humaneval.models=[code-fim]", "code-fim"),
        ("eval.batch_size=0", "eval.batch_size"),
        ("eval.infilling.limits={multi_line: 20}", "multi_line"),  # a typo is refused, not ignored
        ("eval.infilling.benchmarks=[single-line,random-span-lite]", "random-span-lite"),
        ("eval.infilling.limits={multi-line: 0}", "eval.infilling.limits"),
    ):
        assert main(["pipeline", "--config", "tiny", "--set", override, "--dry-run"]) == 2, override
        assert words in capsys.readouterr().err


def test_dry_run_shows_the_controls_with_budgets(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["pipeline", "--config", "tiny", "--run", str(run), "--dry-run"]) == 0
    tiny = capsys.readouterr().out
    assert "train-code-nofim" not in tiny and "eval-base" not in tiny and "eval-rope" not in tiny
    on = ["controls.no_fim=true", "controls.base=true", "controls.rope_scaling=true", "controls.chat=true"]
    args = [
        "pipeline",
        "--config",
        "tiny",
        "--run",
        str(run),
        "--dry-run",
        "--set",
        "eval.long_context.ppl_factors=[1,2,4]",
    ]
    assert main(args + [x for o in on for x in ("--set", o)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    code, nofim = lines["train-code"], lines["train-code-nofim"]
    assert code.split(":", 1)[1].replace("the code branch", "") == nofim.split(":", 1)[1].replace(
        "the code recipe at FIM rate 0 (control)", ""
    ), "the control must have train-code's budget"
    assert "tokens=1,228,800" in nofim and "code-nofim=seq_len 256, FIM 0.0" in lines["data"]
    assert "HumanEval" in lines["eval-base"] and "chat-format" in lines["eval-instruct"]
    assert "1024, 2048, 4096]" in lines["eval-rope"]  # + 1x, 2x, 4x the tiny long-context length
    assert not run.exists()


def test_smollm2_dry_run(capsys):
    assert main(["pipeline", "--config", "smollm2", "--dry-run", "--run", "/nonexistent/run"]) == 0
    out = capsys.readouterr().out
    for stage in ("train-code-nofim", "eval-base", "eval-code-nofim", "eval-rope", "report"):
        assert f"  {stage} " in out
    assert (
        "multi-line (<= 20 problems) in PSM+SPM+PREFIX+PSM-LINES+SPM-LINES, middle NLL" in out
        and "held-out code loss" in out
    )
    assert "5% of the files" in out and "[1024, 2048, 4096]" in out


def test_smaller_fim_units_are_planned_and_bounded_by_the_row(capsys):
    args = ["pipeline", "--config", "smollm2", "--dry-run", "--run", "/nonexistent/run", "--set"]
    assert main([*args, "data.fim_unit_tokens=256"]) == 0
    assert "chunks of at most 256 tokens cut at line ends, one FIM example per chunk, packed whole into 1024" in (
        capsys.readouterr().out
    )
    assert main([*args, "data.fim_unit_tokens=2048"]) == 2
    err = capsys.readouterr().err
    assert "fim_unit_tokens 2048 is longer than the code branch's rows (1024 tokens)" in err
    assert main([*args, "data.fim_unit_tokens=32"]) == 2 and ">= 64" in capsys.readouterr().err


def test_heldout_split_is_a_stable_hash_of_the_path():
    rows = [{"path": f"pkg/mod{i}.py", "text": "x = 1\n"} for i in range(2000)]
    train, heldout = split_documents(rows, 0.05)
    assert len(train) + len(heldout) == 2000 and 60 < len(heldout) < 140
    assert {r["path"] for r in heldout} == {r["path"] for r in rows if is_heldout(r["path"], 0.05)}
    # the same file stays held out whatever else is in the corpus, and a larger fraction keeps it held out
    assert split_documents(rows[:100], 0.05)[1] == [r for r in heldout if r in rows[:100]]
    assert all(is_heldout(r["path"], 0.2) for r in heldout)
    assert split_documents(rows, 0.0) == (rows, [])


def test_row_chunks_fit_a_row_and_join_back():
    text = "".join(f"line {i} " + "word " * (i % 7) + "\n" for i in range(300))

    def count(lines):
        return [len(line.split()) + 1 for line in lines]  # a stand-in tokenizer: words + newline

    chunks = row_chunks(text, count, 64)
    assert "".join(chunks) == text and len(chunks) > 5
    assert all(sum(count(c.splitlines(keepends=True))) <= 64 - 16 for c in chunks)
    long_line = "y" * 50 + " z" * 200 + "\n"
    assert row_chunks("a\n" + long_line + "b\n", count, 64) == ["a\n", long_line, "b\n"]
    rows = chunk_rows([{"path": "m.py", "text": text, "language": "python"}], count, 64)
    assert [r["path"] for r in rows[:2]] == ["m.py#0", "m.py#1"] and rows[0]["language"] == "python"


def test_a_config_file_extends_a_built_in_one(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: smollm2\ncontrols: {rope_scaling: false}\n")
    cfg = load_config(path)
    assert cfg.base.model == "smollm2-135m" and cfg.controls.no_fim and not cfg.controls.rope_scaling
    path.write_text("extends: tiny\nseed: 3\n")
    assert load_config(path).to_dict() == {**load_config("tiny").to_dict(), "seed": 3}
    path.write_text("extends: huge\n")
    assert main(["pipeline", "--config", str(path), "--dry-run"]) == 2
    assert "extends 'huge', not a built-in config" in capsys.readouterr().err


def test_per_problem_values_for_paired_intervals():
    from family.stages import _ppl_lengths, _scored, per_problem_nll, per_problem_pass

    records = [
        {"task_id": "b/1", "passed": True},
        {"task_id": "a/0", "passed": False},
        {"task_id": "b/1", "passed": False},
    ]
    assert per_problem_pass(records) == {"a/0": 0.0, "b/1": 0.5}
    nll = [{"task_id": "x", "tokens": 4, "nll": 6.0}, {"task_id": "y", "tokens": 0, "nll": 0.0}]
    assert per_problem_nll(nll) == {"x": [1.5, 4]}  # an empty middle has no NLL per token
    cfg = load_config("tiny", ["eval.long_context.ppl_factors=[1,4]", "eval.long_context.ppl_lengths=[128,1024]"])
    assert _ppl_lengths(cfg) == [128, 1024, 4096]  # tiny long-context rows are 1,024 tokens
    assert _scored("base", cfg.eval.humaneval) and _scored("code-nofim", cfg.eval.infilling)
    assert not _scored("base", load_config("tiny", ["eval.humaneval.models=[python]"]).eval.humaneval)


def test_a_run_started_before_a_new_setting_resumes_while_it_keeps_its_default(tmp_path):
    import json

    import pytest

    from family.cli import _check_same_config

    cfg = load_config("tiny")
    older = cfg.to_dict()
    del older["data"]["fim_unit_tokens"]  # config.json of a run started before the setting existed
    del older["eval"]["infilling"]["nll"]  # ... and one two levels down
    (tmp_path / "config.json").write_text(json.dumps(older))
    _check_same_config(tmp_path, cfg)
    with pytest.raises(ValueError, match=r"different config \(differs in: data\)"):
        _check_same_config(tmp_path, load_config("tiny", ["data.fim_rate=0.5"]))


def test_the_code_documents_are_cut_to_the_fim_unit(tmp_path, stdlib_texts):
    """data.fim_unit_tokens sizes the chunks the code shards get (each joined back is its file)."""
    import json

    from _family_helpers import source_dir

    from family.stages import _write_document_files

    class WordTokenizer:  # a stand-in: one token per word, plus the newline
        def encode_batch(self, lines):
            return [line.split() + ["\n"] for line in lines]

    src = source_dir(tmp_path, stdlib_texts[:6])
    cfg = load_config("tiny", [f"data.sources=[{src}]", "data.fim_unit=row", "data.fim_unit_tokens=100"])
    files = _write_document_files(cfg, WordTokenizer(), tmp_path / "run")["files"]
    chunks = [json.loads(line) for line in open(files["code"])]
    whole = {json.loads(line)["path"]: json.loads(line)["text"] for line in open(files["train"])}
    assert len(chunks) > 2 * len(whole)
    assert all(sum(len(line.split()) + 1 for line in c["text"].splitlines()) <= 100 for c in chunks)
    for path, text in whole.items():
        assert "".join(c["text"] for c in chunks if c["path"].split("#")[0] == path) == text


def test_fim_units_are_cut_from_files_without_near_duplicates(tmp_path, stdlib_texts):
    """A near-copy of a file is dropped before the files are cut into FIM units (the code shards, which
    then skip their own near-dedup of the units, never see it); the long-context files keep both."""
    import json

    from _family_helpers import source_dir

    from family.stages import _data_configs, _write_document_files

    class WordTokenizer:
        def encode_batch(self, lines):
            return [line.split() + ["\n"] for line in lines]

    texts = [*stdlib_texts[:3], stdlib_texts[0].replace("\n", "\n\n", 1)]  # the last: the first with a blank line
    src = source_dir(tmp_path, texts)
    cfg = load_config("tiny", [f"data.sources=[{src}]", "data.fim_unit=row", "data.fim_unit_tokens=100"])
    files = _write_document_files(cfg, WordTokenizer(), tmp_path / "run")["files"]
    chunk_files = {json.loads(line)["path"].split("#")[0] for line in open(files["code"])}
    whole_files = {json.loads(line)["path"] for line in open(files["train"])}
    assert len(whole_files) == 4 and len(chunk_files) == 3 and chunk_files < whole_files
    configs = _data_configs(cfg, tmp_path / "run")
    assert not configs["code"].dedup.near and configs["code"].dedup.exact and configs["long"].dedup.near


def test_a_cpu_without_native_bf16_is_told_up_front(monkeypatch):
    """The recipe's auto precision and eval dtype fall back to fp32 on an AVX2-only CPU (bf16 emulated ~100x
    slower there); the pipeline says so before it starts, and names any setting that still asks for bf16."""
    import torch

    from family import hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config("smollm2")
    monkeypatch.setattr(hardware, "native_bf16", lambda device: True)
    assert hardware.slow_machine_note(cfg, ["auto"]) is None
    monkeypatch.setattr(hardware, "native_bf16", lambda device: False)
    monkeypatch.setattr("codellama.train.precision.native_bf16", lambda device: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    note = hardware.slow_machine_note(cfg, ["auto", "auto"])
    assert "training runs in fp32 and scoring in fp32" in note and "45 minutes" in note
    forced = hardware.slow_machine_note(load_config("smollm2", ["eval.dtype=bfloat16"]), ["auto", "bf16-weights"])
    assert "bf16-weights" in forced and "eval.dtype=bfloat16" in forced and "auto" in forced
