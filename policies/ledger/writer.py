"""Write usage records off the hot path, in batches, and lose none on a graceful stop.

The request sink only builds a record and appends it to an in-memory queue.
A background task writes the queue to the store in batches of
``ledger.batch_size``: each full batch as soon as it is full, the rest
``ledger.flush_interval_s`` after the first of them arrived (an idle writer
sleeps); and it purges records older than
``ledger.retention_days`` once an hour. It does not drain the queue after each
batch: under load a batch's write is slow (the SQLite thread waits for the GIL
the busy loop holds), and draining wrote what arrived meanwhile as many small
transactions (10-16 rows each at c=64, measured in process), each paying the
commit. When the store
fails (Redis down, disk full) the batch stays queued and is retried on the next
tick; the queue is bounded by ``ledger.max_queue`` and the oldest records are
dropped beyond it, counted in ``gateway_ledger_dropped_total``.

``close`` (registered in ``state.closers``) stops the task and flushes what is
left before the store closes; the app runs closers after draining requests.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from gateway.exchange import Exchange
from gateway.telemetry.metrics import Metrics
from policies.ledger.config import LedgerConfig
from policies.ledger.record import ToolCall, UsageRecord, record_of, tool_call_record

log = logging.getLogger("gateway.ledger")
PURGE_EVERY_S = 3600.0
CLOSE_TIMEOUT_S = 10.0


class UsageStore(Protocol):
    async def open(self) -> None: ...
    async def write(self, records: list[UsageRecord]) -> None: ...
    async def query(self, group_by: str, since: float, until: float) -> list[dict[str, Any]]: ...
    async def purge(self, before: float) -> int: ...
    async def close(self) -> None: ...


class LedgerWriter:
    def __init__(self, store: UsageStore, cfg: LedgerConfig, metrics: Metrics | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self.cfg = cfg
        self.wall = wall
        self._queue: deque[UsageRecord] = deque()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._next_purge = 0.0
        self._stopping = False
        self.dropped = self.written = 0
        self._m_written = self._m_dropped = self._m_errors = self._m_queue = None
        if metrics is not None:
            self._m_written = metrics.counter("gateway_ledger_records_written_total", "Usage records stored")
            self._m_dropped = metrics.counter("gateway_ledger_dropped_total",
                                              "Usage records dropped because the write queue was full")
            self._m_errors = metrics.counter("gateway_ledger_write_errors_total",
                                             "Failed ledger batch writes")
            self._m_queue = metrics.gauge("gateway_ledger_queue_records",
                                          "Usage records waiting to be written")

    async def start(self) -> None:
        await self.store.open()
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    def sink(self, ex: Exchange) -> None:
        """The request sink: O(1), never waits, never raises for a full queue."""
        self._append(record_of(ex, self.wall(), ex.record.cost_usd))

    def tool_call(self, *, request_id: str, tenant: str, server: str, tool: str, duration_s: float,
                  outcome: str, attempts: int, status: int) -> None:
        """One MCP ``tools/call`` (they bypass the request sinks): O(1), never waits. Plain keyword
        values, so the MCP feature needs nothing from this package."""
        call = ToolCall(request_id=request_id, tenant=tenant, server=server, tool=tool, duration_s=duration_s,
                        outcome=outcome, attempts=attempts, status=status)
        self._append(tool_call_record(call, self.wall()))

    def _append(self, record: UsageRecord) -> None:
        if len(self._queue) >= self.cfg.max_queue:
            self._queue.popleft()
            self.dropped += 1
            if self._m_dropped is not None:
                self._m_dropped.inc()
        self._queue.append(record)
        if len(self._queue) >= self.cfg.batch_size or len(self._queue) == 1:  # a full batch, or a first
            self._wake.set()  # record: the idle writer arms its flush timer

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def _run(self) -> None:
        """Wakes for a full batch, at the interval after the first queued record, and for the hourly
        purge; an idle gateway's writer sleeps (it woke every interval for an empty queue)."""
        loop = asyncio.get_running_loop()
        drain_at: float | None = None  # armed while records wait
        while not self._stopping:
            if drain_at is None and self._queue:
                drain_at = loop.time() + self.cfg.flush_interval_s
            purge_at = loop.time() + max(0.0, self._next_purge - self.wall())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(purge_at if drain_at is None else min(drain_at, purge_at)):
                    await self._wake.wait()
            self._wake.clear()
            drain = drain_at is not None and loop.time() >= drain_at
            if drain:
                drain_at = None
            try:
                await self.flush(full_batches_only=not drain)
                await self._maybe_purge()
            except Exception:  # the store failed; records stay queued, the next tick retries
                log.warning("ledger write failed; will retry", exc_info=True)

    async def flush(self, *, full_batches_only: bool = False) -> None:
        """Write what is queued when the write starts (only whole batches with ``full_batches_only``; what
        arrives meanwhile waits for its own batch); raises (keeping the records) if the store fails."""
        size = self.cfg.batch_size
        async with self._lock:
            left = len(self._queue)
            try:
                while left and (not full_batches_only or left >= size):
                    batch = [self._queue[i] for i in range(min(size, left, len(self._queue)))]
                    if not batch:  # dropped meanwhile (max_queue)
                        break
                    left -= len(batch)
                    try:
                        await self.store.write(batch)
                    except Exception:
                        if self._m_errors is not None:
                            self._m_errors.inc()
                        raise
                    for _ in batch:
                        self._queue.popleft()  # only once stored: a failed batch is retried whole
                    self.written += len(batch)
                    if self._m_written is not None:
                        self._m_written.inc(len(batch))
            finally:
                if self._m_queue is not None:
                    self._m_queue.set(len(self._queue))

    async def _maybe_purge(self) -> None:
        now = self.wall()
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_EVERY_S
        removed = await self.store.purge(now - self.cfg.retention_days * 86400.0)
        if removed:
            log.info("ledger retention purge",
                     extra={"fields": {"event": "ledger_purge", "removed": removed}})

    async def query(self, group_by: str, since: float, until: float) -> list[dict[str, Any]]:
        """Totals per group; what is still queued is written first, so a caller reads its own traffic."""
        with contextlib.suppress(Exception):
            await self.flush()
        return await self.store.query(group_by, since, until)

    async def close(self) -> None:
        """Stop the task without cutting a write in half (a cancelled SQLite write still lands), then
        flush."""
        self._stopping = True
        self._wake.set()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                if self._task is not None:
                    await self._task
                await self._final_flush()
        except TimeoutError:
            pass
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._queue:
            log.error("ledger records lost at shutdown", extra={"fields": {"event": "ledger_lost",
                                                                          "records": len(self._queue)}})
        await self.store.close()

    async def _final_flush(self) -> None:
        while self._queue:
            try:
                await self.flush()
            except Exception:  # store briefly unavailable at shutdown: retry until the timeout
                log.debug("ledger final flush failed; retrying", exc_info=True)
                await asyncio.sleep(0.2)
