"""The prefix-only infilling baseline and the NLL of the true middle under PSM / SPM / prefix-only prompts."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from codellama.cli import main
from codellama.generation import Completion
from codellama.io import read_jsonl
from evals.infilling import (
    NLL_FILE,
    BenchmarkConfig,
    InfillingProblem,
    cut_prefix_completion,
    data_path,
    load_problems,
    middle_nll_rows,
    nll_by_problem,
    prefix_prompt_ids,
    run_benchmark,
    score_middle_nll,
    summarize_nll,
)
from evals.intervals import compare
from evals.nll import target_nll

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Two files that share the code before the hole: only the suffix says which middle is right.
TWINS = [
    ("def value():\n", "    return 1\n", "\n\nassert value() == 1\n"),
    ("def value():\n", "    return 2\n", "\n\nassert value() == 2\n"),
]


def _problems(examples) -> list[InfillingProblem]:
    return [InfillingProblem(f"t/{i}", p, s, m, "", "value") for i, (p, m, s) in enumerate(examples)]


def _direct_nll(model, context: list[int], target: list[int]) -> list[float]:
    """The reference: one unbatched forward pass over context + target, log-softmax, the target's entries."""
    ids = torch.tensor([context + target])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return [-logp[len(context) - 1 + j, t].item() for j, t in enumerate(target)]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from codellama.checkpoint import load_model
    from codellama.tokenizer import load_tokenizer

    return load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def suffix_reader(tiny_model_dir):
    """The tiny model trained on TWINS left to right and in PSM/SPM, until its PSM NLL shows it reads the
    suffix (a few hundred steps): left to right, `return 1` and `return 2` stay a coin flip."""
    from codellama.checkpoint import load_model
    from codellama.tokenizer import load_tokenizer

    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    problems = _problems(TWINS)
    rows = []
    for p in problems:
        for mode, (context, target) in middle_nll_rows(tok, p).items():
            tail = tok.encode_infilling(p.suffix) if mode == "prefix" else [tok.eot_id]
            rows.append(context + target + tail)
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.eos_id] * (width - len(r)) for r in rows])
    labels = torch.tensor([[-100] + r[1:] + [-100] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    psm_rows = [middle_nll_rows(tok, p)["psm"] for p in problems]
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for step in range(800):
        model.train()
        opt.zero_grad()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        if step % 25 == 24 and max(sum(x) / len(x) for x in target_nll(model, psm_rows)) < 0.02:
            break
    model.eval()
    return model, tok, problems


def test_prefix_prompts_have_no_infilling_markers_and_all_modes_score_the_same_middle(tiny):
    _, tok = tiny
    markers = {tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id}
    for p in load_problems(data_path("single-line"), limit=20) + load_problems(data_path("multi-line"), limit=5):
        ids = prefix_prompt_ids(tok, p.prompt)
        assert ids[0] == tok.bos_id and not markers & set(ids) and tok.decode(ids) == p.prompt
        rows = middle_nll_rows(tok, p)
        context, target = rows["prefix"]  # prefix + middle as one text, split where the prefix alone differs
        assert context + target == prefix_prompt_ids(tok, p.prompt + p.canonical_solution)
        assert context == ids[: len(context)] and len(context) >= len(ids) - 1
        assert rows["psm"][0] == tok.infilling_prompt(p.prompt, p.suffix)
        assert rows["spm"][0] == tok.infilling_prompt(p.prompt, p.suffix, suffix_first=True)
        assert rows["psm"][1] == rows["spm"][1]
        assert tok.decode_infilling(rows["psm"][1]) == p.canonical_solution


def test_prefix_only_nll_reads_the_middle_as_left_to_right_training_tokenized_it(bpe_base, tmp_path):
    """A byte-level BPE writes a newline and the next line's indentation as one token: the prefix-only row
    scores that token (not a lone newline followed by an indentation token no training text had), and all
    three modes divide by the same count, the middle's FIM tokens, so they compare total nats per middle."""
    from codellama.checkpoint import load_model
    from codellama.tokenizer import load_tokenizer

    out = tmp_path / "extended"
    assert main(["tokenizer", "extend", "--base", str(bpe_base("starcoder")), "--out", str(out)]) == 0
    model, tok = load_model(out), load_tokenizer(out)
    problems = [p for p in load_problems(data_path("single-line"), limit=40) if p.canonical_solution[:1] == " "]
    split_apart = 0
    for p in problems[:10]:
        context, target = middle_nll_rows(tok, p)["prefix"]
        alone = prefix_prompt_ids(tok, p.prompt)
        if len(context) < len(alone):  # the prefix's last token merged with the middle's first
            split_apart += 1
            assert tok.decode(target).startswith("\n") and tok.decode(target).endswith(p.canonical_solution)
    assert split_apart > 0, "no problem showed the newline + indentation merge this test is about"
    run = tmp_path / "nll"
    assert score_middle_nll(model, tok, problems[:3], run) == 9
    records = read_jsonl(run / NLL_FILE)
    for p in problems[:3]:
        mine = [r for r in records if r["task_id"] == p.task_id]
        assert {r["tokens"] for r in mine} == {len(tok.encode_infilling(p.canonical_solution))}
        prefix = next(r for r in mine if r["mode"] == "prefix")
        context, target = middle_nll_rows(tok, p)["prefix"]
        assert prefix["scored"] == len(target)
        assert prefix["nll"] == pytest.approx(sum(_direct_nll(model, context, target)), abs=1e-3)


def test_prefix_nll_records_of_earlier_runs_are_scored_again(tiny, tmp_path):
    """Before the joint tokenization a prefix-only record scored the middle tokenized apart: such records
    are not used, and a rerun replaces them."""
    model, tok = tiny
    problems = load_problems(data_path("single-line"), limit=2)
    out = tmp_path / "run"
    assert score_middle_nll(model, tok, problems, out) == 6
    fresh = nll_by_problem(out, "prefix")
    records = read_jsonl(out / NLL_FILE)
    old = [dict(r, nll=99.0) for r in records if r["mode"] == "prefix"]
    for r in old:
        r.pop("split"), r.pop("scored")
    (out / NLL_FILE).write_text("".join(json.dumps(r) + "\n" for r in records if r["mode"] != "prefix"))
    (out / NLL_FILE).open("a").write("".join(json.dumps(r) + "\n" for r in old))
    assert nll_by_problem(out, "prefix") == {}
    assert score_middle_nll(model, tok, problems, out) == 2
    again = nll_by_problem(out, "prefix")
    assert again.keys() == fresh.keys() and len(fresh) == 2
    assert all(again[t] == pytest.approx(fresh[t], rel=1e-4) for t in fresh)


def test_bpe_tokenizer_json_bases_work_too(bpe_base, tmp_path):
    """A tokenizer.json base (StarCoder-style FIM tokens, no BOS): the same rows, and NLL as a direct pass."""
    from codellama.checkpoint import load_model
    from codellama.tokenizer import load_tokenizer

    out = tmp_path / "extended"
    assert main(["tokenizer", "extend", "--base", str(bpe_base("starcoder")), "--out", str(out)]) == 0
    model, tok = load_model(out), load_tokenizer(out)
    assert tok.backend == "tokenizers" and tok.bos_id is None
    markers = {tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id}
    problems = load_problems(data_path("single-line"), limit=3)
    rows = [r for p in problems for r in middle_nll_rows(tok, p).values()]
    assert not markers & set(middle_nll_rows(tok, problems[0])["prefix"][0])
    for (context, target), nll in zip(rows, target_nll(model, rows)):
        assert nll == pytest.approx(_direct_nll(model, context, target), abs=1e-4)


def test_nll_equals_a_direct_forward_pass_however_it_is_batched(tiny):
    model, tok = tiny
    problems = load_problems(data_path("single-line"), limit=4) + load_problems(data_path("random-span"), limit=2)
    rows = [r for p in problems for r in middle_nll_rows(tok, p).values()]
    assert len({len(c) + len(t) for c, t in rows}) > 3  # rows of different lengths share padded batches
    together = target_nll(model, rows, batch_tokens=100_000)
    one_by_one = target_nll(model, rows, batch_tokens=1)
    for (context, target), a, b in zip(rows, together, one_by_one):
        direct = _direct_nll(model, context, target)
        assert len(a) == len(target)
        assert a == pytest.approx(direct, abs=1e-4) and b == pytest.approx(direct, abs=1e-4)
    with pytest.raises(ValueError, match="no context"):
        target_nll(model, [([], [1, 2])])


def test_a_model_that_reads_the_suffix_has_psm_and_spm_nll_below_prefix_only(suffix_reader, tiny, tmp_path):
    model, tok, problems = suffix_reader
    assert score_middle_nll(model, tok, problems, tmp_path / "reader") == 6
    report = summarize_nll(problems, tmp_path / "reader")
    tokens = len(tok.encode_infilling(TWINS[0][1]))
    prefix = report["modes"]["prefix"]
    # Left to right the twins are a coin flip on one token: ln 2 spread over the middle's tokens.
    assert prefix["mean"] == pytest.approx(math.log(2) / tokens, rel=0.25)
    for mode in ("psm", "spm"):
        assert report["modes"][mode]["mean"] < 0.03 and report["modes"][mode]["problems"] == 2
        gap = report["paired"][f"{mode}-prefix"]
        assert gap["high"] < 0 and gap["low"] <= gap["mean"] <= gap["high"]
    # The untrained model expects nothing: about ln(vocabulary) per token, in every mode.
    score_middle_nll(tiny[0], tok, problems, tmp_path / "random")
    untrained = summarize_nll(problems, tmp_path / "random")["modes"]
    assert all(v["mean"] > 0.7 * math.log(tok.vocab_size) for v in untrained.values())
    # Across runs: the reader's per-problem PSM - prefix gap against the untrained model's.
    gaps = {}
    for run in ("reader", "random"):
        psm, prefix = (nll_by_problem(tmp_path / run, m) for m in ("psm", "prefix"))
        gaps[run] = {t: psm[t][0] - prefix[t][0] for t in psm}
    gap = compare(gaps["reader"], gaps["random"])
    assert gap["mean"] < -0.05 and gap["high"] < 0


def test_nll_records_resume(tiny, tmp_path):
    model, tok = tiny
    problems = load_problems(data_path("single-line"), limit=3)
    out = tmp_path / "run"
    out.mkdir()
    assert score_middle_nll(model, tok, problems, out) == 9
    first = summarize_nll(problems, out)
    assert score_middle_nll(model, tok, problems, out) == 0
    lines = (out / NLL_FILE).read_text().splitlines(keepends=True)
    (out / NLL_FILE).write_text("".join(lines[:-1]))  # killed before the last record was written
    assert score_middle_nll(model, tok, problems, out) == 1
    assert summarize_nll(problems, out) == first
    assert set(first["modes"]) == {"psm", "spm", "prefix"} and first["modes"]["psm"]["problems"] == 3
    assert first["modes"]["psm"]["tokens"] == first["modes"]["prefix"]["tokens"]
    assert set(first["paired"]) == {"psm-prefix", "spm-prefix"}


def test_prefix_completion_is_cut_to_the_hole():
    line = "    if x:\n"
    assert cut_prefix_completion("    if x:\n        y()\n", line) == line  # single-line: the first line
    assert cut_prefix_completion("    if x:", line) == line  # a stop at the newline gets it back
    assert cut_prefix_completion("", line) == "\n"
    two = "    a = 1\n    b = 2\n"
    assert cut_prefix_completion("    a = 1\n    b = 3\n    c = 4\n", two) == "    a = 1\n    b = 3\n"
    assert cut_prefix_completion("    a = 1", two) == "    a = 1\n"  # fewer lines than the hole: what there is
    span = " % 1.0"  # random-span: inside one line, up to the end of that line
    assert cut_prefix_completion(" % 2\n    return", span) == " % 2"
    assert cut_prefix_completion("x\n    y = 2\nz", "x\n    y = 1") == "x\n    y = 2"


class _ScriptedGenerator:
    """A TEST DOUBLE of a local generator: answers a plain prompt with the true middle followed by more code,
    as a left-to-right model keeps writing past the hole. Records the requests it got."""

    def __init__(self, tokenizer, problems, extra="    print('past the hole')\n    return None\n"):
        self.tokenizer, self.extra, self.requests = tokenizer, extra, []
        # asked the prefix without its trailing whitespace, it writes that whitespace back first (a BPE model)
        self.answers = {p.prompt.rstrip(): p.prompt[len(p.prompt.rstrip()) :] + p.canonical_solution for p in problems}

    def generate(self, requests, sinks=None):
        out = []
        for r in requests:
            self.requests.append(r)
            text = self.answers[r.prompt] + self.extra
            for stop in r.params.stop:
                text = text.split(stop)[0] if stop in text else text
            out.append(Completion(text, [1] * len(text), "stop", len(r.prompt_ids)))
        return out


@pytest.mark.parametrize("bench", ["single-line", "multi-line"])
def test_prefix_mode_runs_left_to_right_and_is_judged_on_the_hole(bench, tiny, tmp_path):
    _, tok = tiny
    longest: dict[str, InfillingProblem] = {}  # one hole per prefix (the scripted model sees only the prefix)
    for p in load_problems(data_path(bench), limit=300):
        if p.canonical_solution.count("\n") > longest.get(p.prompt, p).canonical_solution.count("\n"):
            longest[p.prompt] = p
        longest.setdefault(p.prompt, p)
    problems = list(longest.values())[:6]
    data = tmp_path / "six.jsonl"
    data.write_text("".join(json.dumps(dataclasses.asdict(p)) + "\n" for p in problems))
    gen = _ScriptedGenerator(tok, problems)
    config = BenchmarkConfig(benchmark=bench, modes=("prefix",), ks=(1,), model="scripted")
    report = run_benchmark(config, tmp_path / "run", gen, data=data)
    assert report["modes"]["prefix"]["pass@k"] == {"pass@1": 1.0}  # the extra code was cut off
    assert report["modes"]["prefix"]["pass@1_interval"] == [1.0, 1.0]
    markers = {tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id}
    assert all(r.suffix is None and not markers & set(r.prompt_ids) for r in gen.requests)
    # The prefix is sent without its trailing newline (the model writes it back), so no hole stops at the
    # first newline; every completion is cut after the hole's lines.
    truth = {p.task_id: p.canonical_solution for p in problems}
    lines = {p.prompt.rstrip(): p.canonical_solution.count("\n") for p in problems}
    assert all(not r.prompt.endswith("\n") and "\n" not in r.params.stop for r in gen.requests)
    assert all(r.prompt_ids == tuple(prefix_prompt_ids(tok, r.prompt)) for r in gen.requests)
    assert (bench == "multi-line") == any(n > 1 for n in lines.values())
    samples = read_jsonl(tmp_path / "run" / "samples.jsonl")
    assert all(s["mode"] == "prefix" and s["completion"] == truth[s["task_id"]] for s in samples)
    assert all(s["truncated"] and s["uncut"] != s["completion"] for s in samples)
    # Without the cut, the extra lines break the program: the benchmark really judges the cut text.
    wrong = _ScriptedGenerator(tok, problems, extra="    return None\n")
    wrong.answers = {p.prompt.rstrip(): "\n" for p in problems}
    bad = run_benchmark(config, tmp_path / "wrong", wrong, data=data)
    assert bad["modes"]["prefix"]["pass@k"]["pass@1"] < 0.5


class _GoesOnGenerator:
    """A TEST DOUBLE of an infilling model that writes the true middle and then goes on instead of ending it."""

    def __init__(self, problems, extra="    raise SystemExit(3)\n"):
        self.truth = {(p.prompt, p.suffix): p.canonical_solution for p in problems}
        self.extra, self.requests = extra, []

    def generate(self, requests, sinks=None):
        self.requests += requests
        texts = [self.truth[(r.prompt, r.suffix)] + self.extra for r in requests]
        return [Completion(t, [1] * len(t), "length", 10) for t in texts]


def test_lines_modes_judge_infilling_answers_like_the_baseline(tmp_path):
    """psm-lines / spm-lines cut PSM / SPM answers to the hole's lines (no generation of their own): the
    model that goes on past the hole fails as it ended and passes judged like the prefix-only baseline."""
    problems = load_problems(data_path("single-line"), limit=6)
    gen = _GoesOnGenerator(problems)
    config = BenchmarkConfig(modes=("psm", "spm", "psm-lines", "spm-lines"), ks=(1,), limit=6, model="scripted")
    report = run_benchmark(config, tmp_path / "run", gen)
    assert len(gen.requests) == 12  # PSM and SPM only
    assert report["modes"]["psm-lines"]["pass@k"] == {"pass@1": 1.0} == report["modes"]["spm-lines"]["pass@k"]
    assert report["modes"]["psm"]["pass@k"]["pass@1"] < 0.5
    samples = {(r["mode"], r["task_id"]): r for r in read_jsonl(tmp_path / "run" / "samples.jsonl")}
    for p in problems:
        assert samples[("spm-lines", p.task_id)]["completion"] == p.canonical_solution
        assert samples[("spm-lines", p.task_id)]["truncated"]
    with pytest.raises(ValueError, match="psm-lines cut the answers of psm"):
        BenchmarkConfig(modes=("spm", "psm-lines"))


def test_all_modes_with_nll_through_a_real_model_resume_and_extend(tiny_model_dir, tmp_path):
    from _infill_helpers import taught_model_dir

    from codellama.generation import HFGenerator

    gen = HFGenerator.from_pretrained(taught_model_dir(tiny_model_dir, tmp_path), batch_size=8)
    out = tmp_path / "run"
    settings = dict(benchmark="single-line", max_new_tokens=8, limit=3, ks=(1,), model="taught")
    first = run_benchmark(BenchmarkConfig(modes=("psm",), **settings), out, gen)
    assert set(first["modes"]) == {"psm"} and "nll" not in first
    # The same run, now with the prefix baseline, SPM and the NLL: only the missing work is done.
    full = run_benchmark(BenchmarkConfig(modes=("psm", "spm", "prefix"), nll=True, **settings), out, gen)
    assert full["this_run"]["generated"] == 6 and full["this_run"]["nll_scored"] == 9
    assert full["modes"]["psm"] == first["modes"]["psm"]
    for mode in ("psm", "spm", "prefix"):
        low, high = full["modes"][mode]["pass@1_interval"]
        assert low <= full["modes"][mode]["pass@k"]["pass@1"] <= high
        nll = full["nll"]["modes"][mode]
        assert nll["problems"] == 3 and nll["low"] <= nll["mean"] <= nll["high"]
    assert set(full["nll"]["paired"]) == {"psm-prefix", "spm-prefix"}
    for name, gap in full["pass@1_paired"].items():
        mode = name.split("-")[0]
        expected = full["modes"][mode]["pass@k"]["pass@1"] - full["modes"]["prefix"]["pass@k"]["pass@1"]
        assert gap["mean"] == pytest.approx(expected) and gap["problems"] == 3
    assert set(full["pass@1_paired"]) == {"psm-prefix", "spm-prefix"}
    again = run_benchmark(BenchmarkConfig(modes=("psm", "spm", "prefix"), nll=True, **settings), out, gen)
    assert again["this_run"]["generated"] == again["this_run"]["nll_scored"] == again["this_run"]["executed"] == 0
    assert again["nll"] == full["nll"] and again["modes"] == full["modes"]
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="local model"):
        run_benchmark(BenchmarkConfig(modes=("canonical",), nll=True, limit=1), tmp_path / "canon")


def test_cli_errors_are_one_line(tmp_path, capsys):
    url = "http://127.0.0.1:9/v1"
    cases = [
        (["--endpoint", url, "--nll", "--mode", "psm"], "--nll needs a local --model"),
        (["--canonical", "--nll"], "--nll needs a local --model"),
        (["--endpoint", url, "--mode", "all"], "pass --mode psm, spm or prefix"),
        (["--endpoint", url, "--mode", "prefix", "--lines"], "--lines cuts PSM / SPM answers"),
    ]
    for argv, message in cases:
        assert main(["eval", "infilling", *argv, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_cli_help_shows_the_new_modes(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "infilling", "--help"])
    text = capsys.readouterr().out
    assert "--mode all --nll" in text and "prefix" in text


def test_cli_mode_all_with_nll_prints_the_gaps(tiny_model_dir, tmp_path, capsys):
    argv = ["eval", "infilling", "--model", str(tiny_model_dir), "--mode", "all", "--nll", "--limit", "2"]
    assert main([*argv, "--max-tokens", "4", "--k", "1", "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "PREFIX" in out and "PSM-PREFIX" in out and "pass@1 95% interval" in out
    assert "SPM-PREFIX pass@1 +0.0 points" in out
    report = json.loads(Path(tmp_path / "cli" / "report.json").read_text())
    assert set(report["modes"]) == {"psm", "spm", "prefix"} and report["nll"]["modes"]["prefix"]["problems"] == 2


def test_a_base_without_infilling_tokens_gets_the_prefix_baseline_and_its_nll(bpe_base, tmp_path):
    """The "base" control of a FIM study: no <PRE>/<SUF>/<MID> yet, so prefix-only is all it can be asked."""
    from codellama.generation import HFGenerator

    gen = HFGenerator.from_pretrained(bpe_base("chatml"), batch_size=4)
    assert gen.tokenizer.infilling is None
    config = BenchmarkConfig(modes=("prefix",), nll=True, limit=2, max_new_tokens=4, ks=(1,), model="base")
    report = run_benchmark(config, tmp_path / "base", gen)
    assert set(report["modes"]) == {"prefix"} and report["modes"]["prefix"]["samples"] == 2
    assert set(report["nll"]["modes"]) == {"prefix"} and report["nll"]["paired"] == {}
    assert report["nll"]["modes"]["prefix"]["problems"] == 2


def test_sampled_runs_give_each_sample_its_own_seed(tiny_model_dir, tmp_path):
    """pass@k needs k different samples: one seed for all of them made k copies of one sample."""
    from codellama.generation import HFGenerator

    gen = HFGenerator.from_pretrained(tiny_model_dir, batch_size=8)
    config = BenchmarkConfig(modes=("psm", "prefix"), samples=3, temperature=1.0, limit=1, max_new_tokens=6, ks=(1,))
    run_benchmark(config, tmp_path / "sampled", gen)
    samples = read_jsonl(tmp_path / "sampled" / "samples.jsonl")
    for mode in ("psm", "prefix"):
        texts = [s["completion"] for s in samples if s["mode"] == mode]
        assert len(texts) == 3 and len(set(texts)) == 3, texts


def test_prefix_mode_through_an_endpoint(tmp_path, capsys):
    """A served model gets the plain prefix as a completions prompt (no suffix); its answer is cut the same way."""
    from tests._evals_helpers import scripted_completions_server

    problems = load_problems(data_path("single-line"), limit=3)
    answers = {p.prompt.rstrip(): "\n" + p.canonical_solution + "    return 0\n" for p in problems}
    with scripted_completions_server(lambda prompt: answers[prompt]) as (url, requests):
        argv = ["eval", "infilling", "--endpoint", url, "--mode", "prefix", "--limit", "3", "--k", "1"]
        assert main([*argv, "--out", str(tmp_path / "remote")]) == 0
    assert len(requests) == 3 and all("suffix" not in r and r["prompt"] in answers for r in requests)
    assert "PREFIX    pass@1 100.0%" in capsys.readouterr().out
