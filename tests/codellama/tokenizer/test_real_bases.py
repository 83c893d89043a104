"""Real Llama-family bases: a byte-level BPE `tokenizer.json` and a tied-embedding Llama through every command.

The tokenizers are trained here with the `tokenizers` library on a little stdlib code, in two variants
(_bases_helpers.BPE_VARIANTS): "starcoder" has StarCoder's FIM tokens (reused by `tokenizer extend`), "chatml"
has none (extend adds four special tokens) and a ChatML chat template, like SmolLM2. Nothing is downloaded.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _bases_helpers import write_tied_llama
from _family_helpers import source_dir
from _infill_helpers import EXAMPLES, taught_model_dir

from codellama.chat import encode_dialog, prompt_text, prompt_tokens
from codellama.cli import main
from codellama.extend import grow_embeddings
from codellama.tokenizer import HFTokenizer, load_tokenizer

TINY = ["max_steps=2", "batch_tokens=256", "micro_batch_size=2", "seq_len=128", "checkpoint_every=0"]
DIALOG = [
    {"role": "system", "content": "Answer with code."},
    {"role": "user", "content": "Add 1 and 2."},
    {"role": "assistant", "content": "def add():\n    return 1 + 2"},
    {"role": "user", "content": "And 3?"},
    {"role": "assistant", "content": "3"},
]
LITERALS = ["<PRE>", "<SUF>", "<MID>", "<EOT>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<|endoftext|>"]
LITERALS += ["<|im_start|>", "<|im_end|>", "▁<PRE>", "x<PRE>y", "s = '<fim_prefix>' + '<|endoftext|>'\n"]


@pytest.mark.parametrize("variant", ["starcoder", "chatml"])
def test_extend_reuses_fim_tokens_or_adds_special_ones(variant, bpe_base, extended_bpe, stdlib_texts, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, out = bpe_base(variant), extended_bpe(variant)
    before, tok = load_tokenizer(base), load_tokenizer(out)
    assert before.infilling is None and before.bos_id is None and tok.backend == "tokenizers"
    with pytest.raises(KeyError, match="tokenizer extend"):
        _ = before.prefix_id
    record = json.loads((out / "infilling_tokens.json").read_text())
    n = before.vocab_size
    if variant == "starcoder":  # trained specials: <|endoftext|> 0, <fim_prefix> 1, <fim_middle> 2, <fim_suffix> 3
        assert record["tokens"] == {
            "prefix": "<fim_prefix>",
            "suffix": "<fim_suffix>",
            "middle": "<fim_middle>",
            "eot": "<|endoftext|>",
        }
        assert [record[f"{r}_id"] for r in ("prefix", "suffix", "middle", "eot")] == [1, 3, 2, 0]
        assert tok.vocab_size == n
    else:
        assert record["tokens"] == {"prefix": "<PRE>", "suffix": "<SUF>", "middle": "<MID>", "eot": "<EOT>"}
        assert [record[f"{r}_id"] for r in ("prefix", "suffix", "middle", "eot")] == [n, n + 1, n + 2, n + 3]
        assert tok.vocab_size == n + 4 and tok.eos_id == before.vocab["<|im_end|>"]

    # transformers opens the result: same ids for code and for the markers, embeddings still tied.
    hf = AutoTokenizer.from_pretrained(out)
    text = stdlib_texts[3][:2000]
    assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
    assert hf.convert_tokens_to_ids(list(tok.infilling.tokens)) == list(tok.infilling.ids)
    model, original = AutoModelForCausalLM.from_pretrained(out), AutoModelForCausalLM.from_pretrained(base)
    assert model.config.vocab_size == tok.vocab_size and model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    old, new = original.model.embed_tokens.weight, model.model.embed_tokens.weight
    torch.testing.assert_close(new[:n], old)
    if variant == "chatml":  # new rows start from the rows of their words (EOT: end of text's), all distinct
        torch.testing.assert_close(new[n:], described_rows(old, tok))
        assert torch.cdist(new[n:], new[n:]).add(torch.eye(4)).min() > 0
    ids = torch.tensor([tok.encode(text[:300])])
    with torch.no_grad():  # the extended model scores the old vocabulary exactly as before
        torch.testing.assert_close(model(ids).logits[..., :n], original(ids).logits)


def described_rows(old: torch.Tensor, tok) -> torch.Tensor:
    """The rows `<PRE>`, `<SUF>`, `<MID>`, `<EOT>` should start from: their words' mean rows, EOS's row."""
    words = [old[tok.encode(w)].mean(0) for w in ("prefix", "suffix", "middle")]
    return torch.stack([*words, old[tok.eos_id]])


@pytest.mark.parametrize("tied,padding", [(True, 8), (False, 0)])
def test_new_rows_start_described_padded_or_grown(tied, padding, bpe_base):
    """An embedding padded past the tokenizer keeps its size (the new ids' rows are reset: the infilling
    tokens' from known rows, the rest to the mean); an untied output layer grows with the input embedding."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(bpe_base("chatml"))
    ext, how = tok.with_infilling_tokens()
    assert how == "added four special tokens"
    n = tok.vocab_size
    config = LlamaConfig(
        vocab_size=n + padding,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        tie_word_embeddings=tied,
    )
    model = LlamaForCausalLM(config)
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    grow_embeddings(model, ext, n)
    rows = max(n + padding, n + 4)
    for weight, before in (
        (model.get_input_embeddings().weight, before_in),
        (model.get_output_embeddings().weight, before_out),
    ):
        assert weight.shape[0] == rows
        torch.testing.assert_close(weight[:n], before[:n])
        torch.testing.assert_close(weight[n : n + 4], described_rows(before[:n], ext))
        torch.testing.assert_close(weight[n + 4 :], before[n + 4 : rows])
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied


@pytest.mark.parametrize("variant", ["starcoder", "chatml"])
def test_markers_are_single_ids_that_no_text_produces(variant, extended_bpe, stdlib_texts):
    out = extended_bpe(variant)
    tok = load_tokenizer(out)
    markers = tok.infilling
    for text, i in zip(markers.tokens, markers.ids):
        assert tok.encode(text, special=True) == [i]  # one id where a template means the token
    forbidden = set(markers.ids) | {tok.eos_id}
    for text in [*LITERALS, "".join(LITERALS)]:
        for ids in (tok.encode(text), tok.encode_infilling(text)):
            assert not forbidden & set(ids) and tok.decode(ids) == text, text
    for text, ids in zip(stdlib_texts[::4], tok.encode_batch(stdlib_texts[::4])):  # every file: the slow test below
        assert not forbidden & set(ids) and tok.decode(ids) == text  # and byte-exact
    # Why no text anywhere can: the markers are special added tokens, and no BPE merge builds their text.
    spec = json.loads((out / "tokenizer.json").read_text())
    merged = {"".join(m.split(" ") if isinstance(m, str) else m) for m in spec["model"]["merges"]}
    assert not merged & set(markers.tokens)
    special = {t["content"] for t in spec["added_tokens"] if t["special"]}
    assert set(markers.tokens) <= special


@pytest.mark.slow
def test_no_stdlib_file_produces_a_marker(extended_bpe):
    from codellama.data.stdlib import iter_source_texts

    texts = list(iter_source_texts())
    assert len(texts) > 1000
    for variant in ("starcoder", "chatml"):
        tok = load_tokenizer(extended_bpe(variant))
        forbidden = set(tok.infilling.ids) | {tok.eos_id}
        hits = [i for i, ids in enumerate(tok.encode_batch(texts, num_threads=-1)) if forbidden & set(ids)]
        assert hits == [], [texts[i][:60] for i in hits[:3]]


def test_layout_and_files_round_trip(extended_bpe, tmp_path, stdlib_texts):
    tok = load_tokenizer(extended_bpe("chatml"))
    infill = tok.infilling
    pre, suf = "def f(x):\n    ", "\n    return y\n"
    # added tokens on this BPE leave the prefix's trailing whitespace and the suffix's leading one to the middle
    kept, after = pre.rstrip(), suf[len(tok.infilling_tail(suf)) :]
    assert after == " return y\n"
    psm = tok.infilling_prompt(pre, suf)
    assert psm == [infill.prefix_id, *tok.encode(kept), infill.suffix_id, *tok.encode(after), infill.middle_id]
    assert tok.render(psm) == f"<PRE>{kept}<SUF>{after}<MID>"  # no BOS: this base has none
    spm = tok.infilling_prompt(pre, suf, suffix_first=True)
    assert spm == [infill.prefix_id, infill.suffix_id, *tok.encode(after), infill.middle_id, *tok.encode(kept)]
    copy = load_tokenizer(tok.save(tmp_path / "copy"))
    assert copy.fingerprint() == tok.fingerprint() and copy.infilling == infill
    clone = pickle.loads(pickle.dumps(tok))  # data workers get the tokenizer this way
    assert clone.fingerprint() == tok.fingerprint() and clone.encode(stdlib_texts[0]) == tok.encode(stdlib_texts[0])
    assert tok.fingerprint() != load_tokenizer(extended_bpe("starcoder")).fingerprint()
    # Generation ends at EOS (<|im_end|>), <EOT> and the base's document end <|endoftext|>.
    assert tok.end_ids == {tok.vocab["<|im_end|>"], infill.eot_id, tok.vocab["<|endoftext|>"]}


def test_sentencepiece_converted_tokenizer_json_keeps_the_no_dummy_prefix_rule(
    tiny_tokenizer, tiny_tokenizer_dir, stdlib_texts
):
    """A Llama tokenizer.json (Metaspace, as TinyLlama ships it) encodes suffixes and middles like SentencePiece
    without its dummy prefix: the HF backend uses a twin without the prepended "▁" and the decoder's Strip."""
    hf = HFTokenizer.load(tiny_tokenizer_dir / "tokenizer.json")
    sp = tiny_tokenizer
    assert (hf.bos_id, hf.eos_id, hf.infilling) == (sp.bos_id, sp.eos_id, sp.infilling)
    for text in [*stdlib_texts[:10], "x", " x", "  two spaces", "\n    return y\n", "tab\tand", "émoji 🐍"]:
        assert hf.encode_infilling(text) == sp.encode_infilling(text)
        assert hf.decode_infilling(sp.encode_infilling(text)) == text
        assert hf.decode(sp.encode(text)) == text
    for text in stdlib_texts[:10]:  # (leading spaces aside, where transformers' conversion differs)
        assert hf.encode(text) == sp.encode(text)
    assert hf.infilling_prompt("def f(", "):\n  pass") == sp.infilling_prompt("def f(", "):\n  pass")


def test_chat_template_masks_exactly_the_assistant_turns(extended_bpe, tmp_path):
    from codellama.data.shards import TokenShards

    tok = load_tokenizer(extended_bpe("chatml"))
    ids, mask = encode_dialog(tok, DIALOG)
    assert ids == tok.encode(tok.render_chat(DIALOG), special=True) and len(mask) == len(ids)
    runs, run = [], []
    for i, m in zip(ids, mask):
        if m:
            run.append(i)
        elif run:
            runs, run = runs + [run], []
    runs += [run] if run else []
    assert [tok.render(r) for r in runs] == ["def add():\n    return 1 + 2<|im_end|>\n", "3<|im_end|>\n"]
    prompt = prompt_tokens(tok, DIALOG[:2])
    assert tok.render(prompt).endswith("<|im_start|>user\nAdd 1 and 2.<|im_end|>\n<|im_start|>assistant\n")
    assert prompt == ids[: len(prompt)]
    # `data prepare-chat` packs with the template and this mask.
    chats, shards = tmp_path / "chats.jsonl", tmp_path / "chat-shards"
    chats.write_text(json.dumps({"messages": DIALOG}) + "\n")
    argv = ["data", "prepare-chat", "--input", str(chats), "--tokenizer", str(extended_bpe("chatml"))]
    assert main([*argv, "--seq-len", "256", "--out", str(shards)]) == 0
    packed = TokenShards(shards)
    assert packed.index.meta["template"] == "chat-template" and packed.index.meta["answer_tokens"] == sum(mask)
    assert packed[0][: len(ids)].tolist() == ids and packed.loss_mask(0)[: len(ids)].tolist() == mask
    # A tokenizer without a chat template is prompted in Llama 2's [INST] format.
    plain = load_tokenizer(extended_bpe("starcoder"))
    assert plain.chat_template is None and prompt_text(plain, DIALOG[:2]).startswith("[INST] <<SYS>>")


def test_extend_a_sentencepiece_checkpoint(llama2_tokenizer_path, tmp_path):
    """A Llama 2 checkpoint (tokenizer.model, 32,000 rows) gets Code Llama's 16 pieces and rows."""
    base = write_tied_llama(tmp_path / "llama2", 32000, eos_id=2)
    shutil.copy(llama2_tokenizer_path, base / "tokenizer.model")
    assert main(["tokenizer", "extend", "--base", str(base), "--out", str(tmp_path / "out")]) == 0
    tok = load_tokenizer(tmp_path / "out")
    assert tok.backend == "sentencepiece" and tok.infilling.ids == (32007, 32008, 32009, 32010)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 32016
    assert tok.end_ids == {2, 32010}


def test_bad_tokenizer_inputs_are_one_line_errors(bpe_base, extended_bpe, tmp_path, capsys):
    def fails(argv, *needles):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and all(n in err for n in needles), err

    empty = tmp_path / "empty"
    empty.mkdir()
    fails(["data", "prepare", "--tokenizer", str(empty), "--out", str(tmp_path / "d")], str(empty), "neither")
    fails(
        ["data", "prepare", "--tokenizer", str(bpe_base("chatml")), "--out", str(tmp_path / "d")],
        "no infilling tokens",
        "codellama tokenizer extend",
    )
    fails(["tokenizer", "extend", "--base", str(empty), "--out", str(tmp_path / "e")], "neither")
    small = tmp_path / "small"
    shutil.copytree(extended_bpe("chatml"), small)
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "vocab_size": 1000}))
    fails(["model", "info", str(small)], str(small / "config.json"), "smaller than its tokenizer")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        load_tokenizer(broken)
    wrong = tmp_path / "wrong"
    shutil.copytree(extended_bpe("chatml"), wrong)
    record = json.loads((wrong / "infilling_tokens.json").read_text())
    (wrong / "infilling_tokens.json").write_text(json.dumps({**record, "prefix_id": 5}))
    with pytest.raises(ValueError, match="infilling_tokens.json: prefix_id 5"):
        HFTokenizer.load(wrong)


