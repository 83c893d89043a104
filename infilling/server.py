"""The editor HTTP API: llama.cpp's `/infill` and OpenAI's `/v1/completions` on one model.

Editor plugins (llama.vim, llama.vscode, Continue) and the `openai` client talk to it
unchanged. Requests are validated on the event loop, queued, and a single worker thread
batches whatever is waiting into one `HFGenerator.generate` call (the one generation
path), streaming each row's text back to its request. Batching is continuous: a request
that arrives while a batch decodes joins it at the next step, and each request is answered
as soon as its own row finishes. A client that goes away cancels
its row; bad input gets a one-line JSON 4xx, never a dead server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from codellama.generation import Completion, GenerationRequest, SamplingParams, truncate_at_stop
from infilling.inference import with_extra_context

log = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True)
class ServerConfig:
    """Limits and batching of one server; every limit answers with a 4xx, not a crash."""

    model_name: str = "codellama"
    max_prompt_tokens: int | None = None  # None: the model's context minus one
    max_tokens: int = 512  # the most new tokens one request may ask for
    default_max_tokens: int = 16  # OpenAI's default for /v1/completions
    max_queue: int = 64  # waiting requests beyond this get 429
    max_batch: int = 8  # rows decoding together
    continuous: bool = True  # requests join a decoding batch; False: each batch runs to its end first
    max_body_bytes: int = 4 << 20
    suffix_first: bool = False  # SPM prompts instead of PSM for infilling


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


def error_body(status: int, message: str, kind: str, param: str | None = None) -> dict:
    # OpenAI's error shape; llama.cpp clients read the same "error.message".
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


# -- the batching engine ------------------------------------------------------------------


class Job:
    """One queued request: its events flow from the worker thread to the request's coroutine."""

    def __init__(self, request: GenerationRequest, prompt_tokens: int, loop: asyncio.AbstractEventLoop):
        self.request, self.prompt_tokens, self.loop = request, prompt_tokens, loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.t_submit = time.perf_counter()
        self.t_start: float | None = None
        self.t_first: float | None = None
        self.t_done: float | None = None
        self.watcher: asyncio.Task | None = None

    def cancel(self) -> None:
        self.cancelled = True

    def _push(self, item: tuple) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: the server is shutting down
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)

    def text(self, delta: str) -> None:
        if self.t_first is None:
            self.t_first = time.perf_counter()
        self._push(("text", delta))

    def done(self, completion: Completion) -> None:
        self.t_done = time.perf_counter()
        self._push(("done", completion))

    def fail(self, message: str) -> None:
        self._push(("error", message))

    async def stream(self) -> AsyncIterator[tuple[str, object]]:
        while True:
            kind, value = await self.events.get()
            yield kind, value
            if kind != "text":
                return


