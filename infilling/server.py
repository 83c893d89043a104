"""The editor HTTP API: llama.cpp's `/infill` and `/completion`, OpenAI's `/v1/completions`, on one model.

This module only translates JSON. A request is checked at the edge (a one-line JSON 4xx naming the
field), turned into `GenerationRequest`s (the prompt tokenized and fitted in a worker thread, off the
event loop), submitted to the generation engine (`codellama.generation.engine`: batching, admission,
cancellation, prompt cache), and its answers are written back in the client's format. A client that
closes its connection cancels its rows at the next decode step, streaming or not.

Template-based clients may write Code Llama's infilling markers in a plain prompt
(`<PRE> {prefix} <SUF>{suffix} <MID>`): with `codellama serve --fim-markers`, or `"fim_markers": true`
in a request, such a prompt becomes a real infilling request instead of text.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from codellama.generation import SEED_LIMIT, Completion, GenerationRequest, SamplingParams, Sink, truncate_at_stop
from codellama.generation.engine import Engine, Job, QueueFull
from infilling.inference import FitLimits, fit_infill, split_fim_markers

log = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True)
class ServerConfig:
    """Limits, batching and prompt handling of one server; every limit answers with a 4xx, not a crash."""

    model_name: str = "codellama"
    max_prompt_tokens: int | None = None  # None: the model's context minus the room kept for generating
    max_tokens: int = 512  # the most new tokens one request may ask for
    default_max_tokens: int = 16  # OpenAI's default for /v1/completions
    max_queue: int = 64  # waiting requests beyond this get 429
    max_batch: int = 8  # rows decoding together
    max_completions: int = 8  # the largest n_cmpl
    continuous: bool = True  # requests join a decoding batch; False: each batch runs to its end first
    max_body_bytes: int = 4 << 20
    suffix_first: bool = False  # SPM prompts instead of PSM for infilling
    fim_window: int = 2048  # llama.cpp's n_batch: /infill's prefix gets 3/4 of it, its suffix the rest
    fim_markers: bool = False  # read <PRE>/<SUF>/<MID> in plain prompts as infilling markers
    prompt_cache_mb: int | None = None  # KV of recent prompts for `cache_prompt` (0: none; None: two full contexts)
    prefill_chunk: int = 512  # prompt tokens per step: a cancelled prefill stops within one chunk


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


def error_body(status: int, message: str, kind: str, param: str | None = None) -> dict:
    # OpenAI's error shape; llama.cpp clients read the same "error.message".
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def _error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(error_body(exc.status, exc.message, exc.kind, exc.param), status_code=exc.status)


# -- the body limit: a pure ASGI middleware (it leaves `receive` to the app, so disconnects are seen) ----


class BodyLimit:
    """413 for a body over `max_bytes`, declared (Content-Length) or streamed (chunked uploads)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await _error_response(self._too_large(f"{int(declared)} bytes"))(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large(f"more than {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)

    def _too_large(self, size: str) -> APIError:
        return APIError(413, f"request body of {size} is over the limit of {self.max_bytes}")


# -- request bodies ----------------------------------------------------------------------------------

_BODY = ConfigDict(extra="ignore", allow_inf_nan=False)


class StreamOptions(BaseModel):
    model_config = _BODY
    include_usage: bool = False


class CompletionBody(BaseModel):
    """OpenAI's legacy completions request (the fields this server honours; others are ignored).
    `top_k`, `min_p` (as vLLM and llama.cpp read them) and `fim_markers` are extensions."""

    model_config = _BODY
    prompt: str | list[str]
    suffix: str | None = None
    model: str | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=-1)
    min_p: float = Field(0.0, ge=0, le=1)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT)
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    fim_markers: bool | None = None


class LlamaCppBody(BaseModel):
    """llama.cpp's `/completion` options this server honours (others, like `samplers`, are ignored)."""

    model_config = _BODY
    n_predict: int = Field(-1, ge=-1)
    temperature: float = Field(0.8, ge=0)
    top_k: int = Field(40, ge=-1)
    top_p: float = Field(0.95, gt=0, le=1)
    min_p: float = Field(0.05, ge=0, le=1)
    n_indent: int = Field(0, ge=0)
    t_max_predict_ms: float = Field(0, ge=0)
    stop: list[str] = []
    stream: bool = False
    seed: int = Field(-1, ge=-1, lt=SEED_LIMIT)
    cache_prompt: bool = True
    n_cmpl: int = Field(1, ge=1)
    return_tokens: bool = False
    response_fields: list[str] | None = None


