"""A bounded, fair pool of worker threads for CPU work that must stay off the event loop.

Token counting, compression and the embedder's input preparation grow with the input; on the
event loop a 3.5 MB prompt froze every other tenant for seconds (issue 15). They run here:

- **bounded**: ``threads`` workers (tiktoken and the HF tokenizer release the GIL), at most
  ``max_queued`` jobs waiting per tenant; a full queue answers with the caller's fallback at once;
- **fair**: each tenant has its own FIFO queue; a free worker serves the waiting tenant served
  least recently (round-robin), so one tenant's queued heavy work delays another tenant's job by
  at most the jobs already running;
- **budgeted**: a caller waits at most ``budget_s`` (queue wait included) and then takes its
  fallback (an estimate); a job still queued is dropped, one already running finishes unobserved;
- **contained**: any ``BaseException`` a job raises that is not an exit (a pyo3 ``PanicException``
  from tiktoken's regex on a megabyte of whitespace) becomes the fallback, never a lost connection.

Every outcome is counted in ``gateway_work_total{kind, outcome}``.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gateway.telemetry.metrics import Metrics

T = TypeVar("T")
log = logging.getLogger("gateway.work")

DEFAULT_THREADS = 2
DEFAULT_BUDGET_S = 2.0
DEFAULT_MAX_QUEUED = 32
INLINE_MAX_BYTES = 16 * 1024  # below this, counting on the loop costs less than a thread hop
_EXITS = (KeyboardInterrupt, SystemExit, GeneratorExit)
OUTCOMES = ("done", "over_budget", "queue_full", "failed", "inline")


class JobFailed(Exception):
    """A job raised (a bug, a tokenizer panic); the caller takes its fallback."""


@dataclass(slots=True, eq=False)
class _Job(Generic[T]):
    fn: Callable[[], T]
    future: asyncio.Future[T]
    holds_gil: bool = False
    cancelled: bool = False


def _meet(ready: threading.Barrier) -> None:
    """A start-up job: holds its thread until every worker thread exists (bounded wait)."""
    with contextlib.suppress(threading.BrokenBarrierError):
        ready.wait(timeout=5.0)


def _call(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a worker; any non-exit ``BaseException`` (tokenizer panic) becomes JobFailed."""
    try:
        return fn()
    except _EXITS:
        raise
    except BaseException as exc:  # noqa: BLE001 - pyo3's PanicException derives from BaseException
        raise JobFailed(type(exc).__name__) from exc