# -- every command on the extended chatml base ------------------------------------------------------------------
@pytest.fixture(scope="module")
def shards(extended_bpe, stdlib_texts, tmp_path_factory):
    root = tmp_path_factory.mktemp("bpe-data")
    src = source_dir(root, stdlib_texts[:30])
    out = root / "shards"
    argv = ["data", "prepare", "--source", str(src), "--tokenizer", str(extended_bpe("chatml")), "--out", str(out)]
    assert main([*argv, "--seq-len", "128", "--num-proc", "1", "--max-documents", "20"]) == 0
    return out


def test_data_prepare_and_inspect(shards, extended_bpe, capsys):
    from codellama.data.fim import parse_fim_tokens
    from codellama.data.shards import TokenShards

    tok = load_tokenizer(extended_bpe("chatml"))
    data = TokenShards(shards)
    assert data.index.dtype == np.dtype("<u2") and data.vocab_size == tok.vocab_size
    meta = data.index.meta["tokenizer"]
    assert meta["sha256"] == tok.fingerprint() and meta["backend"] == "tokenizers" and meta["bos_id"] is None
    stream = np.concatenate([data[i] for i in range(len(data))]).tolist()
    docs, start = [], 0  # no BOS: documents end with EOS
    for k, t in enumerate(stream):
        if t == tok.eos_id:
            docs.append(stream[start : k + 1])
            start = k + 1
    modes = {parse_fim_tokens(d, tok).mode for d in docs[1:]}  # the first may be cut by the packing
    assert {"psm", "spm"} <= modes
    assert main(["data", "inspect", str(shards), "--index", "0", "1"]) == 0
    assert "<PRE>" in capsys.readouterr().out