class NativeCompletionBody(LlamaCppBody):
    prompt: str | list[int | str | list[int]]
    fim_markers: bool | None = None


class ExtraChunk(BaseModel):
    model_config = _BODY
    text: str
    filename: str = ""


class InfillBody(LlamaCppBody):
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[ExtraChunk] = []
    prompt: str = ""  # llama.cpp puts it after the prefix: the cursor's line so far


def _check_text(value, path: str = "") -> None:
    """400 naming the first string that cannot be UTF-8 (a lone surrogate such as "\\ud800")."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(400, f"{path or 'body'}: text with a lone surrogate (not UTF-16 text)", param=path) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, path)
            _check_text(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_text(item, f"{path}.{i}" if path else str(i))


def _validation_message(errors: list) -> str:
    parts = []
    for err in errors[:3]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        if err.get("type") == "json_invalid":
            return "request body is not valid JSON"
        if err.get("type") == "missing" and loc:
            parts.append(f"missing field '{loc}'")
        else:
            parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _parse_body(raw: bytes, model: type[BaseModel]):
    """JSON whatever the Content-Type says (curl -d sends form-encoded; llama.cpp accepts it too)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise APIError(400, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object")
    _check_text(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        param = ".".join(str(x) for x in errors[0].get("loc", ())) if errors else None
        raise APIError(400, _validation_message(errors), param=param) from None


# -- what a request becomes --------------------------------------------------------------------------


@dataclass
class Plan:
    """The engine requests for one HTTP request, and what the answer needs to say about them."""

    requests: list[GenerationRequest]
    prompts: list[str]  # the prompt text per request (llama.cpp's `prompt` field)
    truncated: bool = False


class _Row(Sink):
    """Hands one row's text and completion from the engine thread to the request's event loop."""

    def __init__(self, answers: Answers, index: int):
        self.answers, self.index = answers, index

    def _push(self, item: tuple) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: the server is shutting down
            self.answers.loop.call_soon_threadsafe(self.answers.events.put_nowait, item)

    def text(self, delta: str) -> None:
        self._push(("text", self.index, delta))

    def done(self, completion: Completion) -> None:
        self._push(("done", self.index, completion))


class Answers:
    """The rows of one HTTP request in the engine: their events as they come, cancellation when it ends."""

    def __init__(self, engine: Engine, plan: Plan, watch: Watch):
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.plan, self.jobs, self.watch = plan, [], watch
        try:
            for i, request in enumerate(plan.requests):
                self.jobs.append(engine.submit(request, _Row(self, i)))
        except QueueFull as exc:
            self.close()
            raise APIError(429, str(exc), "server_busy") from None
        watch.answers = self
        self.completions: list[Completion | None] = [None] * len(self.jobs)

    async def stream(self) -> AsyncIterator[tuple[str, int, object]]:
        """("text", i, delta) and ("done", i, completion) until every row is done."""
        left = len(self.jobs)
        while left:
            kind, i, value = await self.events.get()
            if kind == "done":
                self.completions[i], left = value, left - 1
            yield kind, i, value

    async def all_done(self) -> list[Completion]:
        """Every row's completion (a client that hangs up meanwhile cancels them: see `Watch`)."""
        try:
            async for _ in self.stream():
                pass
        finally:
            self.close()
        for c in self.completions:
            if c.finish_reason == "error":
                raise APIError(500, f"generation failed: {c.error}", "server_error")
        return self.completions

    def cancel(self) -> None:
        for job in self.jobs:
            if job.t_done is None:
                job.cancel()

    def close(self) -> None:
        """The response is over (finished or abandoned): stop generating for it, stop watching."""
        self.cancel()
        self.watch.stop()


class Watch:
    """Reads the connection's events once the body is in: a client that leaves (an editor cancels by closing
    the connection) cancels what it asked for, even while its prompt is still being prepared."""

    def __init__(self, request: Request):
        self.gone, self.answers = False, None
        self.task = asyncio.create_task(self._run(request))

    async def _run(self, request: Request) -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                if self.answers is not None:
                    log.info("client disconnected; cancelling its generation")
                    self.answers.cancel()
                return

    def stop(self) -> None:
        self.task.cancel()


async def _submit(request: Request, plan_method, body) -> Answers:
    """Plan off the event loop, then submit, unless the client left meanwhile."""
    watch, svc = Watch(request), _service(request)
    try:  # a request whose client left while it waited for a planner is not planned at all
        plan = await asyncio.get_running_loop().run_in_executor(
            svc.planners, lambda: None if watch.gone else plan_method(body)
        )
        if watch.gone:
            svc.closed_early += 1
            raise APIError(499, "the client closed the request", "client_closed")
        return Answers(svc.engine, plan, watch)
    except BaseException:
        watch.stop()
        raise


class Service:
    """Turns request bodies into engine requests and engine answers into response bodies."""

    def __init__(self, engine: Engine, config: ServerConfig):
        self.engine, self.config, self.tokenizer = engine, config, engine.tokenizer
        self.context = engine.max_context or 1 << 30
        # Room kept for generating: /infill prompts are fitted to the rest, whatever n_predict asks, so a
        # warm-up request (n_predict 0) builds the same prompt start as the keystrokes that follow it.
        self.reserve = min(config.max_tokens, self.context // 4)
        self.max_prompt = min(config.max_prompt_tokens or self.context, self.context - 1)
        self.closed_early = 0  # requests whose client left before they reached the engine
        # Tokenizing and fitting prompts happens here, off the event loop; two at a time, so a burst of
        # keystrokes does not take the CPU from the decoding thread.
        self.planners = ThreadPoolExecutor(max_workers=2, thread_name_prefix="plan")

    def budget(self, value: int | None, name: str, default: int) -> int:
        if value is None or value < 0:
            return default
        if value > self.config.max_tokens:
            raise APIError(400, f"{name}={value} is over this server's limit of {self.config.max_tokens}", param=name)
        return value

    def check_prompt(self, request: GenerationRequest, max_new: int, param: str) -> GenerationRequest:
        """Tokenized, and 400 unless it fits with `max_new` new tokens (-1: as many as fit)."""
        try:
            request = self.engine.prepare(request)
        except ValueError as exc:
            raise APIError(400, f"prompt: {exc}", param="prompt") from None
        n = len(request.prompt_ids)
        if n > self.max_prompt:
            raise APIError(400, f"prompt is {n} tokens; this server accepts at most {self.max_prompt}", param="prompt")
        room = self.context - n
        if max_new < 0:
            max_new = min(self.config.max_tokens, room)
        elif max_new > room:
            raise APIError(
                400,
                f"prompt of {n} tokens + {max_new} new tokens exceeds the model's context of {self.context}",
                param=param,
            )
        return dataclasses.replace(request, params=dataclasses.replace(request.params, max_new_tokens=max_new))

    def params(self, body, max_new: int, stop: list[str], seed: int | None) -> SamplingParams:
        try:
            return SamplingParams(
                max_new_tokens=max_new,
                temperature=body.temperature,
                top_p=body.top_p,
                top_k=max(0, body.top_k),
                min_p=body.min_p,
                stop=tuple(stop),
                seed=seed,
                n_indent=getattr(body, "n_indent", 0),
                time_limit_ms=getattr(body, "t_max_predict_ms", 0.0),
            )
        except ValueError as exc:
            raise APIError(400, str(exc)) from None

    def markers(self, prompt: str, flag: bool | None) -> tuple[str, str] | None:
        return split_fim_markers(prompt) if (self.config.fim_markers if flag is None else flag) else None

    # -- plans (run in a worker thread: tokenizing a large body must not stall the event loop) ----------

    def plan_openai(self, body: CompletionBody) -> Plan:
        if body.n != 1 or (body.best_of or 1) != 1:
            raise APIError(400, "only n=1 (and best_of=1) is supported", param="n")
        if body.echo or body.logprobs:
            raise APIError(400, "echo and logprobs are not supported", param="logprobs" if body.logprobs else "echo")
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise APIError(
                    400, "prompt must be one string (a list of several prompts is not supported)", param="prompt"
                )
            prompt = prompt[0]
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        max_new = self.budget(
            body.max_tokens, "max_tokens", min(self.config.default_max_tokens, self.config.max_tokens)
        )
        suffix = body.suffix
        if suffix is None and (split := self.markers(prompt, body.fim_markers)):
            prompt, suffix = split
        request = GenerationRequest(
            prompt,
            suffix=suffix,
            params=self.params(body, max_new, stop, body.seed),
            suffix_first=self.config.suffix_first,
            cache_prompt=True,
        )
        return Plan([self.check_prompt(request, max_new, "max_tokens")], [prompt])

    def plan_native(self, body: NativeCompletionBody) -> Plan:
        max_new = self.budget(body.n_predict, "n_predict", -1)
        params = self.params(body, max(max_new, 0), body.stop, None if body.seed < 0 else body.seed)
        prompts = body.prompt if isinstance(body.prompt, list) and _several(body.prompt) else [body.prompt]
        if not prompts or any(isinstance(p, list) and not p for p in prompts):
            raise APIError(400, "prompt: an empty list", param="prompt")
        self._check_completions(body.n_cmpl * len(prompts))
        requests, texts = [], []
        for prompt in prompts:
            ids, text, suffix = None, prompt, None
            if isinstance(prompt, list):  # token ids, maybe mixed with text
                bos = self.tokenizer.bos_id  # None for bases without one (byte-level BPE)
                ids = [bos] if prompt and isinstance(prompt[0], str) and bos is not None else []
                for part in prompt:
                    ids += self.tokenizer.encode(part) if isinstance(part, str) else [part]
                text = "".join(p for p in prompt if isinstance(p, str))
            elif split := self.markers(prompt, body.fim_markers):
                text, suffix = split
            request = GenerationRequest(
                text,
                suffix=suffix,
                params=params,
                suffix_first=self.config.suffix_first,
                prompt_ids=tuple(ids) if ids is not None else None,
                cache_prompt=body.cache_prompt,
            )
            request = self.check_prompt(request, max_new, "n_predict")
            requests += [request] * body.n_cmpl
            texts += [text] * body.n_cmpl
        return Plan(requests, texts)

    def plan_infill(self, body: InfillBody) -> Plan:
        if not (body.input_prefix or body.input_suffix or body.prompt or body.input_extra):
            raise APIError(400, "give input_prefix and/or input_suffix (both are empty)", param="input_prefix")
        self._check_completions(body.n_cmpl)
        max_new = self.budget(body.n_predict, "n_predict", -1)
        try:
            limits = FitLimits(min(self.context - self.reserve, self.max_prompt), self.config.fim_window)
            fitted = fit_infill(
                self.tokenizer,
                body.input_prefix,
                body.input_suffix,
                limits,
                middle=body.prompt,
                extra=[(c.filename, c.text) for c in body.input_extra],
                suffix_first=self.config.suffix_first,
            )
        except ValueError as exc:
            raise APIError(400, str(exc), param="n_predict") from None
        room = self.context - len(fitted.prompt_ids)
        max_new = min(self.config.max_tokens, room) if max_new < 0 else min(max_new, room)
        params = self.params(body, max_new, body.stop, None if body.seed < 0 else body.seed)
        request = GenerationRequest(
            fitted.prefix,
            suffix=fitted.suffix,
            params=params,
            suffix_first=self.config.suffix_first,
            prompt_ids=tuple(fitted.prompt_ids),
            cache_prompt=body.cache_prompt,
        )
        return Plan([request] * body.n_cmpl, [body.prompt] * body.n_cmpl, truncated=fitted.truncated)

    def _check_completions(self, n: int) -> None:
        if n > self.config.max_completions:
            raise APIError(
                400,
                f"n_cmpl asks for {n} completions; this server makes at most {self.config.max_completions}",
                param="n_cmpl",
            )

    # -- answers ------------------------------------------------------------------------------------

    def llama_cpp_result(self, answers: Answers, i: int, body: LlamaCppBody, content: str) -> dict:
        """llama.cpp's result object for row i (`content` is empty in a stream's last event)."""
        job, out, plan = answers.jobs[i], answers.completions[i], answers.plan
        stop_type, word = _stop_kind(job, out, self.tokenizer)
        n = len(out.token_ids)
        start = job.t_start or job.t_submit
        first = job.t_first or job.t_done or start
        end = job.t_done or time.perf_counter()
        prompt_ms, predicted_ms = (first - start) * 1e3, (end - first) * 1e3
        evaluated = out.prompt_tokens - out.cached_tokens
        p = job.request.params
        return {
            "index": i,
            "content": content,
            "tokens": out.token_ids if body.return_tokens else [],
            "id_slot": -1,
            "stop": True,
            "model": self.config.model_name,
            "tokens_predicted": n,
            "tokens_evaluated": out.prompt_tokens,
            "tokens_cached": out.cached_tokens,
            "truncated": plan.truncated,
            "has_new_line": "\n" in out.text,
            "prompt": plan.prompts[i],
            "generation_settings": {
                "n_ctx": self.context,
                "n_predict": p.max_new_tokens,
                "temperature": p.temperature,
                "top_k": p.top_k,
                "top_p": p.top_p,
                "min_p": p.min_p,
                "n_indent": p.n_indent,
                "t_max_predict_ms": p.time_limit_ms,
                "stop": list(p.stop),
                "seed": p.seed if p.seed is not None else -1,
                "cache_prompt": job.request.cache_prompt,
            },
            "stop_type": stop_type,
            "stopping_word": word,
            "stopped_eos": stop_type == "eos",
            "stopped_limit": stop_type == "limit",
            "stopped_word": stop_type == "word",
            "timings": {
                "cache_n": out.cached_tokens,
                "prompt_n": evaluated,
                "prompt_ms": prompt_ms,
                "prompt_per_token_ms": prompt_ms / evaluated if evaluated else 0.0,
                "prompt_per_second": evaluated / max(prompt_ms / 1e3, 1e-9),
                "predicted_n": n,
                "predicted_ms": predicted_ms,
                "predicted_per_token_ms": predicted_ms / n if n else 0.0,
                "predicted_per_second": n / (predicted_ms / 1e3) if n and predicted_ms > 0 else 0.0,
            },
        }


def _several(prompt: list) -> bool:
    """llama.cpp: a list of strings (or of token lists) is several prompts; one with token ids is one prompt."""
    return all(isinstance(p, str | list) for p in prompt)


def _stop_kind(job: Job, out: Completion, tokenizer) -> tuple[str, str]:
    """llama.cpp's stop_type ("eos" | "limit" | "word" | "none") and the stop string that ended it."""
    if out.finish_reason in ("length", "indent", "time"):
        return "limit", ""
    if out.finish_reason == "stop":
        stop = job.request.params.stop
        if stop and tokenizer is not None:
            full = tokenizer.decode_infilling(out.token_ids)
            cut = truncate_at_stop(full, stop)[0]
            if len(cut) < len(full):
                return "word", next(s for s in stop if full[len(cut) :].startswith(s))
        return "eos", ""
    return "none", ""


def _select_fields(result: dict, fields: list[str] | None) -> dict:
    """llama.cpp's `response_fields`: only the named (slash-separated) paths, keyed by path."""
    if not fields:
        return result
    out = {}
    for path in fields:
        value, found = result, True
        for part in path.split("/"):
            if isinstance(value, dict) and part in value:
                value = value[part]
            else:
                found = False
                break
        if found:
            out[path] = value
    return out


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _usage(out: Completion) -> dict:
    n = len(out.token_ids)
    return {
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": n,
        "total_tokens": out.prompt_tokens + n,
        "prompt_tokens_details": {"cached_tokens": out.cached_tokens},
    }


def _openai_finish(out: Completion) -> str:
    return "length" if out.finish_reason == "length" else "stop"


# -- routes ------------------------------------------------------------------------------------------


def _service(request: Request) -> Service:
    return request.app.state.service


async def _read(request: Request, model: type[BaseModel]):
    try:
        raw = await request.body()
    except ClientDisconnect:
        _service(request).closed_early += 1
        raise APIError(499, "the client closed the request", "client_closed") from None
    return await asyncio.to_thread(_parse_body, raw, model)


async def health(request: Request):
    svc = _service(request)
    cache = svc.engine.generator.prompt_cache
    return {
        "status": "ok",
        "model": svc.config.model_name,
        "queued": svc.engine.queued,
        "batches": svc.engine.batches,
        "finished": dict(svc.engine.finished),
        "closed_before_start": svc.closed_early,
        "prompt_cache": {
            "entries": len(cache.entries) if cache else 0,
            "bytes": cache.nbytes if cache else 0,
            "hits": cache.hits if cache else 0,
            "reused_tokens": cache.reused_tokens if cache else 0,
        },
    }


async def models(request: Request):
    name = _service(request).config.model_name
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "codellama-toolkit"}]}


