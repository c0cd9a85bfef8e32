"""The hedge race, the TTFT windows and the exchange twin, without a server."""
from __future__ import annotations

import asyncio
import random

import pytest

from policies.resilience.config import HedgeConfig
from policies.resilience.hedge import TtftWindows, adopt, fork, hedge_delay, race
from tests.support.exchange import build_exchange


class Answers:
    """Scripted attempts: each resolves to a string after its event is set; records what was dropped."""

    def __init__(self) -> None:
        self.dropped: list[str] = []
        self.cancelled: list[str] = []

    async def attempt(self, name: str, gate: asyncio.Event, result: str) -> str:
        try:
            await gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise
        return result

    async def drop(self, result: str) -> None:
        self.dropped.append(result)


def won(result: str) -> bool:
    return result.startswith("ok")


async def test_fast_primary_needs_no_hedge() -> None:
    a = Answers()
    gate = asyncio.Event()
    gate.set()
    started: list[str] = []
    raced = await race(a.attempt("p", gate, "ok-p"), 1.0, lambda: started.append("h") or None, won, a.drop)
    assert (raced.result, raced.outcome, started) == ("ok-p", "not_needed", [])


async def test_late_primary_loses_to_the_hedge_and_is_cancelled() -> None:
    a = Answers()
    never, ready = asyncio.Event(), asyncio.Event()
    ready.set()
    hedge = lambda: a.attempt("h", ready, "ok-h")  # noqa: E731
    raced = await race(a.attempt("p", never, "ok-p"), 0.01, hedge, won, a.drop)
    assert (raced.result, raced.outcome, raced.hedge_result) == ("ok-h", "hedge_won", True)
    assert a.cancelled == ["p"] and a.dropped == []


async def test_primary_that_commits_first_after_the_hedge_started_wins() -> None:
    a = Answers()
    primary_gate, hedge_gate = asyncio.Event(), asyncio.Event()

    def start() -> object:
        primary_gate.set()  # the primary's token arrives right after the hedge left
        return a.attempt("h", hedge_gate, "ok-h")

    raced = await race(a.attempt("p", primary_gate, "ok-p"), 0.01, start, won, a.drop)  # type: ignore[arg-type]
    assert (raced.result, raced.outcome) == ("ok-p", "primary_won") and a.cancelled == ["h"]


async def test_both_failed_keeps_the_hedge_failure_and_drops_the_primary() -> None:
    a = Answers()
    slow_fail = asyncio.Event()

    def start() -> object:
        slow_fail.set()
        done = asyncio.Event()
        done.set()
        return a.attempt("h", done, "fail-h")

    raced = await race(a.attempt("p", slow_fail, "fail-p"), 0.01, start, won, a.drop)  # type: ignore[arg-type]
    assert (raced.result, raced.outcome) == ("fail-h", "both_failed") and a.dropped == ["fail-p"]


async def test_failed_primary_waits_for_the_hedge() -> None:
    a = Answers()
    primary_gate, hedge_gate = asyncio.Event(), asyncio.Event()

    def start() -> object:
        primary_gate.set()
        asyncio.get_running_loop().call_later(0.02, hedge_gate.set)
        return a.attempt("h", hedge_gate, "ok-h")

    raced = await race(a.attempt("p", primary_gate, "fail-p"), 0.01, start, won, a.drop)  # type: ignore[arg-type]
    assert (raced.result, raced.outcome) == ("ok-h", "hedge_won") and a.dropped == ["fail-p"]


async def test_budget_refusal_keeps_waiting_on_the_primary() -> None:
    a = Answers()
    gate = asyncio.Event()
    asyncio.get_running_loop().call_later(0.03, gate.set)
    raced = await race(a.attempt("p", gate, "ok-p"), 0.01, lambda: None, won, a.drop)
    assert (raced.result, raced.outcome) == ("ok-p", "budget_exhausted")


def test_ttft_quantile_needs_min_samples_and_is_bounded() -> None:
    w = TtftWindows()
    for i in range(1, 11):
        w.record("r", "a", i / 10, size=10)
    assert w.quantile("r", "a", 0.95, min_samples=11) is None
    assert w.quantile("r", "a", 0.95, min_samples=10) == 1.0
    assert w.quantile("r", "a", 0.5, min_samples=10) == 0.6
    for _ in range(10):
        w.record("r", "a", 0.2, size=10)  # the window keeps only the last 10
    assert w.quantile("r", "a", 0.95, min_samples=10) == 0.2 and w.quantile("r", "b", 0.5, 1) is None


def test_max_extra_hedges_that_share_of_the_window() -> None:
    """``max_extra: 0.08`` waits for the window's 92nd percentile: 8 of 100 recorded times are at or
    above it."""
    w = TtftWindows()
    for i in range(100, 0, -1):
        w.record("r", "a", i / 100, size=100)
    delay = hedge_delay(HedgeConfig(max_extra=0.08), w, "r", "a")
    assert delay == 0.93 and sum(1 for i in range(1, 101) if i / 100 >= delay) == 8
    assert hedge_delay(HedgeConfig(max_extra=0.5), w, "r", "a") == 0.51


def test_ttft_window_stays_sorted_as_it_slides_and_resizes() -> None:
    """The sorted copy always equals the window's last ``size`` times, sorted (the quantile reads it)."""
    rng = random.Random(7)
    w = TtftWindows()
    seen: list[float] = []
    for i in range(600):
        size = 50 if i < 300 else 20  # a config reload shrinks the window
        value = round(rng.random(), 2)  # repeated values: removal must take out exactly one
        seen.append(value)
        w.record("r", "a", value, size=size)
        order, ordered = w._windows[("r", "a")]
        assert list(order) == seen[-size:] and ordered == sorted(seen[-size:])
    assert w.quantile("r", "a", 0.99, min_samples=20) == max(seen[-20:])


@pytest.mark.parametrize(("cfg", "samples", "expected"), [
    (HedgeConfig(after_s=2.0), 0, 2.0),
    (HedgeConfig(after="p95"), 0, None),  # adaptive, not enough samples yet: no hedge
    (HedgeConfig(after="p95", after_s=2.0), 0, 2.0),  # after_s until the window has min_samples
    (HedgeConfig(after="p95", after_s=2.0), 20, 0.3),
    (HedgeConfig(max_extra=0.08), 19, None),  # not enough samples, no after_s
    (HedgeConfig(max_extra=0.08, after_s=2.0), 20, 0.3),
])
def test_hedge_delay(cfg: HedgeConfig, samples: int, expected: float | None) -> None:
    w = TtftWindows()
    for _ in range(samples):
        w.record("r", "a", 0.3, size=200)
    assert hedge_delay(cfg, w, "r", "a") == expected


def test_fork_and_adopt() -> None:
    ex = build_exchange({"model": "m", "messages": []}, upstream="a", upstream_model="m")
    twin = fork(ex)
    twin.target.upstream, twin.target.model = "b", "small"
    twin.set_body({"model": "small", "messages": []})
    twin.response_headers["x-b"] = "1"
    assert ex.target.upstream == "a" and ex.body == {"model": "m", "messages": []}
    assert twin.record is ex.record and twin.state is not ex.state
    adopt(ex, twin)
    assert ex.body is not None and ex.body["model"] == "small"
    assert (ex.target.upstream, ex.target.model) == ("b", "small")
    assert ex.response_headers["x-b"] == "1"