@pytest.fixture(scope="module")
def trained(shards, extended_bpe, tmp_path_factory):
    """code -> python / long-context / instruct, two steps each, through `codellama train`."""
    root = tmp_path_factory.mktemp("bpe-train")
    base = extended_bpe("chatml")
    chats = root / "chats.jsonl"
    chats.write_text("\n".join(json.dumps({"messages": DIALOG}) for _ in range(4)) + "\n")
    runs = {}
    for branch, start, data in [
        ("code", base, shards),
        ("python", None, shards),
        ("long-context", None, shards),
        ("instruct", None, chats),
    ]:
        start = start or runs["code"]
        sets = [x for s in TINY for x in ("--set", s)]
        argv = ["train", branch, "--base", str(start), "--data", str(data), "--out", str(root / branch)]
        assert main([*argv, *sets, "--no-progress"]) == 0, branch
        runs[branch] = root / branch / "final"
    return runs


def test_every_branch_trains_and_keeps_the_tokenizer(trained, extended_bpe):
    tok = load_tokenizer(extended_bpe("chatml"))
    for branch, final in trained.items():
        assert load_tokenizer(final).fingerprint() == tok.fingerprint(), branch
        assert (final / "infilling_tokens.json").is_file() and (final / "tokenizer_config.json").is_file()
    packed = Path(yaml.safe_load((trained["instruct"].parent / "config.yaml").read_text())["data"])
    shards = json.loads((packed / "index.json").read_text())
    assert shards["meta"]["template"] == "chat-template"