async def openai_completions(request: Request):
    svc = _service(request)
    body = await _read(request, CompletionBody)
    answers = await _submit(request, svc.plan_openai, body)
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(text: str, finish: str | None, usage: dict | None = None, choices: bool = True) -> dict:
        out = {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": svc.config.model_name,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}] if choices else [],
        }
        if usage is not None:
            out["usage"] = usage
        return out

    if not body.stream:
        [out] = await answers.all_done()
        return chunk(out.text, _openai_finish(out), _usage(out))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    answers.watch.stop()  # a stream notices a gone client when it writes

    async def events() -> AsyncIterator[str]:
        try:
            async for kind, _, value in answers.stream():
                if kind == "text":
                    yield _sse(chunk(value, None))
                elif value.finish_reason == "error":
                    yield _sse(error_body(500, f"generation failed: {value.error}", "server_error"))
                else:
                    yield _sse(chunk("", _openai_finish(value)))
                    if include_usage:
                        yield _sse(chunk("", None, _usage(value), choices=False))
                    yield "data: [DONE]\n\n"
        finally:
            answers.close()

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


async def infill(request: Request):
    svc = _service(request)
    body = await _read(request, InfillBody)
    return await _llama_cpp_answer(svc, body, await _submit(request, svc.plan_infill, body))


