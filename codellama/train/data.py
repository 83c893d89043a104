"""What each rank trains on at each step: an O(1), seeded map from (step, rank) to sequences.

The global batch of step s is samples [s*B, (s+1)*B) of an endless stream; rank r of W takes
the r-th contiguous slice of it. So W ranks see exactly the sequences one process would (the
math of a step is the same at any world size), and the data position of a checkpoint is just
the step: resuming needs no iterator state.

The stream is a weighted mix of sources (the main shards plus rehearsal sets), each walked in a
fresh seeded permutation per pass. A source whose shards were packed at another length is
viewed at the training length: k consecutive packed rows are joined (longer) or a row is split
(shorter), both of which are still valid packed text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from codellama.data.shards import TokenShards

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of positions that do not count in the loss (transformers' convention)


class SequenceView:
    """TokenShards re-cut to `seq_len` tokens per sample (join or split packed rows)."""

    def __init__(self, shards: TokenShards, seq_len: int):
        self.shards, self.seq_len = shards, seq_len
        n = shards.seq_len
        if seq_len % n == 0:
            self.join, self.split = seq_len // n, 1
        elif n % seq_len == 0:
            self.join, self.split = 1, n // seq_len
        else:
            raise ValueError(
                f"{shards.directory}: shards hold {n}-token sequences; training seq_len {seq_len} "
                f"must divide it or be a multiple of it"
            )
        self._len = len(shards) // self.join * self.split
        if self._len == 0:
            raise ValueError(
                f"{shards.directory} has {len(shards)} sequences of {n} tokens: "
                f"not enough for one {seq_len}-token sample"
            )

    def __len__(self) -> int:
        return self._len

    def _rows(self, i: int, fetch) -> np.ndarray:
        if self.join > 1:
            return np.concatenate([fetch(i * self.join + j) for j in range(self.join)])
        row, part = divmod(i, self.split)
        return np.asarray(fetch(row))[part * self.seq_len : (part + 1) * self.seq_len]

    def tokens(self, i: int) -> np.ndarray:
        return self._rows(i, self.shards.__getitem__)

    def loss_mask(self, i: int) -> np.ndarray:
        return self._rows(i, self.shards.loss_mask)


@dataclass(frozen=True)
class Source:
    view: SequenceView
    weight: float
    name: str


class MixedStream:
    """Sample k of an endless, seeded mix of sources; any k is computed directly."""

    BLOCK = 1000  # the mix is exact within every block of this many samples

    def __init__(self, sources: list[Source], seed: int):
        self.sources, self.seed = sources, seed
        weights = np.array([s.weight for s in sources], dtype=np.float64)
        weights /= weights.sum()
        block = 1 if len(sources) == 1 else self.BLOCK
        counts = np.floor(weights * block).astype(np.int64)
        for j in np.argsort(-(weights * block - counts))[: block - counts.sum()]:
            counts[j] += 1  # largest remainder: counts sum to the block size
        plan = np.repeat(np.arange(len(sources)), counts)
        plan = np.random.default_rng([seed, 1]).permutation(plan)
        self._plan = plan
        self._rank_in_block = np.zeros(block, dtype=np.int64)  # how many of the same source came before
        for j in range(len(sources)):
            where = np.nonzero(plan == j)[0]
            self._rank_in_block[where] = np.arange(len(where))
        self._counts = counts

    @property
    def has_loss_mask(self) -> bool:
        return any(s.view.shards.has_loss_mask for s in self.sources)

    def locate(self, k: int) -> tuple[int, int]:
        """(source, sequence index) of stream sample k."""
        block, offset = divmod(k, len(self._plan))
        j = int(self._plan[offset])
        n = block * int(self._counts[j]) + int(self._rank_in_block[offset])
        size = len(self.sources[j].view)
        epoch, pos = divmod(n, size)
        return j, int(self._permutation(j, epoch)[pos])

    @lru_cache(maxsize=8)
    def _permutation(self, source: int, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, source, epoch]).permutation(len(self.sources[source].view))

    def sample(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        j, i = self.locate(k)
        view = self.sources[j].view
        return view.tokens(i), view.loss_mask(i)


def rank_batch(
    stream: MixedStream, step: int, *, batch_sequences: int, rank: int, world_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of step `step`'s global batch: (input ids, labels) as int64 [n, seq_len]."""
    per_rank = batch_sequences // world_size
    first = step * batch_sequences + rank * per_rank
    tokens, masks = zip(*(stream.sample(k) for k in range(first, first + per_rank)))
    tokens = torch.from_numpy(np.stack(tokens))
    return tokens, make_labels(tokens, torch.from_numpy(np.stack(masks)))


def make_labels(tokens: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Labels for LlamaForCausalLM: the token where it counts in the loss, IGNORE_INDEX elsewhere.

    transformers shifts labels itself (position t predicts label t+1); the first position is
    never a target because nothing precedes it.
    """
    labels = tokens.clone()
    labels[loss_mask == 0] = IGNORE_INDEX
    labels[:, 0] = IGNORE_INDEX
    return labels


def count_targets(labels: torch.Tensor) -> int:
    """Tokens that count in the loss (what transformers calls num_items_in_batch)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def open_stream(data: str, rehearsal: list[dict], seq_len: int, seed: int) -> MixedStream:
    """Main shards (weight 1 - rehearsal) plus rehearsal shard sets."""
    main = TokenShards(data)
    extra = [(TokenShards(r["path"]), float(r["weight"])) for r in rehearsal]
    sources = [Source(SequenceView(main, seq_len), 1.0 - sum(w for _, w in extra), str(data))]
    for shards, weight in extra:
        if shards.vocab_size > main.vocab_size:
            raise ValueError(
                f"rehearsal set {shards.directory} has vocab {shards.vocab_size}, "
                f"larger than the main data's {main.vocab_size}"
            )
        sources.append(Source(SequenceView(shards, seq_len), weight, str(shards.directory)))
    for s in sources:
        log.info("data %s: %d samples of %d tokens, weight %.3f", s.name, len(s.view), seq_len, s.weight)
    return MixedStream(sources, seed)
