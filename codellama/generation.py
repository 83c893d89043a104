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
    def generate(self, requests: Sequence[GenerationRequest], *, on_text: OnText | None = None,
                 is_cancelled: IsCancelled | None = None) -> list[Completion]: ...


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


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
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


class HFGenerator:
    """Local generation with a static batch and transformers' KV cache."""

    def __init__(self, model, tokenizer, *, batch_size: int = 8, max_context: int | None = None,
                 overflow: str = "error"):
        """`overflow`: what a prompt longer than the context gets: "error" (ValueError) or "skip"
        (an empty completion with finish_reason "context", so a benchmark scores it as failed)."""
        if overflow not in ("error", "skip"):
            raise ValueError(f"overflow must be 'error' or 'skip', got {overflow!r}")
        self.overflow = overflow
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_context = max_context or getattr(model.config, "max_position_embeddings", None)
        self.device = next(model.parameters()).device

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, *, device: str = "cpu", dtype: torch.dtype | None = None,
                        batch_size: int = 8, max_context: int | None = None, overflow: str = "error") -> "HFGenerator":
        from codellama.checkpoint import load_model, load_tokenizer

        if dtype is None:
            dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        return cls(load_model(model_dir, dtype=dtype, device=device), load_tokenizer(model_dir), batch_size=batch_size,
                   max_context=max_context, overflow=overflow)

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.suffix is None:
            return self.tokenizer.encode(request.prompt, bos=True)
        return self.tokenizer.infilling_prompt(request.prompt, request.suffix, suffix_first=request.suffix_first)

    def stop_ids(self, request: GenerationRequest) -> set[int]:
        ids = {self.tokenizer.eos_id}
        try:
            ids.add(self.tokenizer.eot_id)
        except KeyError:  # a plain Llama 2 tokenizer has no <EOT>
            pass
        return ids

    def generate(self, requests: Sequence[GenerationRequest], *, on_text: OnText | None = None,
                 is_cancelled: IsCancelled | None = None) -> list[Completion]:
        rows = [_Row(i, r, self.prompt_ids(r)) for i, r in enumerate(requests)]
        fits = [r for r in rows if not self.max_context or len(r.prompt_ids) < self.max_context]
        if len(fits) < len(rows):
            if self.overflow == "error":
                longest = max(len(r.prompt_ids) for r in rows)
                raise ValueError(f"prompt of {longest} tokens exceeds the model's context of {self.max_context}")
            for row in set(rows) - set(fits):
                row.finish = "context"
            log.warning("%d prompt(s) longer than the model's context of %d tokens: left empty",
                        len(rows) - len(fits), self.max_context)
        # Similar lengths together: less padding per batch.
        order = sorted(fits, key=lambda r: len(r.prompt_ids))
        for start in range(0, len(order), self.batch_size):
            self._generate_batch(order[start:start + self.batch_size], on_text, is_cancelled)
        return [Completion(r.text, r.ids, r.finish or "length", len(r.prompt_ids)) for r in rows]

    @torch.inference_mode()
    def _generate_batch(self, rows: list[_Row], on_text: OnText | None, is_cancelled: IsCancelled | None) -> None:
        from transformers import DynamicCache

        for row in rows:  # each row's positions are its own (left padding), so each has its own room
            room = self.max_context - len(row.prompt_ids) if self.max_context else None
            if room is not None and room <= 0:
                raise ValueError(f"prompt of {len(row.prompt_ids)} tokens exceeds the model's context of "
                                 f"{self.max_context}")
            row.budget = min(row.request.params.max_new_tokens, room if room is not None else 1 << 62)
        max_new = max(r.budget for r in rows)
        longest = max(len(r.prompt_ids) for r in rows)
        pad = self.tokenizer.eos_id
        input_ids = torch.full((len(rows), longest), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), longest), dtype=torch.long)
        for b, row in enumerate(rows):  # left padding: every row's next token is at the same column
            input_ids[b, longest - len(row.prompt_ids):] = torch.tensor(row.prompt_ids)
            attention[b, longest - len(row.prompt_ids):] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        # One generator per seeded row: a sample's tokens depend on its seed, not on its batch-mates.
        rngs = []
        for r in rows:
            rng = None
            if r.request.params.seed is not None:
                rng = torch.Generator(device=self.device)
                rng.manual_seed(r.request.params.seed)
            rngs.append(rng)
        stop_ids = [self.stop_ids(r.request) for r in rows]
        cache = DynamicCache(config=self.model.config)
        step_input = input_ids
        for step in range(max_new):
            positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, -step_input.shape[1]:]
            out = self.model(input_ids=step_input, attention_mask=attention, position_ids=positions,
                             cache=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1, :]
            next_tokens = torch.empty(len(rows), dtype=torch.long, device=self.device)
            for b, row in enumerate(rows):
                p = row.request.params
                next_tokens[b] = sample_next(logits[b:b + 1], p.temperature, p.top_p, rngs[b])[0]
            for b, row in enumerate(rows):
                if row.finish:
                    continue
                if is_cancelled is not None and is_cancelled(row.index):
                    row.finish = "cancelled"
                    continue
                token = int(next_tokens[b])
                if token in stop_ids[b]:
                    row.finish = "stop"
                else:
                    row.ids.append(token)
                    self._update_text(row, on_text)
                    if not row.finish and len(row.ids) >= row.budget:  # max_new_tokens or the context's end
                        row.finish = "length"
                if row.finish and on_text is not None:
                    self._flush(row, on_text)
            alive = [b for b, row in enumerate(rows) if not row.finish]
            if not alive:
                break
            if len(alive) < len(rows):  # finished or cancelled rows leave the batch: no compute spent on them
                keep = torch.tensor(alive, device=self.device)
                cache.batch_select_indices(keep)
                attention, next_tokens = attention[keep], next_tokens[keep]
                rows, rngs, stop_ids = [rows[b] for b in alive], [rngs[b] for b in alive], [stop_ids[b] for b in alive]
            step_input = next_tokens[:, None]
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
        for row in rows:
            if not row.finish:
                row.finish = "length"
                if on_text is not None:
                    self._flush(row, on_text)

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
                on_text(row.index, text[row.emitted:safe])
                row.emitted = safe

    @staticmethod
    def _flush(row: _Row, on_text: OnText) -> None:
        if len(row.text) > row.emitted:
            on_text(row.index, row.text[row.emitted:])
            row.emitted = len(row.text)