async def native_completion(request: Request):
    svc = _service(request)
    body = await _read(request, NativeCompletionBody)
    return await _llama_cpp_answer(svc, body, await _submit(request, svc.plan_native, body))


async def _llama_cpp_answer(svc: Service, body: LlamaCppBody, answers: Answers):
    """llama.cpp's answer: one result object, or an array of them (n_cmpl, several prompts)."""
    several = len(answers.plan.requests) > 1
    if not body.stream:
        outs = await answers.all_done()
        results = [
            _select_fields(svc.llama_cpp_result(answers, i, body, out.text), body.response_fields)
            for i, out in enumerate(outs)
        ]
        return results if several else results[0]
    answers.watch.stop()  # a stream notices a gone client when it writes

    async def events() -> AsyncIterator[str]:
        try:
            async for kind, i, value in answers.stream():
                if kind == "text":
                    yield _sse({"index": i, "content": value, "tokens": [], "stop": False})
                elif value.finish_reason == "error":
                    yield _sse(error_body(500, f"generation failed: {value.error}", "server_error"))
                else:
                    yield _sse(svc.llama_cpp_result(answers, i, body, ""))
        finally:
            answers.close()

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


async def _api_error(request: Request, exc: APIError):
    return _error_response(exc)


async def _invalid(request: Request, exc: RequestValidationError):
    return JSONResponse(error_body(400, _validation_message(exc.errors()), "invalid_request_error"), status_code=400)


