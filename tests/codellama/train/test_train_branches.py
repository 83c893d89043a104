"""Every branch's tiny recipe trains on CPU through the real loop; the foundation branch learns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_helpers import metric_losses, write_code_shards

from codellama.checkpoint import load_model
from codellama.train import resolve_config, train
from codellama.train.loop import pack_chat_data


@pytest.fixture(scope="module")
def code_shards(tiny_tokenizer, stdlib_texts, tmp_path_factory):
    return write_code_shards(
        tiny_tokenizer, stdlib_texts, tmp_path_factory.mktemp("branches") / "shards", 256, meta={"fim_rate": 0.9}
    )


@pytest.fixture(scope="module")
def code_run(code_shards, tiny_tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("code") / "run"
    config = resolve_config(
        "code",
        "tiny",
        ["max_steps=40", "batch_tokens=2048", "micro_batch_size=8"],
        data=str(code_shards),
        out=str(out),
        tokenizer=str(tiny_tokenizer_dir),
    )
    return config, train(config, progress=False)


@pytest.mark.slow
def test_code_branch_loss_falls_clearly(code_run):
    config, result = code_run
    assert (config.seq_len, config.optim.betas, config.optim.weight_decay) == (256, (0.9, 0.95), 0.1)
    losses = [loss for _, loss in metric_losses(result.out_dir)]
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < losses[0] - 1.5, losses  # starts near ln(2016) = 7.6
    assert (result.out_dir / "loss.png").stat().st_size > 10_000
    assert list((result.out_dir / "tb").glob("events.out.tfevents.*"))
    summary = json.loads((result.out_dir / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["tokens"] == 40 * 2048
    model = load_model(result.final_dir)  # a plain Hugging Face checkpoint, tokenizer included
    assert (result.final_dir / "tokenizer.model").is_file() and model.config.vocab_size == 2016


@pytest.mark.slow
def test_python_branch_continues_from_the_code_model(code_run, code_shards, tmp_path):
    _, code = code_run
    config = resolve_config(
        "python", "tiny", ["max_steps=3"], base=str(code.final_dir), data=str(code_shards), out=str(tmp_path / "python")
    )
    assert config.optim.lr == 1e-3 and config.data_expect == {"fim_rate": 0.0}
    result = train(config, progress=False)
    # Starts where the code model ended, not from scratch.
    assert result.first_loss < 7.0 and np.isfinite(result.last_loss)
    assert (result.final_dir / "tokenizer.model").is_file()  # inherited from the base checkpoint


@pytest.mark.slow
def test_long_context_branch_sets_rope_and_trains_4x_longer(code_shards, tiny_tokenizer_dir, tmp_path):
    config = resolve_config(
        "long-context",
        "tiny",
        ["max_steps=2"],
        data=str(code_shards),
        out=str(tmp_path / "lcft"),
        tokenizer=str(tiny_tokenizer_dir),
    )
    assert config.seq_len == 4 * 256
    result = train(config, progress=False)
    saved = json.loads((result.final_dir / "config.json").read_text())
    assert saved["rope_parameters"]["rope_theta"] == 1_000_000.0
    assert saved["max_position_embeddings"] == 1024
    records = [json.loads(line) for line in (result.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["tokens"] == 2 * 4096 and np.isfinite(result.last_loss)


@pytest.mark.slow
def test_instruct_branch_trains_on_answers_only(
    code_shards, tiny_tokenizer, tiny_tokenizer_dir, stdlib_texts, tmp_path
):
    from codellama.model import build_model
    from codellama.presets import get_preset
    from codellama.train.data import count_targets, open_stream, rank_batch

    chats = tmp_path / "chats.jsonl"
    with open(chats, "w") as f:
        for i, text in enumerate(stdlib_texts[:80]):
            f.write(
                json.dumps(
                    {"instruction": f"Write the first lines of stdlib module number {i}.", "response": text[:240]}
                )
                + "\n"
            )
    config = resolve_config(
        "instruct",
        "tiny",
        ["max_steps=2", "precision=fp32"],
        data=str(chats),
        out=str(tmp_path / "instruct"),
        tokenizer=str(tiny_tokenizer_dir),
        rehearsal=[{"path": str(code_shards), "weight": 0.25}],
    )
    with pytest.raises(ValueError, match="training reads token shards"):
        train(config, progress=False)  # the loop reads shards only; the data layer packs chat JSONL
    packed_config = pack_chat_data(config)
    result = train(packed_config, progress=False)
    packed = Path(packed_config.data)
    assert pack_chat_data(config).data == packed_config.data  # the same inputs reuse the packed shards
    assert json.loads((packed / "index.json").read_text())["has_loss_mask"]

    # The first logged loss is cross-entropy over answer tokens (and rehearsal code) only.
    stream = open_stream(str(packed), config.rehearsal, config.seq_len, config.seed)
    tokens, labels = rank_batch(stream, 0, batch_sequences=config.batch_sequences, rank=0, world_size=1)
    chat_rows = [i for i in range(len(tokens)) if stream.locate(i)[0] == 0]
    assert 0 < len(chat_rows) < len(tokens)  # the mix holds both chats and rehearsal code
    for i in chat_rows:
        kept = labels[i][labels[i] != -100].tolist()
        assert "Write the first lines" not in tiny_tokenizer.decode(kept)
    model = build_model(get_preset("tiny").replace(vocab_size=2016), seed=config.seed)
    with torch.no_grad():
        logits = model(input_ids=tokens).logits.float()
    manual = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 2016), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
    ) / count_targets(labels)
    assert metric_losses(result.out_dir)[0][1] == pytest.approx(manual.item(), rel=1e-4)
