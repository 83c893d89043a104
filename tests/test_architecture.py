"""The dependency rule of ARCHITECTURE.md, checked on the source: imports point one way, down the layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from codellama.cli import COMMANDS, CommandTree, build_parser

REPO = Path(__file__).resolve().parents[1]

# Lower number = lower layer. A package may import its own modules and any lower layer, never a
# sibling or anything above it (imports inside functions count too: they only hide the arrow).
LAYERS = {"codellama": 0, "infilling": 1, "long_context": 1, "evals": 2, "family": 3}


def violations(package: str, source: str, filename: str = "<source>") -> list[str]:
    """Each import in `source` (a module of `package`) that breaks the rule, as 'file:line: a -> b'."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            targets = [node.module]
        else:
            continue
        for target in targets:
            top = target.split(".")[0]
            if top in LAYERS and top != package and LAYERS[top] >= LAYERS[package]:
                found.append(f"{filename}:{node.lineno}: {package} -> {target}")
    return found


def test_imports_point_down_the_layers():
    found = []
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            found += violations(package, path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    assert found == [], "imports against the layering (see ARCHITECTURE.md):\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("package", "source"),
    [
        ("codellama", "from infilling.inference import infill\n"),  # the core reaching up
        ("codellama", "def f():\n    from long_context.cli import register\n"),  # hidden in a function
        ("infilling", "import long_context.cli\n"),  # a sibling
        ("evals", "from family.config import load_config\n"),  # the top layer
    ],
)
def test_a_back_import_is_caught(package, source):
    assert violations(package, source) != []


def test_downward_imports_are_allowed():
    assert violations("evals", "from codellama.io import read_jsonl\nimport infilling.inference\n") == []
    assert violations("family", "from evals.run import run_humaneval\n") == []


def test_every_command_in_the_table_registers_and_has_examples():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"tokenizer", "model", "convert", "data", "train", "rope", "serve", "infill", "eval", "pipeline"} <= set(
        commands
    )
    evals = commands["eval"]._subparsers._group_actions[0].choices
    assert {"humaneval", "score", "infilling", "key-retrieval", "long-ppl"} <= set(evals)
    leaves = [p for name, p in commands.items() if p._subparsers is None]
    for group in (p for p in commands.values() if p._subparsers is not None):
        leaves += list(group._subparsers._group_actions[0].choices.values())
    for leaf in leaves:
        assert leaf.epilog and "codellama" in leaf.epilog, f"{leaf.prog} --help has no examples"


def test_a_broken_registration_fails_loudly(monkeypatch):
    import argparse

    monkeypatch.setattr("codellama.cli.COMMANDS", (*COMMANDS, "codellama.no_such_module:register"))
    with pytest.raises(ModuleNotFoundError):
        build_parser()

    tree = CommandTree(argparse.ArgumentParser())
    tree.command("twice", help="x")
    with pytest.raises(argparse.ArgumentError):
        tree.command("twice", help="x")  # two registrations of one name are a bug, not a silent override
