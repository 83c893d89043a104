"""Held-out code loss: the number equals a direct computation, windows cover every token once, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from codellama.cli import main
from evals.code_loss import CodeLossConfig, code_loss, windows

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SNIPPETS = [
    "def add(a, b):\n    return a + b\n",
    "import os\n\n\ndef home():\n    return os.environ.get('HOME', '/')\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n",
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from codellama.checkpoint import load_model
    from codellama.tokenizer import load_tokenizer

    return load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)


def _direct_sum(model, ids: list[int]) -> float:
    """Summed NLL of ids[1:] from one forward pass over the whole sequence."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    return -sum(logp[j - 1, t].item() for j, t in enumerate(ids) if j > 0)


def test_windows_score_every_token_after_the_first_exactly_once():
    ids = list(range(100, 123))  # 23 tokens
    for context in (2, 5, 8, 23, 64):
        rows = windows(ids, context)
        targets = [t for _, t in rows]
        assert [t for ts in targets for t in ts] == ids[1:]
        assert all(len(c) == 1 and len(c) + len(t) <= context for c, t in rows)
        assert all(c[0] == ids[ids.index(t[0]) - 1] for c, t in rows)  # each window starts where the last ended
    assert windows([7], 8) == [] and windows([], 8) == []
    with pytest.raises(ValueError, match="at least 2"):
        windows(ids, 1)


def test_code_loss_is_the_token_weighted_mean_of_a_direct_forward_pass(tiny):
    model, tok = tiny
    report = code_loss(model, tok, SNIPPETS, names=["a.py", "b.py", "c.py"])
    encoded = [tok.encode(t, bos=True) for t in SNIPPETS]
    total = sum(_direct_sum(model, ids) for ids in encoded)
    tokens = sum(len(ids) - 1 for ids in encoded)
    assert report["tokens"] == tokens and report["files"] == 3
    assert report["nll"]["mean"] == pytest.approx(total / tokens, abs=1e-4)
    assert report["nll"]["low"] <= report["nll"]["mean"] <= report["nll"]["high"]
    assert report["ppl"] == pytest.approx(math.exp(report["nll"]["mean"]), rel=1e-4)
    per_file = {f["name"]: f for f in report["per_file"]}
    assert per_file["b.py"]["tokens"] == len(encoded[1]) - 1
    assert per_file["b.py"]["nll"] == pytest.approx(_direct_sum(model, encoded[1]) / (len(encoded[1]) - 1), abs=1e-4)


def test_short_context_and_a_token_budget(tiny):
    model, tok = tiny
    long = "\n".join(SNIPPETS * 4)
    n = len(tok.encode(long, bos=True)) - 1
    windowed = code_loss(model, tok, [long], config=CodeLossConfig(context=16))
    assert windowed["tokens"] == n and windowed["context"] == 16
    # Each window is scored as its own sequence of at most 16 tokens.
    by_window = sum(_direct_sum(model, c + t) for c, t in windows(tok.encode(long, bos=True), 16))
    assert windowed["nll"]["mean"] == pytest.approx(by_window / n, abs=1e-4)
    assert windowed["nll"]["mean"] != pytest.approx(code_loss(model, tok, [long])["nll"]["mean"], abs=1e-4)
    capped = code_loss(model, tok, SNIPPETS * 3, config=CodeLossConfig(max_tokens=40))
    assert capped["tokens"] == 40
    with pytest.raises(ValueError, match="nothing to score"):
        code_loss(model, tok, ["", ""])


def test_a_model_trained_on_the_files_has_lower_loss_on_them(tiny_model_dir):
    """What the number is for: it drops on code the model has learned (and is about ln(vocab) before)."""
    from codellama.checkpoint import load_model
    from codellama.tokenizer import load_tokenizer

    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    before = code_loss(model, tok, SNIPPETS)["nll"]
    assert before["mean"] > 0.7 * math.log(tok.vocab_size)
    rows = [tok.encode(t, bos=True) for t in SNIPPETS]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.eos_id] * (width - len(r)) for r in rows])
    labels = torch.tensor([r + [-100] * (width - len(r)) for r in rows])
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(30):
        opt.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
    after = code_loss(model, tok, SNIPPETS)["nll"]
    assert after["high"] < before["low"] and after["mean"] < before["mean"] / 2


def test_bpe_tokenizer_json_base(bpe_base):
    from codellama.checkpoint import load_model
    from codellama.tokenizer import load_tokenizer

    base = bpe_base("chatml")
    model, tok = load_model(base), load_tokenizer(base)
    report = code_loss(model, tok, SNIPPETS)
    ids = [tok.encode(t, bos=True) for t in SNIPPETS]
    assert report["tokens"] == sum(len(i) - 1 for i in ids)
    assert report["nll"]["mean"] == pytest.approx(sum(_direct_sum(model, i) for i in ids) / report["tokens"], abs=1e-4)


def test_cli_writes_the_report_and_leaves_the_sources_alone(tiny_model_dir, tmp_path, capsys):
    src = tmp_path / "heldout"
    (src / "pkg").mkdir(parents=True)
    for i, text in enumerate(SNIPPETS):
        (src / ("pkg" if i else "") / f"m{i}.py").write_text(text)
    (src / "notes.txt").write_text("not scored: not a .py file in a directory\n")
    extra = tmp_path / "extra.pyi"
    extra.write_text("def f(x: int) -> int: ...\n")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in [*src.rglob("*"), extra] if p.is_file()}
    out = tmp_path / "loss"
    argv = ["eval", "code-loss", "--model", str(tiny_model_dir), "--source", str(src), str(extra), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("code loss ") and "over 4 files" in printed[0]
    report = json.loads((out / "report.json").read_text())
    assert report["files"] == 4 and {f["name"] for f in report["per_file"]} >= {str(extra)}
    assert f"{report['nll']['mean']:.4f}" in printed[0]
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extra.pyi", "heldout", "loss"]  # no temp leftovers


def test_cli_bad_input_is_one_line_and_exit_2(tiny_model_dir, tmp_path, capsys):
    src = tmp_path / "a.py"
    src.write_text(SNIPPETS[0])
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    model = str(tiny_model_dir)
    cases = [
        (["--model", model, "--source", str(tmp_path / "nope.py")], "source not found"),
        (["--model", model, "--source", str(empty)], "no .py files"),
        (["--model", str(tmp_path / "no-model"), "--source", str(src)], "model directory not found"),
        (["--model", model, "--source", str(src), "--out", str(tmp_path / "taken")], "already exists"),
    ]
    for argv, message in cases:
        if "--out" not in argv:
            argv = [*argv, "--out", str(tmp_path / "out")]
        assert main(["eval", "code-loss", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as bad:
        main(["eval", "code-loss", "--model", model, "--source", str(src), "--max-tokens", "lots", "--out", "x"])
    assert bad.value.code == 2
