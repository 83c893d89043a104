"""Which rank trains on what: disjoint slices of one global batch, weighted mixes, re-cut sequences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codellama.data.shards import ShardWriter, TokenShards
from codellama.train.data import MixedStream, SequenceView, Source, make_labels, rank_batch


def _shards(path, n, seq_len=8, offset=0, mask=False):
    writer = ShardWriter(path, seq_len, 1000, sequences_per_shard=7, with_loss_mask=mask)
    for i in range(n):
        row = np.arange(seq_len) + (offset + i) * seq_len
        writer.add(row % 1000, (row % 2) if mask else None)
    writer.finish()
    return TokenShards(path)


def test_ranks_take_disjoint_slices_of_the_same_global_batch(tmp_path):
    stream = MixedStream([Source(SequenceView(_shards(tmp_path / "a", 40), 8), 1.0, "a")], seed=3)
    for step in range(5):  # across an epoch boundary (40 samples, 8 per step)
        whole, _ = rank_batch(stream, step, batch_sequences=8, rank=0, world_size=1)
        parts = [rank_batch(stream, step, batch_sequences=8, rank=r, world_size=4)[0] for r in range(4)]
        assert torch.equal(torch.cat(parts), whole)
    epoch = [tuple(rank_batch(stream, s, batch_sequences=8, rank=0, world_size=1)[0][:, 0].tolist()) for s in range(5)]
    firsts = sorted(x for batch in epoch for x in batch)
    assert firsts == list(range(0, 320, 8))  # one epoch = every sequence exactly once, shuffled
    assert [x for b in epoch for x in b] != firsts


def test_mix_follows_weights_and_reads_loss_masks(tmp_path):
    main = SequenceView(_shards(tmp_path / "chat", 50, mask=True), 8)
    code = SequenceView(_shards(tmp_path / "code", 30, offset=100), 8)
    stream = MixedStream([Source(main, 0.75, "chat"), Source(code, 0.25, "code")], seed=0)
    picks = [stream.locate(k)[0] for k in range(4000)]
    assert picks.count(1) == 1000  # exact per block of 1000
    tokens, mask = stream.sample(next(k for k, j in enumerate(picks) if j == 0))
    assert mask.tolist() == (tokens % 2).tolist()
    tokens, mask = stream.sample(next(k for k, j in enumerate(picks) if j == 1))
    assert mask.min() == 1  # shards without a mask train on every token
    labels = make_labels(torch.tensor([[5, 6, 7, 8]]), torch.tensor([[1, 0, 1, 1]]))
    assert labels.tolist() == [[-100, -100, 7, 8]]


def test_sequence_view_joins_and_splits_packed_rows(tmp_path):
    shards = _shards(tmp_path / "s", 12)
    long = SequenceView(shards, 32)
    assert len(long) == 3 and long.tokens(1).tolist() == list(range(32, 64))
    short = SequenceView(shards, 4)
    assert len(short) == 24 and short.tokens(3).tolist() == [12, 13, 14, 15]
    with pytest.raises(ValueError, match="must divide it or be a multiple"):
        SequenceView(shards, 12)
