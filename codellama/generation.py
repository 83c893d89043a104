"""The one generation path: batched, KV-cached decoding for evals, instruct data and the server.

`HFGenerator` runs a local `LlamaForCausalLM`; `OpenAIGenerator` sends the same requests to
any OpenAI-compatible completions endpoint (vLLM, llama.cpp server, TGI, our own server).
A request with a `suffix` is an infilling request: locally it becomes Code Llama's PSM/SPM
prompt and stops at `<EOT>`; remotely it is sent as the completions API's `suffix`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

log = logging.getLogger(__name__)

OnText = Callable[[int, str], None]
IsCancelled = Callable[[int], bool]
OnDone = Callable[[int, "Completion"], None]
Admit = Callable[[int], Sequence["GenerationRequest"]]


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    suffix: str | None = None  # set: infilling between prompt (prefix) and suffix
    params: SamplingParams = field(default_factory=SamplingParams)
    suffix_first: bool = False  # SPM instead of PSM for infilling


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length" | "cancelled" | "context" (the prompt alone fills the context)
    prompt_tokens: int


class Generator(Protocol):
    """What evals and the instruct pipeline call; `HFGenerator` also takes `admit` (continuous batching)."""

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_text: OnText | None = None,
        is_cancelled: IsCancelled | None = None,
        on_done: OnDone | None = None,
    ) -> list[Completion]: ...


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` before the earliest stop string."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _stop_holdback(text: str, stop: Sequence[str]) -> int:
    """How many trailing chars might be the start of a stop string (not yet safe to stream)."""
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return hold


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Greedy when temperature is 0, else nucleus sampling over temperature-scaled logits."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p  # always keeps the top token
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class _Row:
    """Decoding state of one request inside a batch."""

    def __init__(self, index: int, request: GenerationRequest, prompt_ids: list[int]):
        self.index, self.request, self.prompt_ids = index, request, prompt_ids
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.finish: str | None = None
        self.budget = request.params.max_new_tokens


def _completion(row: _Row) -> Completion:
    return Completion(row.text, row.ids, row.finish or "length", len(row.prompt_ids))


def _report(row: _Row, on_done: OnDone | None) -> None:
    if on_done is not None:
        on_done(row.index, _completion(row))


class _Batch:
    """The rows decoding together: left-padded inputs, their attention mask and one KV cache.

    Every row keeps its own positions (from the mask), so rows of any prompt length can share the
    batch, and rows can leave (done) or join (admitted) between steps.
    """

    def __init__(
        self,
        rows: list[_Row],
        input_ids: torch.Tensor,
        attention: torch.Tensor,
        stop_ids: list[set[int]],
        config,
        device: torch.device,
    ):
        from transformers import DynamicCache

        self.rows, self.stop_ids = rows, stop_ids
        self.prompt, self.prompt_mask, self.prefilled = input_ids, attention, 0  # fed by `prefill_step`
        self.step_input, self.attention = input_ids[:, :0], attention[:, :0]
        self.cache = DynamicCache(config=config)
        self.device = device
        self.logits: torch.Tensor | None = None
        # One generator per seeded row: a sample's tokens depend on its seed, not on its batch-mates.
        self.rngs = []
        for r in rows:
            rng = None
            if r.request.params.seed is not None:
                rng = torch.Generator(device=device)
                rng.manual_seed(r.request.params.seed)
            self.rngs.append(rng)

    def prefill_step(self, model, chunk: int | None = None) -> bool:
        """Feed the next `chunk` prompt columns (all when None); True once the whole prompt is in."""
        end = self.prompt.shape[1] if chunk is None else min(self.prompt.shape[1], self.prefilled + chunk)
        self.step_input = self.prompt[:, self.prefilled : end]
        self.attention = self.prompt_mask[:, :end]
        self.prefilled = end
        self.step(model)
        return end == self.prompt.shape[1]

    def step(self, model) -> None:
        positions = (self.attention.cumsum(-1) - 1).clamp(min=0)[:, -self.step_input.shape[1] :]
        out = model(
            input_ids=self.step_input,
            attention_mask=self.attention,
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.logits = out.logits[:, -1, :]

    def sample(self) -> torch.Tensor:
        tokens = torch.empty(len(self.rows), dtype=torch.long, device=self.device)
        for b, row in enumerate(self.rows):
            p = row.request.params
            tokens[b] = sample_next(self.logits[b : b + 1], p.temperature, p.top_p, self.rngs[b])[0]
        self.step_input = tokens[:, None]
        self.attention = torch.cat([self.attention, torch.ones_like(self.attention[:, :1])], dim=1)
        return tokens

    def keep_unfinished(self) -> _Batch | None:
        """Finished and cancelled rows leave: no compute is spent on them from now on."""
        alive = [b for b, row in enumerate(self.rows) if not row.finish]
        if not alive:
            return None
        if len(alive) < len(self.rows):
            keep = torch.tensor(alive, device=self.device)
            self.cache.batch_select_indices(keep)
            self.step_input, self.attention = self.step_input[keep], self.attention[keep]
            self.rows, self.rngs, self.stop_ids = (
                [xs[b] for b in alive] for xs in (self.rows, self.rngs, self.stop_ids)
            )
            # Columns that were only the leavers' history are padding for everyone left: drop them, or a
            # batch that keeps admitting would grow without bound.
            first = int(self.attention.any(0).int().argmax())
            if first:
                for layer in self.cache.layers:
                    layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
                self.attention = self.attention[:, first:]
        return self

    def merge(self, other: _Batch) -> _Batch:
        """Append `other`'s rows; the shorter side's cache and mask are left-padded (masked) to match."""
        mine, theirs = self.attention.shape[1], other.attention.shape[1]
        self._left_pad(max(0, theirs - mine))
        other._left_pad(max(0, mine - theirs))
        for a, b in zip(self.cache.layers, other.cache.layers):
            a.keys, a.values = torch.cat([a.keys, b.keys]), torch.cat([a.values, b.values])
        self.attention = torch.cat([self.attention, other.attention])
        self.step_input = torch.cat([self.step_input, other.step_input])
        self.rows, self.rngs, self.stop_ids = (
            self.rows + other.rows,
            self.rngs + other.rngs,
            self.stop_ids + other.stop_ids,
        )
        return self

    def _left_pad(self, n: int) -> None:
        if n:
            for layer in self.cache.layers:
                layer.keys = torch.nn.functional.pad(layer.keys, (0, 0, n, 0))
                layer.values = torch.nn.functional.pad(layer.values, (0, 0, n, 0))
            self.attention = torch.nn.functional.pad(self.attention, (n, 0))


class HFGenerator:
    """Local generation: continuous batching over transformers' KV cache."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int = 8,
        max_context: int | None = None,
        overflow: str = "error",
        prefill_chunk: int = 512,
    ):
        """`overflow`: what a prompt longer than the context gets: "error" (ValueError) or "skip"
        (an empty completion with finish_reason "context", so a benchmark scores it as failed).
        `prefill_chunk`: a request that joins a running batch has its prompt fed this many tokens
        per decode step, so a long prompt delays the running rows by one chunk at a time."""
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        self.prefill_chunk = prefill_chunk
        if overflow not in ("error", "skip"):
            raise ValueError(f"overflow must be 'error' or 'skip', got {overflow!r}")
        self.overflow = overflow
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_context = max_context or getattr(model.config, "max_position_embeddings", None)
        self.device = next(model.parameters()).device

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | os.PathLike,
        *,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        batch_size: int = 8,
        max_context: int | None = None,
        overflow: str = "error",
        prefill_chunk: int = 512,
    ) -> HFGenerator:
        from codellama.checkpoint import load_model
        from codellama.tokenizer import load_tokenizer

        if dtype is None:
            dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        return cls(
            load_model(model_dir, dtype=dtype, device=device),
            load_tokenizer(model_dir),
            batch_size=batch_size,
            max_context=max_context,
            overflow=overflow,
            prefill_chunk=prefill_chunk,
        )

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.suffix is None:  # a completion prompt may be a rendered chat template: its special tokens count
            return self.tokenizer.encode(request.prompt, bos=True, special=True)
        return self.tokenizer.infilling_prompt(request.prompt, request.suffix, suffix_first=request.suffix_first)

    def stop_ids(self, request: GenerationRequest) -> set[int]:
        return set(self.tokenizer.end_ids)  # EOS, <EOT> (when the tokenizer has one), the base's end-of-text tokens

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_text: OnText | None = None,
        is_cancelled: IsCancelled | None = None,
        on_done: OnDone | None = None,
        admit: Admit | None = None,
    ) -> list[Completion]:
        """Complete `requests` (row i = requests[i]); returns their completions in order.

        `on_done(i, completion)` fires as soon as row i finishes. `admit(free)` makes this
        continuous batching: between decode steps it may return up to `free` new requests, which
        join the running batch and get the next row numbers (len(requests), then up); their
        results arrive only through `on_done`.
        """
        rows = [_Row(i, r, self.prompt_ids(r)) for i, r in enumerate(requests)]
        fits = [r for r in rows if self._fits(r)]
        if len(fits) < len(rows):
            if self.overflow == "error":
                longest = max(len(r.prompt_ids) for r in rows)
                raise ValueError(f"prompt of {longest} tokens exceeds the model's context of {self.max_context}")
            for row in set(rows) - set(fits):
                row.finish = "context"
                _report(row, on_done)
            log.warning(
                "%d prompt(s) longer than the model's context of %d tokens: left empty",
                len(rows) - len(fits),
                self.max_context,
            )
        # Similar lengths together: less padding per batch.
        order = sorted(fits, key=lambda r: len(r.prompt_ids))
        next_index = [len(rows)]
        for start in range(0, len(order), self.batch_size):
            self._generate_batch(
                order[start : start + self.batch_size], on_text, is_cancelled, on_done, admit, next_index
            )
        return [_completion(r) for r in rows]

    def _fits(self, row: _Row) -> bool:
        """Room for at least one new token after the prompt."""
        return not self.max_context or len(row.prompt_ids) < self.max_context

    def _admit(self, admit: Admit, free: int, next_index: list[int], on_done: OnDone | None) -> list[_Row]:
        """New rows for a running batch; one whose prompt fills the context is answered at once."""
        rows = []
        for request in admit(free):
            row = _Row(next_index[0], request, self.prompt_ids(request))
            next_index[0] += 1
            if not self._fits(row):
                row.finish = "context"
                _report(row, on_done)
            else:
                rows.append(row)
        return rows

    @torch.inference_mode()
    def _generate_batch(
        self,
        rows: list[_Row],
        on_text: OnText | None,
        is_cancelled: IsCancelled | None,
        on_done: OnDone | None,
        admit: Admit | None,
        next_index: list[int],
    ) -> None:
        """Decode `rows` together (left-padded, one KV cache); rows leave when done, admitted ones join.

        Joining rows are prefilled alongside: one `prefill_chunk` of their prompts per decode step
        of the running rows, then merged into the batch.
        """
        state = self._start(rows, on_done)
        if state is not None:  # nothing runs yet: the whole prompt in one pass
            state.prefill_step(self.model)
            state = self._first_tokens(state, on_text, is_cancelled, on_done)
        joining: _Batch | None = None
        while True:
            busy = (len(state.rows) if state else 0) + (len(joining.rows) if joining else 0)
            if admit is not None and joining is None and busy < self.batch_size:
                joining = self._start(self._admit(admit, self.batch_size - busy, next_index, on_done), on_done)
            if joining is not None and joining.prefill_step(self.model, self.prefill_chunk if state else None):
                newcomer, joining = self._first_tokens(joining, on_text, is_cancelled, on_done), None
                state = newcomer if state is None else state.merge(newcomer) if newcomer else state
            if state is None:
                if joining is None:
                    return
                continue
            state.step(self.model)
            self._accept(state, state.sample(), on_text, is_cancelled, on_done)
            state = state.keep_unfinished()

    def _start(self, rows: list[_Row], on_done: OnDone | None) -> _Batch | None:
        """A batch for `rows` with their prompts left-padded, not yet run; rows with no room are answered."""
        for row in rows:  # each row's positions are its own (left padding), so each has its own room
            if not self._fits(row):
                raise ValueError(
                    f"prompt of {len(row.prompt_ids)} tokens exceeds the model's context of {self.max_context}"
                )
            room = self.max_context - len(row.prompt_ids) if self.max_context else 1 << 62
            row.budget = min(row.request.params.max_new_tokens, room)
            if row.budget <= 0:
                row.finish = "length"
                _report(row, on_done)
        rows = [r for r in rows if not r.finish]
        if not rows:
            return None
        longest = max(len(r.prompt_ids) for r in rows)
        input_ids = torch.full((len(rows), longest), self.tokenizer.eos_id, dtype=torch.long)
        attention = torch.zeros((len(rows), longest), dtype=torch.long)
        for b, row in enumerate(rows):  # left padding: every row's next token is at the same column
            input_ids[b, longest - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
            attention[b, longest - len(row.prompt_ids) :] = 1
        return _Batch(
            rows,
            input_ids.to(self.device),
            attention.to(self.device),
            [self.stop_ids(r.request) for r in rows],
            self.model.config,
            self.device,
        )

    def _first_tokens(
        self, batch: _Batch, on_text: OnText | None, is_cancelled: IsCancelled | None, on_done: OnDone | None
    ) -> _Batch | None:
        """After the prompt: each row's first token (some rows may finish right there)."""
        self._accept(batch, batch.sample(), on_text, is_cancelled, on_done)
        return batch.keep_unfinished()

    def _accept(
        self,
        batch: _Batch,
        tokens: torch.Tensor,
        on_text: OnText | None,
        is_cancelled: IsCancelled | None,
        on_done: OnDone | None,
    ) -> None:
        """Apply one sampled token per row: stop, budget, cancellation, streamed text."""
        for b, row in enumerate(batch.rows):
            if is_cancelled is not None and is_cancelled(row.index):
                row.finish = "cancelled"
            else:
                token = int(tokens[b])
                if token in batch.stop_ids[b]:
                    row.finish = "stop"
                else:
                    row.ids.append(token)
                    self._update_text(row, on_text)
                    if not row.finish and len(row.ids) >= row.budget:  # max_new_tokens or the context's end
                        row.finish = "length"
            if row.finish:
                if on_text is not None:
                    self._flush(row, on_text)
                _report(row, on_done)

    def _update_text(self, row: _Row, on_text: OnText | None) -> None:
        # Continuations are decoded without the dummy prefix: the first piece's leading
        # space belongs to the text ("▁return" after "):\n   " is " return").
        text = self.tokenizer.decode_infilling(row.ids)
        stop = row.request.params.stop
        text, hit = truncate_at_stop(text, stop)
        row.text = text
        if hit:
            row.finish = "stop"
            return
        if on_text is not None:
            safe = len(text) - _stop_holdback(text, stop)
            # A trailing U+FFFD may be a multi-byte character still being assembled from byte pieces.
            while safe > row.emitted and text[safe - 1] == "\ufffd":
                safe -= 1
            if safe > row.emitted:
                on_text(row.index, text[row.emitted : safe])
                row.emitted = safe

    @staticmethod
    def _flush(row: _Row, on_text: OnText) -> None:
        if len(row.text) > row.emitted:
            on_text(row.index, row.text[row.emitted :])
            row.emitted = len(row.text)


class OpenAIGenerator:
    """Any OpenAI-compatible `/v1/completions` endpoint, through the `openai` client."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        max_workers: int = 8,
        timeout: float = 600.0,
    ):
        from openai import OpenAI

        self.client = OpenAI(
            base_url=base_url.rstrip("/"),
            api_key=api_key or os.environ.get("OPENAI_API_KEY", "EMPTY"),
            timeout=timeout,
            max_retries=3,
        )
        self.model = model or self._first_model()
        self.max_workers = max_workers

    def _first_model(self) -> str:
        try:
            models = self.client.models.list().data
        except Exception as exc:
            raise ValueError(
                f"cannot list models at the endpoint ({type(exc).__name__}: {exc}); pass a model name"
            ) from None
        if not models:
            raise ValueError("the endpoint lists no models; pass a model name")
        return models[0].id

    def _one(
        self, index: int, request: GenerationRequest, on_text: OnText | None, is_cancelled: IsCancelled | None
    ) -> Completion:
        p = request.params
        kwargs = dict(
            model=self.model,
            prompt=request.prompt,
            max_tokens=p.max_new_tokens,
            temperature=p.temperature,
            top_p=p.top_p,
        )
        if p.stop:
            kwargs["stop"] = list(p.stop)[:4]  # the API allows at most 4; the rest are applied below
        if p.seed is not None:
            kwargs["seed"] = p.seed
        if request.suffix is not None:
            kwargs["suffix"] = request.suffix
        if on_text is None and is_cancelled is None:
            choice = self.client.completions.create(**kwargs).choices[0]
            text, finish = choice.text, choice.finish_reason or "stop"
        else:
            text, finish = "", "length"
            for chunk in self.client.completions.create(stream=True, **kwargs):
                if is_cancelled is not None and is_cancelled(index):
                    finish = "cancelled"
                    break
                if chunk.choices:
                    delta = chunk.choices[0].text or ""
                    text += delta
                    if delta and on_text is not None:
                        on_text(index, delta)
                    finish = chunk.choices[0].finish_reason or finish
        text, hit = truncate_at_stop(text, p.stop)
        return Completion(text, [], "stop" if hit else finish, 0)

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_text: OnText | None = None,
        is_cancelled: IsCancelled | None = None,
        on_done: OnDone | None = None,
    ) -> list[Completion]:
        from concurrent.futures import ThreadPoolExecutor

        def one(i: int, request: GenerationRequest) -> Completion:
            completion = self._one(i, request, on_text, is_cancelled)
            if on_done is not None:
                on_done(i, completion)
            return completion

        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            futures = [pool.submit(one, i, r) for i, r in enumerate(requests)]
            return [f.result() for f in futures]


def load_generator(
    model_dir: str | os.PathLike | None = None,
    endpoint: str | None = None,
    *,
    endpoint_model: str | None = None,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    batch_size: int = 8,
    max_context: int | None = None,
    overflow: str = "error",
) -> Generator:
    """`max_context` overrides the checkpoint's context limit (to measure extrapolation); `overflow`
    says what an over-long prompt gets (see HFGenerator)."""
    if (model_dir is None) == (endpoint is None):
        raise ValueError("give exactly one of a model directory or an endpoint URL")
    if endpoint is not None:
        return OpenAIGenerator(endpoint, model=endpoint_model)
    return HFGenerator.from_pretrained(
        model_dir, device=device, dtype=dtype, batch_size=batch_size, max_context=max_context, overflow=overflow
    )