class BatchingEngine:
    """A queue in front of an `HFGenerator`, drained by one worker thread in batches."""

    def __init__(self, generator, *, max_batch: int = 8, max_queue: int = 64, continuous: bool = True):
        self.generator = generator
        self.max_batch, self.max_queue, self.continuous = max_batch, max_queue, continuous
        self.max_context = getattr(generator, "max_context", None)
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.batches = 0  # generate calls so far
        self.finished: Counter[str] = Counter()  # finish reasons so far ("stop", "length", "cancelled", "error")

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="infill-worker", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return len(self.generator.prompt_ids(request))

    def submit(self, job: Job) -> None:
        if self._queue.qsize() >= self.max_queue:
            raise APIError(
                429, f"server busy: {self.max_queue} requests are already waiting; retry later", "server_busy"
            )
        self._queue.put(job)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first] if self._live(first) else []
            jobs += self._take(self.max_batch - len(jobs))
            if jobs:  # one batch: every row keeps its own positions, so any prompt lengths mix
                self._run(jobs)

    def _live(self, job: Job) -> bool:
        """False, with the job answered "cancelled", when its client left while it waited."""
        if job.cancelled:
            self.finished["cancelled"] += 1
            job.done(Completion("", [], "cancelled", job.prompt_tokens))
            return False
        return True

    def _take(self, limit: int) -> list[Job]:
        """Up to `limit` live waiting jobs, without blocking; the shutdown marker stays queued for the loop."""
        jobs: list[Job] = []
        while len(jobs) < limit:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)
                break
            if self._live(job):
                jobs.append(job)
        return jobs

    def _run(self, group: list[Job]) -> None:
        """One generate call; requests that arrive meanwhile join it (continuous batching)."""
        self.batches += 1
        start = time.perf_counter()
        for job in group:
            job.t_start = start
        answered: set[int] = set()

        def done(i: int, out: Completion) -> None:  # each request is answered when its own row finishes
            answered.add(i)
            self.finished[out.finish_reason] += 1
            group[i].done(out)

        try:
            self.generator.generate(
                [j.request for j in group],
                on_text=lambda i, d: group[i].text(d),
                is_cancelled=lambda i: group[i].cancelled,
                on_done=done,
                admit=(lambda free: self._admit(group, free)) if self.continuous else None,
            )
        except Exception as exc:  # a failed batch fails its requests, not the server
            log.exception("generation failed for a batch of %d", len(group))
            for i, job in enumerate(group):
                if i not in answered:
                    self.finished["error"] += 1
                    job.fail(f"generation failed: {type(exc).__name__}: {exc}")

    def _admit(self, group: list[Job], free: int) -> list[GenerationRequest]:
        """Waiting requests for the running batch, up to its free rows (their rows follow `group`'s)."""
        joining = self._take(free)
        start = time.perf_counter()
        for job in joining:
            job.t_start = start
        group.extend(joining)
        return [job.request for job in joining]


# -- request bodies -------------------------------------------------------------------------


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class CompletionBody(BaseModel):
    """OpenAI's legacy completions request (the fields this server honours; others are ignored)."""

    model_config = ConfigDict(extra="ignore")
    prompt: str | list[str]
    suffix: str | None = None
    model: str | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None