async def _http_error(request: Request, exc: StarletteHTTPException):
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return JSONResponse(error_body(exc.status_code, message, kind), status_code=exc.status_code)


def create_app(engine: Engine, config: ServerConfig = ServerConfig()) -> FastAPI:
    """The app over a (not yet started) engine; the engine runs while the app does."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        await asyncio.to_thread(engine.close)
        app.state.service.planners.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="codellama infilling server", lifespan=lifespan)
    app.state.engine, app.state.config, app.state.service = engine, config, Service(engine, config)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/v1/models", models, methods=["GET"])
    app.add_api_route("/v1/completions", openai_completions, methods=["POST"])
    app.add_api_route("/completion", native_completion, methods=["POST"])
    app.add_api_route("/completions", native_completion, methods=["POST"])
    app.add_api_route("/infill", infill, methods=["POST"])
    return app


# -- running it -----------------------------------------------------------------------------------------


def build_app(model_dir, config: ServerConfig | None = None, *, device: str = "cpu", dtype=None) -> FastAPI:
    from pathlib import Path

    from codellama.generation import HFGenerator

    config = config or ServerConfig(model_name=Path(model_dir).resolve().name)
    generator = HFGenerator.from_pretrained(
        model_dir,
        device=device,
        dtype=dtype,
        batch_size=config.max_batch,
        prefill_chunk=config.prefill_chunk,
        prompt_cache_bytes=None if config.prompt_cache_mb is None else config.prompt_cache_mb << 20,
    )
    return create_app(Engine(generator, max_queue=config.max_queue, continuous=config.continuous), config)


def run_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8012, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


@contextlib.contextmanager
def serve_in_thread(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 30.0
) -> Iterator[str]:
    """Run `app` with uvicorn in a background thread (ephemeral port by default); yield its base URL."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


__all__ = [
    "APIError",
    "BodyLimit",
    "ServerConfig",
    "Service",
    "build_app",
    "create_app",
    "run_server",
    "serve_in_thread",
]
