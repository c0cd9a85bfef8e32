"""The ledger writer: off the hot path, batched, retried, bounded, and complete at shutdown."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.exchange import Exchange
from gateway.telemetry.metrics import Metrics
from policies.ledger.config import LedgerConfig
from policies.ledger.record import UsageRecord, aggregate
from policies.ledger.writer import LedgerWriter
from tests.support.until import until


class FakeStore:
    def __init__(self) -> None:
        self.batches: list[list[UsageRecord]] = []
        self.fail = 0
        self.purged: list[float] = []
        self.closed = False
        self.wrote = asyncio.Event()

    async def open(self) -> None:
        pass

    async def write(self, records: list[UsageRecord]) -> None:
        if self.fail:
            self.fail -= 1
            raise OSError("disk full")
        self.batches.append(list(records))
        self.wrote.set()

    async def query(self, group_by: str, since: float, until: float) -> list[dict[str, Any]]:
        return aggregate([r for b in self.batches for r in b], group_by)

    async def purge(self, before: float) -> int:
        self.purged.append(before)
        return 0

    async def close(self) -> None:
        self.closed = True

    @property
    def count(self) -> int:
        return sum(len(b) for b in self.batches)


def cfg(**kw: Any) -> LedgerConfig:
    return LedgerConfig(**{"batch_size": 10, "flush_interval_s": 3600.0, **kw})


async def test_full_batch_is_written_without_waiting_for_the_interval(
        make_exchange: Callable[..., Exchange]) -> None:
    """Reaching batch_size wakes the writer, which writes the full batches at once; the rest waits for the
    interval (here an hour), or for close."""
    store = FakeStore()
    writer = LedgerWriter(store, cfg(), wall=lambda: 1000.0)
    await writer.start()
    for _ in range(25):
        writer.sink(make_exchange())
    await until(lambda: store.count == 20)
    assert [len(b) for b in store.batches] == [10, 10] and writer.pending == 5
    await writer.close()
    assert [len(b) for b in store.batches] == [10, 10, 5] and store.count == 25 and store.closed
    assert store.purged == [1000.0 - 30 * 86400]


async def test_the_rest_is_written_at_the_interval(make_exchange: Callable[..., Exchange]) -> None:
    """Fewer records than a batch are written when the interval is over (the control of the test above:
    with a short interval the partial batch does go)."""
    store = FakeStore()
    writer = LedgerWriter(store, cfg(flush_interval_s=0.05), wall=lambda: 1000.0)
    await writer.start()
    for _ in range(3):
        writer.sink(make_exchange())
    await until(lambda: store.count == 3)
    assert [len(b) for b in store.batches] == [3] and writer.pending == 0
    await writer.close()


async def test_records_arriving_during_a_write_wait_for_a_full_batch(
        make_exchange: Callable[..., Exchange]) -> None:
    """Records that arrive while a batch is being written are not drained in a small batch of their own
    (one transaction each under load): they wait for their batch to fill."""
    store = SlowStore()
    writer = LedgerWriter(store, cfg(), wall=lambda: 1000.0)
    await writer.start()
    for _ in range(10):
        writer.sink(make_exchange())
    await until(lambda: store.started == 1)
    for _ in range(3):  # while the first batch is in the store
        writer.sink(make_exchange())
    store.gate.set()
    await until(lambda: store.count == 10)
    for _ in range(7):  # the second batch fills up
        writer.sink(make_exchange())
    await until(lambda: store.count == 20)
    assert [len(b) for b in store.batches] == [10, 10] and writer.pending == 0
    await writer.close()


class SlowStore(FakeStore):
    """A store whose writes wait for ``gate``."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.started = 0

    async def write(self, records: list[UsageRecord]) -> None:
        self.started += 1
        await self.gate.wait()
        await super().write(records)


async def test_failed_batches_are_kept_and_retried(make_exchange: Callable[..., Exchange]) -> None:
    """A failing store loses nothing: the batch stays queued and is written whole on a later flush."""
    store = FakeStore()
    store.fail = 2
    metrics = Metrics(registry=CollectorRegistry())
    writer = LedgerWriter(store, cfg(), metrics, wall=lambda: 0.0)
    for _ in range(3):
        writer.sink(make_exchange())
    for _ in range(2):
        try:
            await writer.flush()
        except OSError:
            pass
    assert store.count == 0 and writer.pending == 3
    await writer.flush()
    assert store.count == 3 and writer.pending == 0
    assert metrics.registry.get_sample_value("gateway_ledger_write_errors_total") == 2
    assert metrics.registry.get_sample_value("gateway_ledger_records_written_total") == 3


async def test_close_retries_until_the_store_recovers(make_exchange: Callable[..., Exchange]) -> None:
    """Graceful shutdown flushes everything even if the store fails once on the way."""
    store = FakeStore()
    writer = LedgerWriter(store, cfg(), wall=lambda: 0.0)
    await writer.start()
    for _ in range(7):
        writer.sink(make_exchange())
    store.fail = 1
    await writer.close()
    assert store.count == 7


async def test_queue_is_bounded_dropping_oldest(make_exchange: Callable[..., Exchange]) -> None:
    """Beyond max_queue the oldest records go, counted, so memory stays bounded while the store is down."""
    metrics = Metrics(registry=CollectorRegistry())
    writer = LedgerWriter(FakeStore(), cfg(max_queue=5, batch_size=100), metrics, wall=lambda: 0.0)
    for i in range(8):
        writer.sink(make_exchange(request_id=f"r{i}"))
    assert writer.pending == 5 and writer.dropped == 3
    assert [r.request_id for r in writer._queue] == ["r3", "r4", "r5", "r6", "r7"]
    assert metrics.registry.get_sample_value("gateway_ledger_dropped_total") == 3


async def test_query_reads_its_own_writes(make_exchange: Callable[..., Exchange]) -> None:
    """A query first writes what is queued, so an admin sees traffic that just finished."""
    writer = LedgerWriter(FakeStore(), cfg(), wall=lambda: 0.0)
    writer.sink(make_exchange(tenant="acme"))
    assert [g["key"] for g in await writer.query("tenant", 0, 1)] == ["acme"]


class CountingWriter(LedgerWriter):
    flushes = 0

    async def flush(self, *, full_batches_only: bool = False) -> None:
        self.flushes += 1
        await super().flush(full_batches_only=full_batches_only)


async def test_an_idle_writer_sleeps(make_exchange: Callable[..., Exchange]) -> None:
    """No record, no wake-up: the writer used to flush an empty queue every interval, a sidecar's idle
    CPU. A record arms the interval (the positive control: it is written without a full batch)."""
    store = FakeStore()
    writer = CountingWriter(store, cfg(flush_interval_s=0.01), wall=lambda: 1000.0)
    await writer.start()
    await until(lambda: store.purged)  # the first pass: the purge is due at once, then in an hour
    first = writer.flushes
    await asyncio.sleep(0.2)  # 20 intervals with nothing queued (a window for nothing to happen)
    assert writer.flushes == first
    writer.sink(make_exchange())
    await until(lambda: store.count == 1)
    assert writer.flushes - first <= 3  # woken by the record, then the interval's drain
    await writer.close()