class ExtraChunk(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str
    filename: str = ""


class InfillBody(BaseModel):
    """llama.cpp's /infill request (the fields this server honours; others are ignored)."""

    model_config = ConfigDict(extra="ignore")
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[ExtraChunk] = []
    prompt: str = ""  # llama.cpp puts it after <MID>: the start of the middle, i.e. more prefix
    n_predict: int = -1
    temperature: float = 0.8
    top_p: float = 0.95
    stop: list[str] = []
    stream: bool = False
    seed: int = -1
    response_fields: list[str] | None = None


# -- the app --------------------------------------------------------------------------------


def create_app(engine: BatchingEngine, config: ServerConfig = ServerConfig()) -> FastAPI:
    context = engine.max_context
    max_prompt = config.max_prompt_tokens or ((context - 1) if context else 1 << 30)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        await asyncio.to_thread(engine.close)

    app = FastAPI(title="codellama infilling server", lifespan=lifespan)
    app.state.engine, app.state.config = engine, config

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return JSONResponse(error_body(exc.status, exc.message, exc.kind, exc.param), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return JSONResponse(
            error_body(400, _validation_message(exc.errors()), "invalid_request_error"), status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(error_body(exc.status_code, message, kind), status_code=exc.status_code)

    @app.middleware("http")
    async def _limit_body(request: Request, call_next):
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > config.max_body_bytes:
            return JSONResponse(
                error_body(
                    413,
                    f"request body of {size} bytes is over the limit of {config.max_body_bytes}",
                    "invalid_request_error",
                ),
                status_code=413,
            )
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "model": config.model_name,
            "queued": engine.queued,
            "batches": engine.batches,
            "finished": dict(engine.finished),
        }

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": config.model_name, "object": "model", "created": 0, "owned_by": "codellama-toolkit"}],
        }

    def admit(request: Request, gen: GenerationRequest, *, fit_budget: bool = False) -> Job:
        n = engine.count_prompt_tokens(gen)
        if n > max_prompt:
            raise APIError(400, f"prompt is {n} tokens; this server accepts at most {max_prompt}", param="prompt")
        if fit_budget and context and n + gen.params.max_new_tokens > context:  # "as many as fit"
            gen = dataclasses.replace(gen, params=dataclasses.replace(gen.params, max_new_tokens=max(0, context - n)))
        if context and n + gen.params.max_new_tokens > context:
            raise APIError(
                400,
                f"prompt of {n} tokens + {gen.params.max_new_tokens} new tokens exceeds the "
                f"model's context of {context}",
                param="max_tokens",
            )
        job = Job(gen, n, asyncio.get_running_loop())
        engine.submit(job)
        job.watcher = asyncio.create_task(_watch_disconnect(request, job))
        return job

    def budget(value: int | None, name: str, default: int) -> int:
        if value is None or value < 0:
            return default
        if value > config.max_tokens:
            raise APIError(400, f"{name}={value} is over this server's limit of {config.max_tokens}", param=name)
        return value

    # -- OpenAI completions --------------------------------------------------------------
    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _parse(request, CompletionBody)
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
        if not 0 <= body.temperature <= 2:
            raise APIError(400, "temperature must be between 0 and 2", param="temperature")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > 4:
            raise APIError(400, "at most 4 stop sequences are allowed", param="stop")
        params = _params(
            budget(body.max_tokens, "max_tokens", min(config.default_max_tokens, config.max_tokens)),
            body.temperature,
            body.top_p,
            stop,
            body.seed,
        )
        gen = GenerationRequest(prompt, suffix=body.suffix, params=params, suffix_first=config.suffix_first)
        job = admit(request, gen)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text: str, finish: str | None, usage: dict | None = None, choices: bool = True) -> dict:
            out = {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": config.model_name,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}] if choices else [],
            }
            if usage is not None:
                out["usage"] = usage
            return out

        if not body.stream:
            out = await _result(job)
            return chunk(out.text, _openai_finish(out), _usage(out))

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def events() -> AsyncIterator[str]:
            try:
                async for kind, value in job.stream():
                    if kind == "text":
                        yield _sse(chunk(value, None))
                    elif kind == "done":
                        yield _sse(chunk("", _openai_finish(value)))
                        if include_usage:
                            yield _sse(chunk("", None, _usage(value), choices=False))
                        yield "data: [DONE]\n\n"
                    else:
                        yield _sse(error_body(500, str(value), "server_error"))
            finally:
                _release(job)

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    # -- llama.cpp /infill -----------------------------------------------------------------
    @app.post("/infill")
    async def infill(request: Request):
        body = await _parse(request, InfillBody)
        if not (body.input_prefix or body.input_suffix or body.prompt):
            raise APIError(400, "give input_prefix and/or input_suffix (both are empty)", param="input_prefix")
        prefix = with_extra_context(body.input_prefix + body.prompt, [(c.filename, c.text) for c in body.input_extra])
        params = _params(
            budget(body.n_predict, "n_predict", config.max_tokens),
            body.temperature,
            body.top_p,
            body.stop,
            None if body.seed < 0 else body.seed,
        )
        gen = GenerationRequest(prefix, suffix=body.input_suffix, params=params, suffix_first=config.suffix_first)
        job = admit(request, gen, fit_budget=body.n_predict < 0)

        def final(out: Completion, content: str) -> dict:
            return _llama_cpp_result(job, out, content, config.model_name, engine)

        if not body.stream:
            out = await _result(job)
            result = final(out, out.text)
            return _select_fields(result, body.response_fields) if body.response_fields else result

        async def events() -> AsyncIterator[str]:
            try:
                async for kind, value in job.stream():
                    if kind == "text":
                        yield _sse({"index": 0, "content": value, "stop": False})
                    elif kind == "done":
                        yield _sse(final(value, ""))
                    else:
                        yield _sse(error_body(500, str(value), "server_error"))
            finally:
                _release(job)

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    return app


