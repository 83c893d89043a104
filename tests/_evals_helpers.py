"""Helpers for the evals tests: processes of a sandbox uid, a scripted OpenAI-compatible server.

No `from __future__ import annotations` here: fastapi reads the handlers' annotations at runtime.
"""

import os
import socket
import threading
import time
from contextlib import contextmanager


def sandbox_processes(uids: set[int]) -> list[int]:
    """Host pids running as any of the sandbox uids (should be none once a pool is closed)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid in uids:
                    found.append(int(name))
            except OSError:
                pass
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def scripted_completions_server(answer, *, delay: float = 0.0, model: str = "test-double"):
    """A TEST DOUBLE of an OpenAI-compatible /v1/completions endpoint on 127.0.0.1 (fastapi+uvicorn, a thread).

    `answer(prompt) -> text` scripts the completions. Yields (base_url, request_log).
    """
    import uvicorn
    from fastapi import FastAPI, Request

    app, log = FastAPI(), []

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "test"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        import asyncio

        body = await request.json()
        log.append(body)
        if delay:
            await asyncio.sleep(delay)
        text = answer(body["prompt"])
        for stop in body.get("stop") or []:
            if stop in text:
                text = text[: text.index(stop)]
        return {
            "id": f"cmpl-{len(log)}",
            "object": "text_completion",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1", log
    finally:
        server.should_exit = True
        thread.join(timeout=10)
