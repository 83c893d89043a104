"""The serving engine: requests from any thread in, one worker thread generating them, nothing about HTTP.

`Engine.submit` queues a request with the `Sink` that hears its text and completion (the server's sink
hands them to its event loop). The worker keeps one `Decoder` busy: waiting requests join the decoding
batch as rows free up (continuous batching; `continuous=False` lets a batch run to its end first), a
cancelled request leaves at the next step, and a request that fails fails alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections import Counter, deque

from codellama.generation.hf import HFGenerator
from codellama.generation.protocol import Completion, GenerationRequest, Sink

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """More requests are waiting than the engine accepts: the caller should retry later."""


class Job(Sink):
    """One submitted request: its timings and cancellation, between the caller's sink and the decoder."""

    def __init__(self, request: GenerationRequest, sink: Sink | None = None):
        self.request, self.sink = request, sink or Sink()
        self._cancel = False
        self._engine: Engine | None = None
        self.t_submit = time.perf_counter()
        self.t_start: float | None = None  # admitted into the batch
        self.t_first: float | None = None  # first text
        self.t_done: float | None = None
        self.completion: Completion | None = None
        self.cancel_step: int | None = None  # the engine's step count when cancel() was called
        self.done_step: int | None = None

    def cancel(self) -> None:
        """Stop generating for this request (its row leaves the batch at the next step)."""
        if not self._cancel and self._engine is not None:
            self.cancel_step = self._engine.steps
        self._cancel = True

    def cancelled(self) -> bool:
        return self._cancel or self.sink.cancelled()

    def text(self, delta: str) -> None:
        if self.t_first is None:
            self.t_first = time.perf_counter()
        self.sink.text(delta)

    def done(self, completion: Completion) -> None:
        self.t_done, self.completion = time.perf_counter(), completion
        if self._engine is not None:
            self.done_step = self._engine.steps
            self._engine.recent.append(self)
        self.sink.done(completion)


class Engine:
    """A queue in front of an `HFGenerator`'s decoder, drained by one worker thread."""

    def __init__(self, generator: HFGenerator, *, max_queue: int = 64, continuous: bool = True):
        self.generator = generator
        self.max_queue, self.continuous = max_queue, continuous
        self.tokenizer, self.max_context = generator.tokenizer, generator.max_context
        self.decoder = generator.decoder()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.batches = 0  # times the decoder went from idle to busy
        self.recent: deque[Job] = deque(maxlen=256)  # the last jobs answered (diagnostics, tests)

    @property
    def steps(self) -> int:
        return self.decoder.steps

    @property
    def finished(self) -> Counter[str]:
        """Finish reasons so far ("stop", "length", "cancelled", "error", ...)."""
        return self.decoder.finished

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="generation-engine", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def prepare(self, request: GenerationRequest) -> GenerationRequest:
        """The request with its prompt tokenized: call it off any event loop (it is the slow part of accepting
        a request), then check the prompt's length against your own limits. ValueError for an empty prompt
        or a token id the model does not have."""
        ids = self.generator.prompt_ids(request)
        self.generator.check_ids(ids)
        return dataclasses.replace(request, prompt_ids=tuple(ids))

    def submit(self, request: GenerationRequest, sink: Sink | None = None) -> Job:
        """Queue a request; QueueFull when `max_queue` are already waiting."""
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull(f"server busy: {self.max_queue} requests are already waiting; retry later")
        job = Job(request, sink)
        job._engine = self
        self._queue.put(job)
        return job

    # -- the worker ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            if not self.decoder.busy:
                job = self._queue.get()  # idle: wait for work
                if job is None:
                    return
                self.batches += 1
                self._admit(job)
                if not self._take():
                    return
            elif self.continuous and not self._take():  # static batching: only an idle decoder takes more
                return
            try:
                self.decoder.step()
            except Exception as exc:  # a bug in a step: its rows fail, the engine goes on
                log.exception("a decode step failed")
                self._abort(exc)

    def _take(self) -> bool:
        """Admit waiting jobs into the free rows, without blocking; False on the shutdown marker."""
        while self.decoder.free:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return True
            if job is None:
                return False
            self._admit(job)
        return True

    def _admit(self, job: Job) -> None:
        job.t_start = time.perf_counter()
        self.decoder.add(job.request, job)

    def _abort(self, exc: Exception) -> None:
        old, self.decoder = self.decoder, self.generator.decoder()
        self.decoder.steps, self.decoder.finished = old.steps, old.finished
        rows = list(old.waiting) + [r for b in (old.joining, old.running) if b is not None for r in b.rows]
        for row in rows:
            row.finish, row.error = "error", f"generation failed: {type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                old._finish(row)


__all__ = ["Engine", "Job", "QueueFull"]