async def _parse(request: Request, model: type[BaseModel]):
    """JSON whatever the Content-Type says (curl -d sends form-encoded; llama.cpp accepts it too)."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise APIError(400, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise APIError(400, _validation_message(exc.errors())) from None


def _params(max_new: int, temperature: float, top_p: float, stop: list[str], seed: int | None) -> SamplingParams:
    try:
        return SamplingParams(max_new_tokens=max_new, temperature=temperature, top_p=top_p, stop=tuple(stop), seed=seed)
    except ValueError as exc:
        raise APIError(400, str(exc)) from None


async def _watch_disconnect(request: Request, job: Job, every: float = 0.1) -> None:
    """Cancel the job as soon as its client hangs up (checked while it waits or streams)."""
    while not job.cancelled:
        if await request.is_disconnected():
            log.info("client disconnected; cancelling its generation")
            job.cancel()
            return
        await asyncio.sleep(every)


def _release(job: Job) -> None:
    """The response is over (finished or abandoned): stop generating for it, stop watching."""
    if job.t_done is None:
        job.cancel()
    if job.watcher is not None:
        job.watcher.cancel()


async def _result(job: Job) -> Completion:
    try:
        async for kind, value in job.stream():
            if kind == "done":
                return value
            if kind == "error":
                raise APIError(500, str(value), "server_error")
    finally:
        _release(job)
    raise AssertionError("unreachable")


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _usage(out: Completion) -> dict:
    n = len(out.token_ids)
    return {"prompt_tokens": out.prompt_tokens, "completion_tokens": n, "total_tokens": out.prompt_tokens + n}


def _openai_finish(out: Completion) -> str:
    return "length" if out.finish_reason == "length" else "stop"


def _stop_kind(job: Job, out: Completion, tokenizer) -> tuple[str, str]:
    """llama.cpp's stop_type ("eos" | "limit" | "word" | "none") and the stop string that ended it."""
    if out.finish_reason == "length":
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


def _llama_cpp_result(job: Job, out: Completion, content: str, model: str, engine: BatchingEngine) -> dict:
    stop_type, word = _stop_kind(job, out, getattr(engine.generator, "tokenizer", None))
    n = len(out.token_ids)
    start = job.t_start or job.t_submit
    first = job.t_first or job.t_done or start
    end = job.t_done or time.perf_counter()
    prompt_ms, predicted_ms = (first - start) * 1e3, (end - first) * 1e3
    p = job.request.params
    return {
        "index": 0,
        "content": content,
        "tokens": [],
        "id_slot": 0,
        "stop": True,
        "model": model,
        "tokens_predicted": n,
        "tokens_evaluated": out.prompt_tokens,
        "tokens_cached": 0,
        "truncated": False,
        "has_new_line": "\n" in out.text,
        "prompt": "",
        "generation_settings": {
            "n_predict": p.max_new_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "stop": list(p.stop),
            "seed": p.seed if p.seed is not None else -1,
        },
        "stop_type": stop_type,
        "stopping_word": word,
        "stopped_eos": stop_type == "eos",
        "stopped_limit": stop_type == "limit",
        "stopped_word": stop_type == "word",
        "timings": {
            "prompt_n": out.prompt_tokens,
            "prompt_ms": prompt_ms,
            "prompt_per_second": out.prompt_tokens / max(prompt_ms / 1e3, 1e-9),
            "predicted_n": n,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_ms / n if n else 0.0,
            "predicted_per_second": n / (predicted_ms / 1e3) if n and predicted_ms > 0 else 0.0,
        },
    }


def _select_fields(result: dict, fields: list[str]) -> dict:
    """llama.cpp's `response_fields`: only the named (slash-separated) paths, keyed by path."""
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


# -- running it -------------------------------------------------------------------------------


def build_app(model_dir, config: ServerConfig | None = None, *, device: str = "cpu", dtype=None) -> FastAPI:
    from pathlib import Path

    from codellama.generation import HFGenerator

    config = config or ServerConfig(model_name=Path(model_dir).resolve().name)
    generator = HFGenerator.from_pretrained(model_dir, device=device, dtype=dtype, batch_size=config.max_batch)
    engine = BatchingEngine(
        generator, max_batch=config.max_batch, max_queue=config.max_queue, continuous=config.continuous
    )
    return create_app(engine, config)


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


__all__ = ["APIError", "BatchingEngine", "ServerConfig", "build_app", "create_app", "run_server", "serve_in_thread"]