def test_humaneval_raw_and_chat_prompts(trained, tmp_path):
    model = str(trained["instruct"])
    for style in ("raw", "chat"):
        out = tmp_path / f"he-{style}"
        argv = ["eval", "humaneval", "--model", model, "--limit", "2", "--max-new-tokens", "8", "--k", "1"]
        assert main([*argv, "--prompt", style, "--out", str(out)]) == 0
        report = json.loads((out / "report.json").read_text())
        assert report["problems"] == 2 and report["run"]["prompt"] == style
    chat = [json.loads(line) for line in (tmp_path / "he-chat" / "samples.jsonl").read_text().splitlines()]
    assert all("answer" in s for s in chat)


def test_infilling_and_long_context_evals(trained, tmp_path, capsys):
    model = str(trained["code"])
    argv = ["eval", "infilling", "--model", model, "--limit", "2", "--max-tokens", "8", "--k", "1"]
    assert main([*argv, "--out", str(tmp_path / "inf")]) == 0
    assert set(json.loads((tmp_path / "inf" / "report.json").read_text())["modes"]) == {"psm", "spm"}
    argv = ["eval", "long-ppl", "--model", model, "--lengths", "64,128", "--samples", "1"]
    assert main([*argv, "--out", str(tmp_path / "ppl")]) == 0
    argv = ["eval", "key-retrieval", "--model", model, "--lengths", "200", "--positions", "0.5"]
    assert main([*argv, "--out", str(tmp_path / "kr")]) == 0
    assert json.loads((tmp_path / "kr" / "key_retrieval.json").read_text())["n"] == 1
    assert main(["rope", "set", "--base", "100000", model, str(tmp_path / "rope")]) == 0
    assert load_tokenizer(tmp_path / "rope").fingerprint() == load_tokenizer(model).fingerprint()
    capsys.readouterr()
    assert main(["model", "info", model]) == 0
    info = capsys.readouterr().out
    assert "tokenizer.json (tokenizers)" in info and "<PRE>=" in info and "chat-template" in info


