"""The smollm2 config (every control on) at tiny budgets, from a tiny byte-level BPE base (as SmolLM2 ships): the
no-FIM control on train-code's documents and budget, the untouched base, a held-out split, RoPE scaling against
the raised base, chat-format HumanEval, and a report that judges each claim with intervals."""

import json
from pathlib import Path

import pytest
from _family_helpers import write_family_config

from codellama.cli import main
from codellama.data.shards import ShardIndex, TokenShards
from family.claims import NOT_MEASURED, NOT_SUPPORTED, SUPPORTED

pytestmark = pytest.mark.slow  # a whole family run (six models, every score): a few minutes


@pytest.fixture(scope="module")
def controls_config(tmp_path_factory, stdlib_texts, bpe_base):
    # The real recipe's config (FIM units of part of a row, a held-out split, PSM/SPM/prefix with the middle NLL,
    # bf16 long-context scoring, every control on) at tiny budgets, on a tiny BPE base instead of SmolLM2.
    config = {
        "extends": "smollm2",
        "base": {"model": str(bpe_base("chatml"))},
        "data": {"heldout_fraction": 0.15, "fim_unit_tokens": 64},  # two to a 128-token row
        "eval": {
            "humaneval": {"models": ["code", "instruct"], "limit": 3, "max_new_tokens": 16},
            "infilling": {"models": ["code"], "benchmarks": ["single-line"], "limit": 3, "max_new_tokens": 12},
            "long_context": {"ppl_factors": [1, 2], "key_retrieval_lengths": [160]},
            "code_loss": {"seq_len": 128, "max_tokens": 3000},
        },
    }
    return write_family_config(tmp_path_factory.mktemp("family-controls"), stdlib_texts[:60], config)


def test_family_with_controls(controls_config, tmp_path):
    run = tmp_path / "run"
    assert main(["pipeline", "--config", str(controls_config), "--run", str(run)]) == 0
    state = json.loads((run / "state.json").read_text())["finished"]
    results = json.loads((run / "report" / "results.json").read_text())
    models = results["models"]
    assert set(models) == {"base", "code", "code-nofim", "python", "long-context", "instruct"}

    # The no-FIM control: train-code's documents, budget and recipe; only its shards have no FIM.
    data = state["data"]["outputs"]
    code_idx, nofim_idx = ShardIndex.load(data["code"]["path"]), ShardIndex.load(data["code-nofim"]["path"])
    assert code_idx.meta["stats"]["documents"] == nofim_idx.meta["stats"]["documents"]
    assert code_idx.meta["stats"]["fim_fraction"] > 0.5 and nofim_idx.meta["stats"]["fim_fraction"] == 0
    assert models["code-nofim"]["train"]["tokens"] == models["code"]["train"]["tokens"] > 0
    assert models["code-nofim"]["base"] == models["code"]["base"]
    # Row-sized FIM units: every FIM example lies inside one row (its <PRE> ... <EOT> never spans two rows).
    pre, _, mid, eot = state["tokenizer"]["outputs"]["infilling_ids"]
    rows = TokenShards(data["code"]["path"])
    counts = [
        (int((row == pre).sum()), int((row == mid).sum()), int((row == eot).sum()))
        for row in map(rows.__getitem__, range(len(rows)))
    ]
    assert sum(c[0] for c in counts) > len(rows) // 2 and all(p == m == e for p, m, e in counts)

    # The held-out files: seen by no training stage's documents, scored by the code loss of base / no-FIM / FIM.
    files = data["documents"]["files"]
    heldout = {json.loads(line)["path"] for line in Path(files["heldout"]).read_text().splitlines()}
    assert heldout and data["documents"]["documents"]["heldout"] == len(heldout)
    for key in ("train", "code", "python"):
        seen = {json.loads(line)["path"].split("#")[0] for line in Path(files[key]).read_text().splitlines()}
        assert not seen & heldout, key
    for name in ("base", "code-nofim", "code"):
        loss = models[name]["code_loss"]
        assert {r["name"] for r in loss["per_file"]} <= heldout and loss["nll"]["low"] <= loss["nll"]["mean"]
    assert "code_loss" not in models["python"]

    # The base is scored like the code model, with the chat prompt of its chat template.
    assert models["base"]["humaneval"]["prompt"] == "chat" and models["code"]["humaneval"]["prompt"] == "raw"
    assert len(models["base"]["humaneval"]["per_problem"]) == 3
    for name in ("base", "code-nofim", "code"):
        single = models[name]["infilling"]["single-line"]
        assert {"psm", "spm", "prefix"} <= set(single) and len(single["prefix"]["per_problem"]) == 3
        assert set(single["nll"]["per_problem"]) == {"psm", "spm", "prefix"}
    assert set(models["code"]["humaneval_chat"]["per_problem"]) == set(
        models["instruct"]["humaneval_chat"]["per_problem"]
    )

    chat_run = json.loads((run / "eval-instruct" / "humaneval-chat" / "greedy" / "report.json").read_text())["run"]
    assert chat_run["prompt"] == "chat" and chat_run["stops"] == []  # a chat answer is not cut at a "\ndef" line

    # RoPE: the code model untouched and scaled without training, and the raised base, at 1x and 2x the LCFT length.
    rope = results["rope"]
    assert rope["lengths"] == [256, 512] and rope["fine_tune_length"] == 256
    assert list(rope["methods"]) == ["untouched", "linear", "dynamic-ntk", "yarn", "raised-base"]
    assert rope["methods"]["yarn"]["rope_parameters"]["rope_type"] == "yarn"
    assert rope["methods"]["raised-base"]["rope_parameters"]["rope_theta"] == 1_000_000
    assert all(len(m["nll"]) == 2 and len(m["nll"][0]) == 2 for m in rope["methods"].values())

    # The recipe of each trained model, and the config's notes on why.
    recipe = results["recipe"]
    assert recipe["code-nofim"]["fim_rate"] == 0 and recipe["code"]["fim_rate"] == 0.9
    assert recipe["code-nofim"]["tokens"] == recipe["code"]["tokens"] and "base" not in recipe
    assert recipe["long-context"]["rope_base"] == 1_000_000 and results["notes"].startswith("Why this recipe")

    # The report: one section per claim with a table, a plot and a verdict drawn from the numbers.
    report = (run / "report" / "report.md").read_text()
    verdicts = {c["key"]: c["verdict"] for c in results["claims"]}
    assert set(verdicts.values()) <= {SUPPORTED, NOT_SUPPORTED} and NOT_MEASURED not in verdicts.values()
    for claim in results["claims"]:
        assert f"### {claim['title']}" in report and claim["text"] in report and claim["rows"]
    for png in ("infilling.png", "middle_nll.png", "fim_loss_curves.png", "rope_ppl.png", "chat_pass_at_1.png"):
        assert (run / "report" / png).read_bytes()[:4] == b"\x89PNG" and f"({png})" in report
