"""Tests for gateway.tokens.pool: bounded, fair, budgeted, contained off-loop work."""
from __future__ import annotations

import asyncio
import threading

from gateway.telemetry.metrics import Metrics
from gateway.tokens.pool import WorkPool
from gateway.tokens.tokenizer import Tokenizer
from tests.support.until import until


def outcomes(metrics: Metrics, kind: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "gateway_work_total" and sample.labels["kind"] == kind:
                found[sample.labels["outcome"]] = sample.value
    return found


async def test_runs_in_a_worker_thread_and_counts_done() -> None:
    metrics = Metrics()
    pool = WorkPool(threads=1, metrics=metrics)
    result = await pool.run("a", "test", threading.get_ident, lambda: -1)
    assert result not in (-1, threading.get_ident())
    assert outcomes(metrics, "test") == {"done": 1.0}
    pool.close()


async def test_tenants_are_served_round_robin() -> None:
    pool = WorkPool(threads=1, budget_s=30)
    gate = threading.Event()
    order: list[str] = []

    def job(name: str) -> str:
        if name == "a0":
            gate.wait(10)
        order.append(name)
        return name

    heavy = [asyncio.ensure_future(pool.run("a", "t", lambda n=f"a{i}": job(n), lambda: ""))
             for i in range(4)]
    await until(lambda: pool.queued("a") == 3)
    light = asyncio.ensure_future(pool.run("b", "t", lambda: job("b0"), lambda: ""))
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*heavy, light)
    assert order == ["a0", "b0", "a1", "a2", "a3"]  # b waits for one job, not for a's whole queue
    pool.close()


async def test_over_budget_takes_the_fallback_and_drops_the_queued_job() -> None:
    metrics = Metrics()
    pool = WorkPool(threads=1, budget_s=0.05, metrics=metrics)
    gate = threading.Event()
    ran: list[str] = []
    blocker = asyncio.ensure_future(pool.run("a", "t", lambda: gate.wait(10), lambda: False))
    await until(lambda: pool.busy == 1)
    queued = await pool.run("a", "t", lambda: ran.append("late") or "exact", lambda: "estimate")
    assert queued == "estimate"
    assert await blocker is False  # the running job also ran out of budget
    gate.set()
    assert await pool.run("a", "t", lambda: "next", lambda: "estimate") == "next"
    assert ran == []  # the abandoned queued job never ran
    assert outcomes(metrics, "t") == {"over_budget": 2.0, "done": 1.0}
    pool.close()


async def test_a_full_tenant_queue_answers_at_once_without_blocking_others() -> None:
    metrics = Metrics()
    pool = WorkPool(threads=1, max_queued=2, budget_s=30, metrics=metrics)
    gate = threading.Event()
    waiting = [asyncio.ensure_future(pool.run("a", "t", lambda: gate.wait(10), lambda: False))
               for _ in range(2)]
    await until(lambda: pool.queued("a") == 1)
    waiting.append(asyncio.ensure_future(pool.run("a", "t", lambda: gate.wait(10), lambda: False)))
    await until(lambda: pool.queued("a") == 2)
    assert await pool.run("a", "t", lambda: True, lambda: False) is False  # a's queue is full
    other = asyncio.ensure_future(pool.run("b", "t", lambda: True, lambda: False))
    gate.set()
    assert await other is True and all(await asyncio.gather(*waiting))
    assert outcomes(metrics, "t") == {"queue_full": 1.0, "done": 4.0}
    pool.close()


async def test_a_tokenizer_panic_becomes_the_fallback() -> None:
    """tiktoken's regex overflows its stack on ~1.2 MB of whitespace: a pyo3 PanicException,
    a BaseException that escapes ``except Exception``. The pool turns it into the fallback."""
    metrics = Metrics()
    pool = WorkPool(threads=1, budget_s=30, metrics=metrics)
    tokenizer = Tokenizer()
    text = " " * 1_300_000
    assert await pool.run("a", "t", lambda: tokenizer.count_text("gpt-4o", text), lambda: -1) == -1
    assert await pool.run("a", "t", lambda: tokenizer.count_text("gpt-4o", "hi"), lambda: -1) == 1  # control
    assert outcomes(metrics, "t") == {"failed": 1.0, "done": 1.0}
    pool.close()


def work_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("gateway-work")}


async def test_start_makes_every_worker_thread_before_any_job() -> None:
    before = work_threads()  # other tests' pools may still be ending theirs
    pool = WorkPool(threads=2)
    assert not work_threads() - before  # control: nothing started yet
    pool.start()
    await until(lambda: len(work_threads() - before) == 2)
    mine = work_threads() - before
    ran_on: list[threading.Thread] = []
    def job() -> str:
        ran_on.append(threading.current_thread())
        return "ran"

    assert await pool.run("a", "t", job, lambda: "") == "ran"
    assert ran_on[0] in mine and work_threads() - before == mine  # a started thread ran it; none added
    pool.close()


async def test_jobs_that_hold_the_gil_run_one_at_a_time_beside_other_jobs() -> None:
    pool = WorkPool(threads=2, budget_s=30)
    gate = threading.Event()
    started: list[str] = []

    def job(name: str) -> str:
        started.append(name)
        if name == "parse-a":
            gate.wait(10)
        return name

    first = asyncio.ensure_future(pool.run("a", "t", lambda: job("parse-a"), lambda: "", holds_gil=True))
    await until(lambda: started == ["parse-a"])
    second = asyncio.ensure_future(pool.run("b", "t", lambda: job("parse-b"), lambda: "", holds_gil=True))
    other = asyncio.ensure_future(pool.run("c", "t", lambda: job("count-c"), lambda: ""))
    assert await other == "count-c"  # control: the free worker serves a job that releases the GIL
    assert started == ["parse-a", "count-c"] and pool.queued("b") == 1  # parse-b waits for parse-a
    gate.set()
    assert list(await asyncio.gather(first, second)) == ["parse-a", "parse-b"]
    assert started == ["parse-a", "count-c", "parse-b"]
    pool.close()