def test_serve_and_infill_on_the_bpe_model(extended_bpe, tmp_path, capsys):
    import httpx
    import openai

    from infilling.server import ServerConfig, build_app, serve_in_thread

    prefix, middle, suffix = EXAMPLES[0]
    taught = taught_model_dir(extended_bpe("chatml"), tmp_path, steps=60)
    app = build_app(taught, ServerConfig(model_name="bpe", max_tokens=64))
    with serve_in_thread(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        out = client.completions.create(model="bpe", prompt=prefix, suffix=suffix, max_tokens=40, temperature=0)
        assert out.choices[0].text == middle and out.choices[0].finish_reason == "stop"
        body = {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 40, "temperature": 0}
        r = httpx.post(f"{url}/infill", json=body, timeout=60).json()
        assert r["content"] == middle and r["stop_type"] == "eos"
    f = tmp_path / "area.py"
    f.write_text(prefix + suffix)
    assert main(["infill", "--model", str(taught), "--file", str(f), "--line", "2", "--col", "5"]) == 0
    assert capsys.readouterr().out == middle + "\n"


def test_instruct_data_prompts_use_the_bases_template(trained, tmp_path):
    from codellama.generation import GenerationRequest, HFGenerator
    from codellama.instruct.prompts import PromptConfig, question_prompt, unit_tests_prompt
    from codellama.io import read_jsonl

    model = trained["instruct"]
    gen = HFGenerator.from_pretrained(model)
    tok = gen.tokenizer
    ids = gen.prompt_ids(GenerationRequest(unit_tests_prompt("Reverse a list.", PromptConfig(), tok)))
    assert ids[0] == tok.vocab["<|im_start|>"]  # the template's tokens, not their characters
    assert tok.render(ids).endswith("<|im_end|>\n<|im_start|>assistant\n[TESTS]\n")
    first, second = PromptConfig().seed_examples
    assert question_prompt(PromptConfig(), tok).endswith(f"<|im_start|>assistant\n1. {first}\n2. {second}\n3.")
    out = tmp_path / "self-instruct"
    argv = ["instruct-data", "generate", "--question-model", str(model), "--solver-model", str(model)]
    argv += ["--questions", "1", "--questions-per-prompt", "1", "--solutions-per-question", "1", "--workers", "1"]
    assert (
        main([*argv, "--question-tokens", "16", "--answer-tokens", "16", "--temperature", "0", "--out", str(out)]) == 0
    )
    assert (out / "dataset.jsonl").is_file() and read_jsonl(out / "questions.jsonl")


@pytest.mark.slow
def test_pipeline_on_a_bpe_checkpoint_base(bpe_base, stdlib_texts, tmp_path):
    """`base.model` set to a checkpoint with a tokenizer.json: its tokenizer is extended_bpe, its embedding grown."""
    import yaml

    base = bpe_base("chatml")
    src = tmp_path / "src"
    src.mkdir()
    for i, text in enumerate(stdlib_texts[:30]):
        (src / f"m{i:02d}.py").write_text(text)
    config = {
        "extends": "tiny",  # the smoke run's settings, whatever the default config is
        "base": {"model": str(base)},
        "data": {"sources": [str(src)]},
        "branches": {"code": TINY},
        "eval": {
            "humaneval": {"models": ["code"], "limit": 2, "max_new_tokens": 8},
            "infilling": {"models": ["code"], "benchmarks": ["single-line"], "limit": 2, "max_new_tokens": 8},
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    stages = "tokenizer,base,data,train-code,eval-code"
    assert main(["pipeline", "--config", str(path), "--run", str(run), "--stages", stages]) == 0
    state = json.loads((run / "state.json").read_text())["finished"]
    n = load_tokenizer(base).vocab_size
    assert state["tokenizer"]["outputs"]["infilling_ids"] == [n, n + 1, n + 2, n + 3]
    model = json.loads((run / "base" / "config.json").read_text())
    assert model["vocab_size"] == n + 4 and model["tie_word_embeddings"]
    final = state["train-code"]["outputs"]["path"]
    assert load_tokenizer(final).fingerprint() == load_tokenizer(run / "tokenizer").fingerprint()
    assert state["eval-code"]["outputs"]["humaneval"]["problems"] == 2
