"""Dynamic batching: concurrent calls of one model and operation share one forward pass.

A `Batcher` owns a bounded queue and one worker task. The worker takes the oldest call, gathers
the calls that may share its pass (same key) up to `max_batch_size` rows, runs the pass in a
thread (the event loop never blocks on torch) and hands each caller its own rows.

How long to wait for companions: at most `max_wait`, and only while companions could still come.
The `ArrivalGate` counts requests inside the app that have not yet reached a batcher; once it is
zero, waiting is pointless and the pass starts. So a lone request is never delayed, and a burst of
concurrent requests fills one pass.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from service.core.errors import NotReadyError, OverloadedError, ServiceError, plural

log = logging.getLogger(__name__)


class Ticket:
    """A request inside the app that has not yet been queued for inference."""

    __slots__ = ("gate", "open")

    def __init__(self, gate: "ArrivalGate"):
        self.gate = gate
        self.open = True

    def close(self) -> None:
        if self.open:
            self.open = False
            self.gate.pending -= 1
            self.gate.notify()


CURRENT_TICKET: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("vae_ticket", default=None)


class ArrivalGate:
    """Counts requests that might still join a batch; wakes waiting batchers when that changes."""

    def __init__(self):
        self.pending = 0
        self._changed: asyncio.Event | None = None

    def enter(self) -> Ticket:
        self.pending += 1
        return Ticket(self)

    def notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def changed(self, timeout: float) -> None:
        """Return when a request arrives at a batcher or leaves the app, or after `timeout` seconds."""
        if self._changed is None:
            self._changed = asyncio.Event()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass


@dataclass(eq=False)
class _Job:
    call: Any  # has .rows and .key
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class BatchStats:
    """What one pass looked like, for metrics."""

    requests: int
    rows: int
    queue_seconds: list[float]
    run_seconds: float


class Batcher:
    """A queue and a worker for one (model, operation).

    Args:
        run: `run(calls) -> results`, one result per call, called in `executor`. Must be safe to
            call with any subset of a batch (a failed batch is retried call by call).
        observe: called with `BatchStats` after each pass.
    """

    def __init__(self, name: str, run: Callable[[list], list], *, executor: Executor, gate: ArrivalGate,
                 max_batch_size: int, max_wait_s: float, max_queue: int,
                 observe: Callable[[BatchStats], None] = lambda stats: None):
        self.name = name
        self.run = run
        self.executor = executor
        self.gate = gate
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.observe = observe
        self._queue: deque[_Job] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._seconds_per_pass = 0.01  # running estimate, for Retry-After
        self._worker = asyncio.get_running_loop().create_task(self._work(), name=f"batcher {name}")

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def idle(self) -> bool:
        """No call queued or in a pass."""
        return self._idle.is_set() and not self._queue

    async def submit(self, call) -> Any:
        """Queue a call and wait for its own result (raises what its pass raised)."""
        ticket = CURRENT_TICKET.get()
        if ticket is not None:
            ticket.close()  # this request can no longer join anything else
        if self._closing:
            raise NotReadyError(f"{self.name}: the server is shutting down")
        if len(self._queue) >= self.max_queue:
            passes_ahead = math.ceil(sum(j.call.rows for j in self._queue) / self.max_batch_size) + 1
            retry = max(1, math.ceil(passes_ahead * self._seconds_per_pass))
            raise OverloadedError(
                f"{self.name}: the queue is full ({plural(len(self._queue), 'request')}, VAE_MAX_QUEUE={self.max_queue}); "
                f"retry in {retry} s", retry)
        job = _Job(call, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._idle.clear()
        self._wake.set()
        self.gate.notify()
        return await job.future

    def _compatible(self) -> tuple[list[_Job], int]:
        """The oldest live call and those queued behind it that share its key, within max_batch_size."""
        while self._queue and self._queue[0].future.done():  # its caller went away
            self._queue.popleft()
        if not self._queue:
            return [], 0
        head = self._queue[0]
        picked, rows = [head], head.call.rows
        for job in list(self._queue)[1:]:
            if job.future.done() or job.call.key != head.call.key:
                continue
            if rows + job.call.rows > self.max_batch_size:
                break
            picked.append(job)
            rows += job.call.rows
        return picked, rows

    async def _gather(self) -> list[_Job]:
        while True:
            picked, rows = self._compatible()
            if not picked:
                return []
            remaining = picked[0].enqueued + self.max_wait_s - time.perf_counter()
            if rows >= self.max_batch_size or remaining <= 0 or self.gate.pending <= 0 or self._closing:
                for job in picked:
                    self._queue.remove(job)
                return picked
            await self.gate.changed(remaining)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            batch = await self._gather()
            if not batch:
                self._wake.clear()
                self._idle.set()
                continue
            started = time.perf_counter()
            calls = [job.call for job in batch]
            try:
                results = await loop.run_in_executor(self.executor, self.run, calls)
            except Exception as error:  # the pass failed: find out whose call it was
                results = await self._one_by_one(loop, calls, error)
            elapsed = time.perf_counter() - started
            self._seconds_per_pass = 0.8 * self._seconds_per_pass + 0.2 * elapsed
            for job, result in zip(batch, results):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)
            self.observe(BatchStats(len(batch), sum(c.rows for c in calls),
                                    [started - job.enqueued for job in batch], elapsed))

    async def _one_by_one(self, loop, calls: list, error: Exception) -> list:
        """Rerun a failed pass call by call, so one caller's failure is not its companions'."""
        if len(calls) == 1:
            if not isinstance(error, ServiceError):
                log.error("%s: a forward pass failed", self.name, exc_info=error)
            return [error]
        results = []
        for call in calls:
            try:
                results.append((await loop.run_in_executor(self.executor, self.run, [call]))[0])
            except Exception as single:
                if not isinstance(single, ServiceError):
                    log.error("%s: a forward pass failed", self.name, exc_info=single)
                results.append(single)
        return results

    async def close(self) -> None:
        """Refuse new calls, let queued and running ones finish, then stop the worker."""
        self._closing = True
        self.gate.notify()
        idle = asyncio.ensure_future(self._idle.wait())
        # Should the worker have died (a bug), there is nothing to wait for.
        await asyncio.wait([idle, self._worker], return_when=asyncio.FIRST_COMPLETED)
        idle.cancel()
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass
        except Exception:  # the worker died earlier: say so, and let shutdown go on
            log.exception("%s: the batch worker had stopped with an error", self.name)