@dataclass(slots=True, kw_only=True)
class WorkPool:
    threads: int = DEFAULT_THREADS
    budget_s: float = DEFAULT_BUDGET_S
    max_queued: int = DEFAULT_MAX_QUEUED
    metrics: Metrics | None = None
    clock: Callable[[], float] = time.monotonic
    _queues: dict[str, deque[_Job[object]]] = field(default_factory=dict)
    # When each tenant with queued or running work was last served (a sequence number) and what runs.
    _served: dict[str, int] = field(default_factory=dict)
    _running: dict[str, int] = field(default_factory=dict)
    _seq: int = 0
    _busy: int = 0
    _gil_busy: int = 0  # jobs running that hold the GIL (at most one: see ``run``)
    _once: dict[str, asyncio.Future[object]] = field(default_factory=dict)
    _executor: ThreadPoolExecutor | None = None

    def count(self, kind: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.counter("gateway_work_total", "Off-loop work by kind and outcome",
                                 ("kind", "outcome")).labels(kind, outcome).inc()

    @property
    def busy(self) -> int:
        """Jobs running now."""
        return self._busy

    def queued(self, tenant: str) -> int:
        queue = self._queues.get(tenant)
        return len(queue) if queue is not None else 0

    def start(self) -> None:
        """Start the worker threads now, not on the first jobs: a thread started while others hold the
        GIL keeps the event loop waiting in ``Thread.start`` until it runs (seen under a 5 MB attack)."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="gateway-work")
        ready = threading.Barrier(self.threads)  # each submit meets no idle thread, so starts one
        for _ in range(self.threads):
            self._executor.submit(_meet, ready)

    async def run(self, tenant: str, kind: str, fn: Callable[[], T], fallback: Callable[[], T],
                  *, holds_gil: bool = False) -> T:
        """``fn()`` in a worker within the budget, else ``fallback()`` (counted either way).

        ``holds_gil``: ``fn`` is long C calls that keep the GIL (a JSON parse of megabytes). Such jobs
        run one at a time: two only queue behind each other for the GIL, and the event loop, which
        must take the GIL back between them, would wait behind both."""
        queue = self._queues.setdefault(tenant, deque())
        if len(queue) >= self.max_queued:
            self.count(kind, "queue_full")
            return fallback()
        job: _Job[T] = _Job(fn, asyncio.get_running_loop().create_future(), holds_gil)
        queue.append(job)  # type: ignore[arg-type]
        self._pump()
        try:
            result = await asyncio.wait_for(asyncio.shield(job.future), self.budget_s)
        except TimeoutError:
            job.cancelled = True
            self.count(kind, "over_budget")
            return fallback()
        except JobFailed as exc:
            log.warning("off-loop work failed; using the fallback",
                        extra={"fields": {"event": "work_failed", "kind": kind, "error": str(exc)}})
            self.count(kind, "failed")
            return fallback()
        except asyncio.CancelledError:
            job.cancelled = True
            raise
        self.count(kind, "done")
        return result

    def warm(self, key: str, fn: Callable[[], object]) -> asyncio.Future[object]:
        """Start ``fn`` in a thread unless it already runs for ``key`` (``once`` without waiting)."""
        future = self._once.get(key)
        if future is None:
            future = self._once[key] = asyncio.ensure_future(asyncio.to_thread(_call, fn))
            future.add_done_callback(self._warmed(key))
        return future

    def _warmed(self, key: str) -> Callable[[asyncio.Future[object]], None]:
        def done(future: asyncio.Future[object]) -> None:
            self._once.pop(key, None)
            if not future.cancelled():
                future.exception()  # retrieved: a failed load is raised again where it is used

        return done

    async def once(self, key: str, fn: Callable[[], object]) -> None:
        """Run ``fn`` (a one-time load, e.g. an encoding) in a thread, shared by every caller
        that asks for ``key`` meanwhile; not queued, not budgeted (callers need its result)."""
        future = self.warm(key, fn)
        try:
            await asyncio.shield(future)
        except JobFailed:
            pass  # the caller's own call raises the real error where it is handled

    def _pump(self) -> None:
        """Start queued jobs, round-robin over tenants, while a worker is free."""
        while self._busy < self.threads and (picked := self._next()) is not None:
            tenant, job = picked
            self._seq += 1
            self._served[tenant] = self._seq
            self._running[tenant] = self._running.get(tenant, 0) + 1
            self._start(tenant, job)

    def _next(self) -> tuple[str, _Job[object]] | None:
        """The next job to start: the head of the queue of the tenant served least recently whose head
        can start now (a GIL-holding job waits while another one runs; other tenants' jobs go first)."""
        for tenant in sorted(self._queues, key=lambda name: self._served.get(name, -1)):
            queue = self._queues[tenant]
            while queue and queue[0].cancelled:
                queue.popleft()
            if not queue:
                del self._queues[tenant]
                self._forget(tenant)
            elif not (queue[0].holds_gil and self._gil_busy):
                job = queue.popleft()
                if not queue:
                    del self._queues[tenant]
                return tenant, job
        return None

    def _forget(self, tenant: str) -> None:
        """Drop a tenant's bookkeeping once it has nothing queued or running (bounded by live tenants)."""
        if tenant not in self._queues and not self._running.get(tenant):
            self._running.pop(tenant, None)
            self._served.pop(tenant, None)

    def _start(self, tenant: str, job: _Job[object]) -> None:
        self.start()
        assert self._executor is not None
        self._busy += 1
        self._gil_busy += job.holds_gil
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._executor, _call, job.fn)

        def finished(fut: asyncio.Future[object]) -> None:
            self._busy -= 1
            self._gil_busy -= job.holds_gil
            self._running[tenant] -= 1
            self._forget(tenant)
            if job.cancelled or job.future.done():  # the caller took its fallback; drop the answer
                if not fut.cancelled():
                    fut.exception()  # retrieved, so an abandoned failure is not logged as unhandled
            else:
                if fut.cancelled():
                    job.future.cancel()
                elif (exc := fut.exception()) is not None:
                    job.future.set_exception(exc)
                else:
                    job.future.set_result(fut.result())
            self._pump()

        done.add_done_callback(finished)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