class OpenAIGenerator:
    """Any OpenAI-compatible `/v1/completions` endpoint, through the `openai` client."""

    def __init__(self, base_url: str, *, model: str | None = None, api_key: str | None = None,
                 max_workers: int = 8, timeout: float = 600.0):
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url.rstrip("/"), api_key=api_key or os.environ.get("OPENAI_API_KEY", "EMPTY"),
                             timeout=timeout, max_retries=3)
        self.model = model or self._first_model()
        self.max_workers = max_workers

    def _first_model(self) -> str:
        try:
            models = self.client.models.list().data
        except Exception as exc:
            raise ValueError(f"cannot list models at the endpoint ({type(exc).__name__}: {exc}); pass a model name") from None
        if not models:
            raise ValueError("the endpoint lists no models; pass a model name")
        return models[0].id

    def _one(self, index: int, request: GenerationRequest, on_text: OnText | None,
             is_cancelled: IsCancelled | None) -> Completion:
        p = request.params
        kwargs = dict(model=self.model, prompt=request.prompt, max_tokens=p.max_new_tokens,
                      temperature=p.temperature, top_p=p.top_p)
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

    def generate(self, requests: Sequence[GenerationRequest], *, on_text: OnText | None = None,
                 is_cancelled: IsCancelled | None = None) -> list[Completion]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            futures = [pool.submit(self._one, i, r, on_text, is_cancelled) for i, r in enumerate(requests)]
            return [f.result() for f in futures]


def load_generator(model_dir: str | os.PathLike | None = None, endpoint: str | None = None, *,
                   endpoint_model: str | None = None, device: str = "cpu", dtype: torch.dtype | None = None,
                   batch_size: int = 8, max_context: int | None = None, overflow: str = "error") -> Generator:
    """`max_context` overrides the checkpoint's context limit (to measure extrapolation); `overflow`
    says what an over-long prompt gets (see HFGenerator)."""
    if (model_dir is None) == (endpoint is None):
        raise ValueError("give exactly one of a model directory or an endpoint URL")
    if endpoint is not None:
        return OpenAIGenerator(endpoint, model=endpoint_model)
    return HFGenerator.from_pretrained(model_dir, device=device, dtype=dtype, batch_size=batch_size,
                                       max_context=max_context, overflow=overflow)
