"""`OpenAIGenerator`: the `Generator` interface over any OpenAI-compatible `/v1/completions` endpoint
(vLLM, llama.cpp's server, TGI, our own server), through the `openai` client."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from codellama.generation.protocol import Completion, GenerationRequest, Sink
from codellama.generation.stopping import check_stop

MAX_API_STOPS = 4  # OpenAI's limit; the rest are applied here


class OpenAIGenerator:
    """Requests go out in parallel (`max_workers`); an infilling request is sent with the API's `suffix`.

    Stop rules the API lacks (more than 4 stop strings, `n_indent`, `time_limit_ms`) are applied to the
    text here; with a sink the request streams, so a rule that fires (or a cancellation) closes the stream.
    """

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

    def _kwargs(self, request: GenerationRequest) -> dict:
        p = request.params
        kwargs = dict(
            model=self.model,
            prompt=request.prompt,
            max_tokens=p.max_new_tokens,
            temperature=p.temperature,
            top_p=p.top_p,
        )
        if p.stop:
            kwargs["stop"] = list(p.stop)[:MAX_API_STOPS]
        if p.seed is not None:
            kwargs["seed"] = p.seed
        if request.suffix is not None:
            kwargs["suffix"] = request.suffix
        extra = {k: v for k, v in (("top_k", p.top_k), ("min_p", p.min_p)) if v}
        if extra:  # not OpenAI's, but vLLM and llama.cpp read them
            kwargs["extra_body"] = extra
        return kwargs

    def _one(self, request: GenerationRequest, sink: Sink | None) -> Completion:
        p, kwargs = request.params, self._kwargs(request)
        if sink is None:
            choice = self.client.completions.create(**kwargs).choices[0]
            text, why = check_stop(choice.text, 0, p, 0.0)
            return Completion(text, [], why or choice.finish_reason or "stop", 0)
        raw, text, sent, finish, t_first = "", "", 0, "length", None
        stream = self.client.completions.create(stream=True, **kwargs)
        try:
            for chunk in stream:
                if sink.cancelled():
                    finish = "cancelled"
                    break
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].text or ""
                t_first = t_first or time.perf_counter()
                new_from, raw = len(raw), raw + delta
                text, why = check_stop(raw, new_from, p, (time.perf_counter() - t_first) * 1e3)
                finish = why or chunk.choices[0].finish_reason or finish
                if len(text) > sent:
                    sink.text(text[sent:])
                    sent = len(text)
                if why:
                    break
        finally:
            stream.close()
        return Completion(text, [], finish, 0)

    def generate(self, requests: Sequence[GenerationRequest], sinks: Sequence[Sink] | None = None) -> list[Completion]:
        if sinks is not None and len(sinks) != len(requests):
            raise ValueError(f"{len(sinks)} sinks for {len(requests)} requests")

        def one(i: int) -> Completion:
            sink = sinks[i] if sinks else None
            completion = self._one(requests[i], sink)
            if sink is not None:
                sink.done(completion)
            return completion

        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            return list(pool.map(one, range(len(requests))))
