"""Local generation on a `LlamaForCausalLM`: continuous batching over transformers' KV cache.

`Decoder` is the step-wise core: requests join with `add`, and each `step` prefills one chunk of the
rows that are joining, decodes one token for the rows that are running, and lets finished or cancelled
rows leave. `HFGenerator.generate` drives a decoder until a list of requests is done; the serving engine
(`codellama.generation.engine`) drives one for as long as requests arrive.

Rows keep their own positions (from the attention mask), so prompts of any length share a batch. A row
whose prompt starts like a recent one (`cache_prompt`) starts from that prompt's KV (`PromptCache`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Sequence

import torch

from codellama.generation.attention import use_grouped_attention
from codellama.generation.cache import PromptCache, common_prefix
from codellama.generation.kv import growing_cache
from codellama.generation.protocol import Completion, GenerationRequest, Sink
from codellama.generation.sampling import sample_next
from codellama.generation.stopping import check_stop, drop_tail, safe_to_stream, skip_echo

log = logging.getLogger(__name__)


class _Row:
    """One request inside the decoder: its prompt, what it has made so far, and why it ended."""

    def __init__(
        self,
        request: GenerationRequest,
        sink: Sink,
        prompt_ids: list[int],
        stop_ids: set[int],
        device,
        echo: str = "",
        tail: str = "",
    ):
        self.request, self.sink, self.params = request, sink, request.params
        self.prompt_ids, self.stop_ids = prompt_ids, stop_ids
        # What the prompt left out of the prefix's end and of the suffix's start: the model writes the echo
        # first and the tail last (then ends the middle); neither is part of the text.
        self.echo, self.tail = echo, tail
        self.ids: list[int] = []
        self.text = ""  # after stop rules
        self.decoded = 0  # length of the last full decode (where the next token's text starts)
        self.emitted = 0  # chars already streamed
        self.budget = self.params.max_new_tokens
        self.cached = 0
        self.finish: str | None = None
        self.error: str | None = None
        self.t_first: float | None = None
        self.rng = None
        if self.params.seed is not None:  # one generator per seeded row: its tokens depend on its seed only
            self.rng = torch.Generator(device=device)
            self.rng.manual_seed(self.params.seed)

    def completion(self) -> Completion:
        return Completion(self.text, self.ids, self.finish or "length", len(self.prompt_ids), self.cached, self.error)


class _Batch:
    """Rows that run forward passes together: their KV cache and the attention mask over its columns.

    A new batch holds each row's cached prompt prefix (right-aligned in one block) and the rest of its
    prompt (left-padded in a second block), which `prefill` feeds a chunk at a time; after that every
    `step` feeds one sampled token per row. Padding columns are masked, so each row sees only its own tokens.
    """

    def __init__(self, rows: list[_Row], prefixes: list, pad_id: int, config, device: torch.device):
        self.rows, self.device = rows, device
        self.cache = growing_cache(config)
        width = max(len(kv) for kv in prefixes) if prefixes else 0
        self.attention = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        if width:
            self._fill_cache(prefixes, width)
        rest = [row.prompt_ids[row.cached :] for row in rows]
        longest = max(len(r) for r in rest)
        self.prompt = torch.full((len(rows), longest), pad_id, dtype=torch.long)
        self.prompt_mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for b, ids in enumerate(rest):
            self.prompt[b, longest - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            self.prompt_mask[b, longest - len(ids) :] = 1
        self.prompt, self.prompt_mask = self.prompt.to(device), self.prompt_mask.to(device)
        self.fed = 0  # prompt columns fed so far
        self.pending: torch.Tensor | None = None  # the sampled tokens the next step feeds
        self.logits: torch.Tensor | None = None

    def _fill_cache(self, prefixes: list, width: int) -> None:
        """Each row's cached KV, right-aligned in `width` columns (a lone full-width row is used as is)."""
        for b, kv in enumerate(prefixes):
            self.attention[b, width - len(kv) :] = 1
        for i, layer in enumerate(self.cache.layers):
            parts = [kv.layer(i) for kv in prefixes if len(kv)]
            k0, v0 = parts[0]
            if len(self.rows) == 1:
                keys, values = k0[None], v0[None]
            else:
                keys = k0.new_zeros((len(self.rows), k0.shape[0], width, k0.shape[2]))
                values = v0.new_zeros((len(self.rows), v0.shape[0], width, v0.shape[2]))
                for b, kv in enumerate(prefixes):
                    if len(kv):
                        k, v = kv.layer(i)
                        keys[b, :, width - len(kv) :], values[b, :, width - len(kv) :] = k, v
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values

    def prefill(self, model, chunk: int) -> bool:
        """Feed the next `chunk` prompt columns; True once the whole prompt is in."""
        end = min(self.prompt.shape[1], self.fed + chunk)
        self._forward(model, self.prompt[:, self.fed : end], self.prompt_mask[:, self.fed : end])
        self.fed = end
        if end < self.prompt.shape[1]:
            return False
        self.prompt = self.prompt_mask = None  # all in the cache now
        return True

    def step(self, model) -> None:
        """Feed the tokens sampled last."""
        self._forward(model, self.pending[:, None], torch.ones_like(self.attention[:, :1]))

    def _forward(self, model, input_ids: torch.Tensor, mask: torch.Tensor) -> None:
        attention = torch.cat([self.attention, mask], dim=1)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1] :]
        out = model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.attention, self.logits = attention, out.logits[:, -1, :]

    def row_kv(self, b: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Row b's KV over its own columns (no padding), per layer [kv_heads, n, head_dim]."""
        if len(self.rows) == 1 and bool(self.attention.all()):
            return [(layer.keys[0], layer.values[0]) for layer in self.cache.layers]
        real = self.attention[b].bool()
        return [(layer.keys[b][:, real], layer.values[b][:, real]) for layer in self.cache.layers]

    def real_columns(self, b: int) -> int:
        return int(self.attention[b].sum())

    def keep(self, alive: list[int]) -> _Batch | None:
        """Only rows `alive` stay: no compute is spent on the others from now on."""
        if not alive:
            return None
        if len(alive) < len(self.rows):
            keep = torch.tensor(alive, device=self.device)
            self.cache.batch_select_indices(keep)
            self.attention = self.attention[keep]
            if self.prompt is not None:
                self.prompt, self.prompt_mask = self.prompt[keep], self.prompt_mask[keep]
            if self.pending is not None:
                self.pending = self.pending[keep]
            if self.logits is not None:
                self.logits = self.logits[keep]
            self.rows = [self.rows[b] for b in alive]
            # Columns that were only the leavers' history are padding for everyone left: drop them, or a
            # batch that keeps admitting would grow without bound.
            first = int(self.attention.any(0).int().argmax()) if self.attention.shape[1] else 0
            if first:
                for layer in self.cache.layers:
                    layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
                self.attention = self.attention[:, first:]
        return self

    def merge(self, other: _Batch) -> _Batch:
        """Append `other`'s rows (both decoding); the narrower side is left-padded (masked) to match."""
        mine, theirs = self.attention.shape[1], other.attention.shape[1]
        self._left_pad(max(0, theirs - mine))
        other._left_pad(max(0, mine - theirs))
        for a, b in zip(self.cache.layers, other.cache.layers):
            a.keys, a.values = torch.cat([a.keys, b.keys]), torch.cat([a.values, b.values])
        self.attention = torch.cat([self.attention, other.attention])
        self.pending = torch.cat([self.pending, other.pending])
        self.rows = self.rows + other.rows
        return self

    def _left_pad(self, n: int) -> None:
        if n:
            for layer in self.cache.layers:
                layer.keys = torch.nn.functional.pad(layer.keys, (0, 0, n, 0))
                layer.values = torch.nn.functional.pad(layer.values, (0, 0, n, 0))
            self.attention = torch.nn.functional.pad(self.attention, (n, 0))


class _NoPrefix:
    """A row with nothing cached."""

    def __len__(self) -> int:
        return 0


class _Prefix:
    """The first `n` tokens of a cached prompt, as a row starts from them."""

    def __init__(self, entry, n: int):
        self.entry, self.n = entry, n

    def __len__(self) -> int:
        return self.n

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.entry.layers[i]
        return k[:, : self.n], v[:, : self.n]


class Decoder:
    """Continuous batching on one model: rows `add`ed, `step` by `step`, until each one ends.

    Per step: rows waiting to start become one joining batch (each from its longest cached prompt prefix);
    the joining batch prefills one chunk of its prompts; the running batch decodes one token; rows that are
    done or whose sink says `cancelled` leave before the next forward pass. Any exception inside one row
    (its seed, its text, its sink) ends that row with finish_reason "error"; a failed forward pass fails the
    rows of that pass only. Use from one thread.
    """

    def __init__(self, generator: HFGenerator):
        self.gen = generator
        self.waiting: deque[_Row] = deque()
        self.joining: _Batch | None = None
        self.running: _Batch | None = None
        self.steps = 0
        self.finished: Counter[str] = Counter()

    @property
    def busy(self) -> int:
        """Rows admitted and not yet done."""
        return len(self.waiting) + sum(len(b.rows) for b in (self.joining, self.running) if b is not None)

    @property
    def free(self) -> int:
        return max(0, self.gen.batch_size - self.busy)

    def add(self, request: GenerationRequest, sink: Sink) -> None:
        """Queue a request; one that cannot run (bad seed, empty prompt, no room) is answered at once."""
        try:
            row = self.gen._row(request, sink)
        except Exception as exc:
            log.warning("request refused: %s", exc)
            self._finish(_Failed(request, sink, exc))
            return
        if row.finish:
            self._finish(row)
        elif row.budget == 0 and not request.cache_prompt:
            row.finish = "length"  # nothing to generate, nothing to keep
            self._finish(row)
        else:
            self.waiting.append(row)

    def step(self) -> None:
        """One round: start waiting rows, prefill one chunk, decode one token."""
        self._cancel_waiting()
        if self.joining is None and self.waiting:
            self.joining = self._start(self._take_group())
        if self.joining is not None:
            self._prefill()
        if self.running is not None:
            self._decode()
        self.steps += 1

    # -- the parts of a step -----------------------------------------------------------------

    def _cancel_waiting(self) -> None:
        for row in list(self.waiting):
            if self._cancelled(row):
                self.waiting.remove(row)
                self._finish(row)

    def _take_group(self) -> list[_Row]:
        """The waiting rows that start together. A row asking for the same prompt as one already in the
        group (n_cmpl) waits one round, to start from that row's cached prompt instead of recomputing it."""
        group: list[_Row] = []
        held: deque[_Row] = deque()
        for row in self.waiting:
            if row.request.cache_prompt and self.gen.prompt_cache and any(_same_prompt(row, g) for g in group):
                held.append(row)
            else:
                group.append(row)
        self.waiting = held
        return group

    def _start(self, rows: list[_Row]) -> _Batch | None:
        prefixes = []
        for row in rows:
            prefix = _NoPrefix()
            if row.request.cache_prompt and self.gen.prompt_cache is not None:
                n, entry = self.gen.prompt_cache.lookup(row.prompt_ids)
                n = min(n, len(row.prompt_ids) - 1)  # the last prompt token is fed for its logits
                if n > 0:
                    prefix, row.cached = _Prefix(entry, n), n
                    self.gen.prompt_cache.note_hit(n)
            prefixes.append(prefix)
        log.debug(
            "starting %d row(s): prompt tokens %s, cached %s",
            len(rows),
            [len(r.prompt_ids) for r in rows],
            [r.cached for r in rows],
        )
        return _Batch(rows, prefixes, self.gen.pad_id, self.gen.model.config, self.gen.device)

    def _prefill(self) -> None:
        batch = self._leave_cancelled(self.joining, keep_partial=True)
        self.joining = batch
        if batch is None:
            return
        try:
            with torch.inference_mode():
                done = batch.prefill(self.gen.model, self.gen.prefill_chunk)
        except Exception as exc:
            self._fail_batch(batch, exc)
            self.joining = None
            return
        if not done:
            return
        self.joining = None
        for b, row in enumerate(batch.rows):
            if row.request.cache_prompt and self.gen.prompt_cache is not None:
                self.gen.prompt_cache.store(row.prompt_ids, batch.row_kv(b))
            if row.budget == 0:  # a warm-up request: the prompt is in the cache, nothing to generate
                row.finish = "length"
                self._finish(row)
        batch = batch.keep([b for b, row in enumerate(batch.rows) if not row.finish])
        if batch is None:
            return
        self._sample_and_accept(batch)
        batch = batch.keep([b for b, row in enumerate(batch.rows) if not row.finish])
        if batch is not None:
            self.running = batch if self.running is None else self.running.merge(batch)

    def _decode(self) -> None:
        batch = self._leave_cancelled(self.running, keep_partial=False)
        self.running = batch
        if batch is None:
            return
        try:
            with torch.inference_mode():
                batch.step(self.gen.model)
        except Exception as exc:
            self._fail_batch(batch, exc)
            self.running = None
            return
        self._sample_and_accept(batch)
        self.running = batch.keep([b for b, row in enumerate(batch.rows) if not row.finish])

    def _leave_cancelled(self, batch: _Batch, *, keep_partial: bool) -> _Batch | None:
        """Rows whose callers went away leave now; a prefilling one leaves its prompt so far in the cache."""
        alive = []
        for b, row in enumerate(batch.rows):
            if not self._cancelled(row):
                alive.append(b)
                continue
            if keep_partial and row.request.cache_prompt and self.gen.prompt_cache is not None:
                n = batch.real_columns(b)
                if n > row.cached:
                    log.debug("a cancelled row leaves %d prefilled tokens in the prompt cache", n)
                    self.gen.prompt_cache.store(row.prompt_ids[:n], batch.row_kv(b))
            self._finish(row)
        return batch.keep(alive)

    def _cancelled(self, row: _Row) -> bool:
        try:
            cancelled = row.sink.cancelled()
        except Exception as exc:
            row.finish, row.error = "error", f"{type(exc).__name__}: {exc}"
            return True
        if cancelled:
            row.finish = "cancelled"
        return cancelled

    def _sample_and_accept(self, batch: _Batch) -> None:
        greedy = batch.logits.argmax(dim=-1).tolist()
        tokens = []
        for b, row in enumerate(batch.rows):
            try:
                token = greedy[b] if row.params.temperature == 0 else sample_next(batch.logits[b], row.params, row.rng)
                self._accept(row, token)
            except Exception as exc:
                log.exception("a row failed; its batch-mates go on")
                row.finish, row.error, token = "error", f"{type(exc).__name__}: {exc}", self.gen.pad_id
            tokens.append(token)
            if row.finish:
                self._finish(row)
        batch.pending = torch.tensor(tokens, dtype=torch.long, device=batch.device)

    def _accept(self, row: _Row, token: int) -> None:
        """Apply one sampled token: end of text, stop rules, budget, streamed text."""
        if token in row.stop_ids:
            row.finish = "stop"
            row.text = drop_tail(row.tail, row.text)
            return
        now = time.perf_counter()
        if row.t_first is None:
            row.t_first = now
        row.ids.append(token)
        # Continuations are decoded without the dummy prefix: the first piece's leading space belongs to the
        # text ("▁return" after "):\n   " is " return").
        text = skip_echo(row.echo, self.gen.tokenizer.decode_infilling(row.ids))
        row.text, why = check_stop(text, row.decoded, row.params, (now - row.t_first) * 1e3)
        row.decoded = len(text)
        row.finish = why or ("length" if len(row.ids) >= row.budget else None)
        if not row.finish:
            safe = safe_to_stream(row.text, row.params.stop, row.tail)
            if safe > row.emitted:
                row.sink.text(row.text[row.emitted : safe])
                row.emitted = safe

    def _finish(self, row) -> None:
        """Answer a row that ended: the rest of its text, then its completion."""
        self.finished[row.finish] += 1
        try:
            if row.finish != "error" and len(row.text) > row.emitted:
                row.sink.text(row.text[row.emitted :])
                row.emitted = len(row.text)
            row.sink.done(row.completion())
        except Exception:
            log.exception("a sink failed while being answered")

    def _fail_batch(self, batch: _Batch, exc: Exception) -> None:
        log.exception("a forward pass failed; its %d row(s) fail", len(batch.rows))
        for row in batch.rows:
            row.finish, row.error = "error", f"generation failed: {type(exc).__name__}: {exc}"
            self._finish(row)


class _Failed:
    """A request that could not become a row; answered with its error."""

    def __init__(self, request: GenerationRequest, sink: Sink, exc: Exception):
        self.request, self.sink = request, sink
        self.finish, self.text, self.emitted = "error", "", 0
        self.error = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"

    def completion(self) -> Completion:
        n = len(self.request.prompt_ids or ())
        return Completion("", [], "error", n, 0, self.error)


def _same_prompt(row: _Row, other: _Row) -> bool:
    a, b = row.prompt_ids, other.prompt_ids
    return len(a) == len(b) and common_prefix(torch.tensor(a), torch.tensor(b)) == len(a)


class _Collect(Sink):
    """Keeps a row's completion for `generate`'s result and passes everything on to the caller's sink."""

    def __init__(self, results: list, index: int, sink: Sink | None):
        self.results, self.index, self.sink = results, index, sink or Sink()

    def text(self, delta: str) -> None:
        self.sink.text(delta)

    def done(self, completion: Completion) -> None:
        self.results[self.index] = completion
        self.sink.done(completion)

    def cancelled(self) -> bool:
        return self.sink.cancelled()


class HFGenerator:
    """Local generation: continuous batching over transformers' KV cache (see `Decoder`)."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int = 8,
        max_context: int | None = None,
        overflow: str = "error",
        prefill_chunk: int = 512,
        prompt_cache_bytes: int | None = 0,
    ):
        """`overflow`: what a prompt longer than the context gets from `generate`: "error" (ValueError) or
        "skip" (an empty completion with finish_reason "context", so a benchmark scores it as failed).
        `prefill_chunk`: prompts are fed this many tokens per step, so a long prompt delays running rows by
        one chunk at a time and a cancelled one stops within a chunk. `prompt_cache_bytes`: memory for the
        KV of recent prompts that `cache_prompt` requests reuse (0: no prompt cache; None: room for two
        prompts of the whole context, as an editor's keystrokes need the newest one and one more file).
        The model is put in eval mode and, on the CPU, switched to grouped-query attention
        (`codellama.generation.attention`): same logits, and a caller sharing the model gets it too."""
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if overflow not in ("error", "skip"):
            raise ValueError(f"overflow must be 'error' or 'skip', got {overflow!r}")
        self.prefill_chunk, self.overflow, self.batch_size = prefill_chunk, overflow, batch_size
        self.model = model.eval()
        use_grouped_attention(self.model)
        self.tokenizer = tokenizer
        self.max_context = max_context or getattr(model.config, "max_position_embeddings", None)
        self.vocab_size = model.config.vocab_size
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.eos_id
        if prompt_cache_bytes is None:
            prompt_cache_bytes = 2 * (self.max_context or 8192) * self.kv_bytes_per_token()
        self.prompt_cache = PromptCache(prompt_cache_bytes) if prompt_cache_bytes > 0 else None
        if self.prompt_cache is not None:
            log.info(
                "prompt cache: %d MiB (%d tokens of KV)",
                prompt_cache_bytes >> 20,
                prompt_cache_bytes // self.kv_bytes_per_token(),
            )
        self._stop_ids = set(tokenizer.end_ids)  # EOS, <EOT> (when there is one), the base's end-of-text tokens

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | os.PathLike,
        *,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        **options,
    ) -> HFGenerator:
        """Load a checkpoint directory; `options` are `HFGenerator`'s keyword arguments."""
        from codellama.checkpoint import load_model
        from codellama.tokenizer import load_tokenizer

        if dtype is None:
            dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        return cls(load_model(model_dir, dtype=dtype, device=device), load_tokenizer(model_dir), **options)

    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one token takes in this model: a key and a value per layer and KV head."""
        c = self.model.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        return 2 * c.num_hidden_layers * kv_heads * head_dim * next(self.model.parameters()).element_size()

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.prompt_ids is not None:
            return list(request.prompt_ids)
        if request.suffix is None:  # a completion prompt may be a rendered chat template: its special tokens count
            return self.tokenizer.encode(request.prompt, bos=True, special=True)
        return self.tokenizer.infilling_prompt(request.prompt, request.suffix, suffix_first=request.suffix_first)

    def fits(self, n_prompt: int) -> bool:
        """Room for at least one new token after a prompt of this length."""
        return not self.max_context or n_prompt < self.max_context

    def decoder(self) -> Decoder:
        return Decoder(self)

    def check_ids(self, ids: list[int]) -> None:
        """ValueError for an empty prompt or an id the model has no embedding for."""
        if not ids:
            raise ValueError("the prompt is empty")
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is outside the model's vocabulary of {self.vocab_size}")

    def _row(self, request: GenerationRequest, sink: Sink) -> _Row:
        ids = self.prompt_ids(request)
        self.check_ids(ids)
        # An infilling prompt may leave the prefix's trailing whitespace for the model to write (the tokenizer's
        # infilling convention); the fitted prompts of the server end where the request's prefix does.
        echo, tail = "", ""
        if request.suffix is not None:
            echo, tail = self.tokenizer.infilling_echo(request.prompt), self.tokenizer.infilling_tail(request.suffix)
        row = _Row(request, sink, ids, self._stop_ids, self.device, echo, tail)
        if not self.fits(len(ids)):
            row.finish = "context"
        elif self.max_context:
            row.budget = min(row.budget, self.max_context - len(ids))
        return row

    def generate(self, requests: Sequence[GenerationRequest], sinks: Sequence[Sink] | None = None) -> list[Completion]:
        """Complete `requests` (see `Generator`); shorter prompts start first and rows join as others end."""
        if sinks is not None and len(sinks) != len(requests):
            raise ValueError(f"{len(sinks)} sinks for {len(requests)} requests")
        prepared = [dataclasses.replace(r, prompt_ids=tuple(self.prompt_ids(r))) for r in requests]
        too_long = [len(r.prompt_ids) for r in prepared if not self.fits(len(r.prompt_ids))]
        if too_long and self.overflow == "error":
            raise ValueError(f"prompt of {max(too_long)} tokens exceeds the model's context of {self.max_context}")
        if too_long:
            log.warning(
                "%d prompt(s) longer than the model's context of %d tokens: left empty", len(too_long), self.max_context
            )
        results: list[Completion | None] = [None] * len(requests)
        pending = deque(sorted(range(len(requests)), key=lambda i: len(prepared[i].prompt_ids)))
        decoder = self.decoder()
        while pending or decoder.busy:
            while pending and decoder.free:
                i = pending.popleft()
                decoder.add(prepared[i], _Collect(results, i, sinks[i] if sinks else None))
            decoder.step()
        return results
