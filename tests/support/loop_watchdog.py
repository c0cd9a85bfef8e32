"""Fail a test during which one gateway callback held the event loop for more than 100 ms.

Every callback the loop runs (a task step, a timer, a ``call_soon``) goes through
``asyncio.events.Handle._run``; while a test runs, that method is wrapped to time each callback
in wall-clock *and* the loop thread's CPU time. A callback over the threshold in both (so a
machine busy with other work, which only stretches wall time, does not fail anybody) whose code
is the gateway's (``gateway/``, ``policies/``: the callback itself or any coroutine in the
awaiting task's chain) is an offence; the fixture in ``tests/conftest.py`` fails the test with
the offender's name and times. A test that blocks on purpose says why with
``@pytest.mark.blocks_loop("why")``. Time spent in the garbage collector (a full collection of
a test process that has accumulated objects over hundreds of tests) is not counted against a callback.
"""
from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_DIRS = (str(ROOT / "gateway") + "/", str(ROOT / "policies") + "/")
THRESHOLD_S = 0.1
# Under `make test`, coverage's line tracer makes gateway code ~3x slower (measured: the same stream
# callback took 45 ms plain, 137 ms traced), so a traced run compares against 3x the threshold: the bound
# stays 100 ms of real loop time, not 100 ms of tracer overhead.
TRACED_SLOWDOWN = 3.0


def default_threshold() -> float:
    return THRESHOLD_S * (TRACED_SLOWDOWN if sys.gettrace() is not None else 1.0)


@dataclass(frozen=True, slots=True)
class Offence:
    what: str
    wall_s: float
    cpu_s: float

    def __str__(self) -> str:
        return f"{self.what}: {self.wall_s * 1000:.0f} ms wall, {self.cpu_s * 1000:.0f} ms CPU"


def _chain_codes(coro: Any) -> list[CodeType]:
    """The code of each coroutine or generator in an await chain, outermost first."""
    codes: list[CodeType] = []
    while coro is not None and len(codes) < 64:
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None) or \
            getattr(coro, "ag_code", None)
        if code is not None:
            codes.append(code)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or \
            getattr(coro, "ag_await", None)
    return codes


def resuming(callback: Any) -> list[CodeType] | None:
    """For a task step, the coroutines it is about to resume (taken before the step runs)."""
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        return _chain_codes(owner.get_coro())
    return None


def describe(callback: Any, chain: list[CodeType] | None) -> tuple[str, bool]:
    """A name for the callback and whether it is gateway code: for a task step, a gateway coroutine in
    the chain it resumed (code it called synchronously runs under those frames); else the callback's
    own code."""
    if chain is not None:
        ours = [code.co_qualname for code in chain if code.co_filename.startswith(GATEWAY_DIRS)]
        top = chain[0].co_qualname if chain else "task"
        return (f"task {top}" + (f" (in {ours[-1]})" if ours else ""), bool(ours))
    func = getattr(callback, "__func__", callback)
    code = getattr(func, "__code__", None)
    if code is None:
        return repr(callback)[:120], False
    return code.co_qualname, code.co_filename.startswith(GATEWAY_DIRS)


@dataclass(slots=True)
class LoopWatchdog:
    threshold_s: float = field(default_factory=default_threshold)
    offences: list[Offence] = field(default_factory=list)
    gc_s: float = 0.0  # time spent in collections so far (wall, on whichever thread collected)
    _gc_started: float = 0.0

    def _on_gc(self, phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_s += time.perf_counter() - self._gc_started

    @contextmanager
    def watching(self) -> Iterator[LoopWatchdog]:
        handle = asyncio.events.Handle
        original = handle._run
        watchdog = self

        def timed_run(self: asyncio.Handle) -> None:
            callback = self._callback  # type: ignore[attr-defined]
            chain = resuming(callback)
            wall, cpu, collecting = time.perf_counter(), time.thread_time(), watchdog.gc_s
            try:
                original(self)
            finally:
                in_gc = watchdog.gc_s - collecting
                wall_s = time.perf_counter() - wall - in_gc
                if wall_s > watchdog.threshold_s:
                    cpu_s = time.thread_time() - cpu - in_gc
                    if cpu_s > watchdog.threshold_s:
                        what, ours = describe(callback, chain)
                        if ours:
                            watchdog.offences.append(Offence(what, wall_s, cpu_s))

        handle._run = timed_run  # type: ignore[method-assign]
        gc.callbacks.append(self._on_gc)
        try:
            yield self
        finally:
            handle._run = original  # type: ignore[method-assign]
            gc.callbacks.remove(self._on_gc)



