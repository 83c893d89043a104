"""Teacher-forced log-likelihood of given tokens after a given context, batched: the continuous scores.

Pass@1 of a small model moves in coarse steps and needs many problems to move at all; the
negative log-likelihood (NLL, nats per token) of a known answer moves with every bit the model
learns. Two users: the NLL of HumanEval-infilling's true middles under PSM, SPM and prefix-only
prompts (`evals.infilling`: does the model use the suffix?), and the held-out code loss of
`evals.code_loss` (does FIM training cost left-to-right quality?).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

log = logging.getLogger(__name__)

LOGIT_CHUNK = 1024  # target positions per head matmul: 1024 x a 49k vocabulary is 200 MB of float32


def _batches(lengths: Sequence[int], batch_tokens: int) -> Iterable[list[int]]:
    """Row indices grouped so that rows x longest row stays within `batch_tokens` (longest rows first)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) + 1) * lengths[batch[0]] > batch_tokens:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def target_nll(
    model,
    rows: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_tokens: int = 8192,
    progress: str | None = None,
) -> list[list[float]]:
    """Per-token NLL (nats) of each row's target ids, teacher-forced after its context ids.

    `rows[i] = (context, target)`: the model reads context + target and each target token is scored
    given everything before it. Rows are right-padded into batches of about `batch_tokens` tokens;
    logits are made only at the target positions (a 49k vocabulary times every position would not fit).
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    for n, (context, _) in enumerate(rows):
        if not context:
            raise ValueError(f"row {n} has no context: the first target token would have nothing to follow")
    limit = getattr(model.config, "max_position_embeddings", None)
    lengths = [len(c) + len(t) for c, t in rows]
    if limit and lengths and max(lengths) > limit:
        log.warning(
            "rows of up to %d tokens exceed the model's %d positions: scores past it extrapolate", max(lengths), limit
        )
    device = next(model.parameters()).device
    head = model.get_output_embeddings()
    out: list[list[float]] = [[] for _ in rows]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tqdm(total=len(rows), desc=progress, unit="row", disable=progress is None) as bar:
            for batch in _batches(lengths, batch_tokens):
                width = lengths[batch[0]]
                ids = torch.zeros(len(batch), width, dtype=torch.long)
                mask = torch.zeros(len(batch), width, dtype=torch.long)
                for r, i in enumerate(batch):
                    seq = [*rows[i][0], *rows[i][1]]
                    ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                    mask[r, : len(seq)] = 1
                # Rows of one length need no padding mask: plain causal attention keeps SDPA's memory-efficient
                # kernel (an explicit mask over an 8k-token window would materialise 8k x 8k scores per head).
                same = all(lengths[i] == width for i in batch)
                attention = None if same else mask.to(device)
                hidden = model.model(input_ids=ids.to(device), attention_mask=attention).last_hidden_state
                # Target token j of row r sits at position len(context) + j and is predicted at the one before.
                picks_r, picks_p, targets = [], [], []
                for r, i in enumerate(batch):
                    context, target = rows[i]
                    start = len(context) - 1
                    picks_r += [r] * len(target)
                    picks_p += range(start, start + len(target))
                    targets += target
                if not targets:
                    bar.update(len(batch))
                    continue
                picked = hidden[torch.tensor(picks_r, device=device), torch.tensor(picks_p, device=device)]
                goal = torch.tensor(targets, device=device)
                nll = []
                for s in range(0, len(targets), LOGIT_CHUNK):  # a few hundred MB of logits at a time
                    logits = head(picked[s : s + LOGIT_CHUNK]).float()
                    nll += F.cross_entropy(logits, goal[s : s + LOGIT_CHUNK], reduction="none").tolist()
                k = 0
                for i in batch:
                    n = len(rows[i][1])
                    out[i] = nll[k : k + n]
                    k += n
                bar.update(len(batch))
    finally:
        model.train(was_training)
    return out


__all__ = ["target_nll"]
