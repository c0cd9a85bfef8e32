"""LiveStats: what one finished exchange adds to the rolling windows, and how the windows roll."""
from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from gateway.exchange import Attempt, Exchange, Usage
from gateway.sse import StreamInspector
from gateway.telemetry import live_window as w
from gateway.telemetry.live import RECENT_MAX, WINDOW_S, LiveStats

KNOWN = {"gpt-4o", "gpt-4o-mini"}


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_stats(clock: Clock, pricer: Callable[[Exchange], float] = lambda ex: 0.0,
               inflight: int = 0) -> LiveStats:
    return LiveStats(clock=clock, bounded_model=lambda m: m if m in KNOWN else "other", pricer=pricer,
                     inflight=lambda: inflight, wall=lambda: clock.now + 1_700_000_000.0)


def finished(make_exchange: Callable[..., Exchange], clock: Clock, *, took: float = 0.5,
             ttft: float | None = 0.1, status: int = 200, usage: Usage | None = None, **kw: Any) -> Exchange:
    ex = make_exchange(received_at=clock.now - took, **kw)
    ex.record.status, ex.record.ended_at = status, clock.now
    if ttft is not None:
        ex.record.first_token_at = ex.request.received_at + ttft
    ex.record.usage = usage
    return ex


def test_outcome_classes(make_exchange: Callable[..., Exchange]) -> None:
    """2xx is ok, 4xx a client error, 5xx / no status / a broken stream an error."""
    clock = Clock()
    stats = make_stats(clock)
    for status, outcome in ((200, ""), (429, ""), (503, ""), (0, ""), (200, "error_event"), (200, "cut")):
        ex = finished(make_exchange, clock, status=status, ttft=None)
        ex.record.stream_outcome = outcome
        stats.record(ex)
    g = stats.window().g
    assert (g[w.REQ], g[w.OK], g[w.CLIENT_ERR], g[w.ERR]) == (6, 1, 1, 4)


def test_ttft_and_latency_percentiles_per_model(make_exchange: Callable[..., Exchange]) -> None:
    """TTFT per model counts upstream answers only; latency and global TTFT count every success."""
    clock = Clock()
    stats = make_stats(clock)
    for i in range(1, 101):
        stats.record(finished(make_exchange, clock, ttft=i / 1000, took=1.0))
    hit = finished(make_exchange, clock, ttft=0.0005, took=0.001)
    hit.record.source = "cache"
    stats.record(hit)
    t = stats.window()
    per_model = t.hists[("ttft", "gpt-4o")]
    assert per_model.n == 100
    assert per_model.quantile(0.5) == pytest.approx(0.050, rel=0.05)
    assert per_model.quantile(0.95) == pytest.approx(0.095, rel=0.05)
    assert t.hists["ttft"].n == 101 and t.hists["lat"].n == 101


def test_failed_requests_have_no_ttft(make_exchange: Callable[..., Exchange]) -> None:
    """A 5xx that wrote a body is not a first token."""
    clock = Clock()
    stats = make_stats(clock)
    stats.record(finished(make_exchange, clock, status=502, ttft=0.01))
    assert "ttft" not in stats.window().hists


def test_inter_token_latency_is_the_mean_gap(make_exchange: Callable[..., Exchange]) -> None:
    """ITL comes from the inspector's first/last token and chunk count, not from iterating gaps."""
    clock = Clock()
    stats = make_stats(clock)
    ex = finished(make_exchange, clock)
    inspector = StreamInspector(clock)
    inspector.first_token_at, inspector.last_token_at, inspector.content_chunks = 10.0, 10.4, 5
    ex.view = inspector
    stats.record(ex)
    assert stats.window().hists[("itl", "gpt-4o")].quantile(0.5) == pytest.approx(0.1, rel=0.05)


def test_tokens_and_cost_are_spent_upstream_only(make_exchange: Callable[..., Exchange]) -> None:
    """Upstream answers add tokens and cost per model and tenant; a cache hit adds tokens saved instead."""
    clock = Clock()
    stats = make_stats(clock, pricer=lambda ex: 0.25)
    usage = Usage(prompt=100, completion=40, cached_prompt=30, reasoning=5)
    stats.record(finished(make_exchange, clock, usage=usage, tenant="alpha"))
    hit = finished(make_exchange, clock, usage=Usage(prompt=100, completion=40), tenant="alpha")
    hit.record.source, hit.record.cache_result = "cache", "hit"
    stats.record(hit)
    t = stats.window()
    assert (t.g[w.PROMPT], t.g[w.COMPLETION], t.g[w.CACHED], t.g[w.REASONING]) == (100, 40, 30, 5)
    assert t.g[w.COST] == pytest.approx(0.25) and t.g[w.SAVED_CACHE] == 140
    assert t.models["gpt-4o"] == [2, 0, 100, 40, 30, 0.25]
    assert t.tenants["alpha"] == [2, 0, 100, 40, 30, 0.25]
    assert t.cache == {"none": 1, "hit": 1}


def test_compression_savings_from_header(make_exchange: Callable[..., Exchange]) -> None:
    """``x-gateway-tokens-saved`` adds to compression savings; a malformed value is ignored."""
    clock = Clock()
    stats = make_stats(clock)
    for value in ("1200", "oops", "0"):
        ex = finished(make_exchange, clock)
        ex.response_headers["x-gateway-tokens-saved"] = value
        stats.record(ex)
    g = stats.window().g
    assert (g[w.SAVED_COMP], g[w.COMP_REQ]) == (1200, 1)


def test_retries_fallbacks_timeouts_and_waits(make_exchange: Callable[..., Exchange]) -> None:
    """Retried = more than one attempt; fallback = served elsewhere than first tried; timeouts by kind."""
    clock = Clock()
    stats = make_stats(clock)
    retried = finished(make_exchange, clock)
    retried.record.attempts = [Attempt("mock", "gpt-4o", 0, outcome="http_503"),
                               Attempt("mock", "gpt-4o", 0, outcome="ok")]
    fallback = finished(make_exchange, clock, upstream="backup")
    fallback.record.attempts = [Attempt("mock", "gpt-4o", 0, outcome="idle_timeout"),
                                Attempt("backup", "gpt-4o", 0)]
    timed_out = finished(make_exchange, clock, status=504)
    timed_out.record.error_kind = "timeout_before_first_byte"
    waited = finished(make_exchange, clock, waited_s=0.3)
    fallback.response_headers["x-gateway-hedge"] = "hedge_won"
    waited.response_headers["x-gateway-hedge"] = "not_needed"  # no hedge was sent: not counted
    for ex in (retried, fallback, timed_out, waited):
        stats.record(ex)
    t = stats.window()
    assert (t.g[w.RETRIED], t.g[w.EXTRA_ATTEMPTS], t.g[w.FALLBACKS], t.g[w.TIMEOUTS]) == (2, 2, 1, 2)
    assert t.g[w.HEDGED] == 1
    assert t.g[w.WAITED] == 1 and t.g[w.WAIT_S] == pytest.approx(0.3) and t.hists["wait"].n == 1


def test_a_timeout_in_any_attempt_counts(make_exchange: Callable[..., Exchange]) -> None:
    """An attempt that timed out counts the request once, whichever attempt it was (the control: none did)."""
    clock = Clock()
    stats = make_stats(clock)
    late = finished(make_exchange, clock)
    late.record.attempts = [Attempt("mock", "gpt-4o", 0, outcome="http_503"),
                            Attempt("mock", "gpt-4o", 0, outcome="total_timeout"),
                            Attempt("mock", "gpt-4o", 0, outcome="ok")]
    clean = finished(make_exchange, clock)
    clean.record.attempts = [Attempt("mock", "gpt-4o", 0, outcome="ok")]
    stats.record(clean)
    assert stats.window().g[w.TIMEOUTS] == 0
    stats.record(late)
    assert stats.window().g[w.TIMEOUTS] == 1


def test_model_labels_stay_bounded(make_exchange: Callable[..., Exchange]) -> None:
    """10,000 random model names add one ``other`` group, and the recent list stays at 50 rows."""
    clock = Clock()
    stats = make_stats(clock)
    rng = random.Random(7)
    for i in range(10_000):
        clock.now = 1000.0 + i / 100
        stats.record(finished(make_exchange, clock, model=f"m-{rng.random()}"))
    t = stats.window()
    assert set(t.models) == {"other"} and t.models["other"][w.M_REQ] == 10_000
    assert {k for k in t.hists if isinstance(k, tuple)} == {("ttft", "other"), ("lat", "other")}
    assert len(stats.recent) == RECENT_MAX


def test_window_rolls_over_15_minutes(make_exchange: Callable[..., Exchange]) -> None:
    """A second leaves the totals exactly when it is 900 s old; later seconds stay."""
    clock = Clock(1000.0)
    stats = make_stats(clock)
    stats.record(finished(make_exchange, clock))
    clock.now = 1500.2
    stats.record(finished(make_exchange, clock))
    assert stats.window().g[w.REQ] == 2
    clock.now = 1000.0 + WINDOW_S - 0.5
    assert stats.window().g[w.REQ] == 2
    clock.now = 1000.0 + WINDOW_S
    assert stats.window().g[w.REQ] == 1
    clock.now = 1500.0 + WINDOW_S + 1
    assert stats.window().g[w.REQ] == 0 and not stats.window().models


def test_ring_slot_reuse_after_a_quiet_window(make_exchange: Callable[..., Exchange]) -> None:
    """Writing into a slot last used 900 s ago (never read since) does not corrupt the totals."""
    clock = Clock(1000.0)
    stats = make_stats(clock)
    stats.record(finished(make_exchange, clock))
    clock.now = 1001.0
    stats.window()  # seals second 1000
    clock.now = 1000.3 + WINDOW_S  # same ring slot as second 1000
    stats.record(finished(make_exchange, clock))
    assert stats.window().g[w.REQ] == 1
    clock.now += 1
    assert stats.window().g[w.REQ] == 1


def test_window_is_memoised_until_something_changes(make_exchange: Callable[..., Exchange]) -> None:
    """Reads share one computation: exact ones until a request ends, stream ones for the whole second."""
    clock = Clock()
    stats = make_stats(clock)
    stats.record(finished(make_exchange, clock))
    first = stats.window()
    assert stats.window() is first
    stats.record(finished(make_exchange, clock))
    assert stats.window(exact=False) is first  # the stream's read: same second, same totals
    assert stats.window() is not first and stats.window().g[w.REQ] == 2
    clock.now += 1
    assert stats.window(exact=False).g[w.REQ] == 2


def test_rows_per_finished_second(make_exchange: Callable[..., Exchange]) -> None:
    """Chart rows start at the gateway's start, one per finished second, and ``since`` gives only newer
    ones."""
    clock = Clock(1000.0)
    stats = make_stats(clock)
    clock.now = 1002.5
    stats.record(finished(make_exchange, clock, usage=Usage(prompt=7, completion=3)))
    clock.now = 1004.1
    rows = stats.rows()
    assert [r["sec"] for r in rows] == [1000, 1001, 1002, 1003]
    row = rows[2]
    assert row["requests"] == 1 and row["prompt"] == 7 and row["completion"] == 3
    assert row["ttft"]["gpt-4o"][0] == pytest.approx(100, rel=0.05)
    assert row["t"] == pytest.approx(1002 + 1_700_000_000.0)
    assert rows[3] == {"t": rows[3]["t"], "sec": 1003, "requests": 0}
    assert stats.rows(since=1002) == [rows[3]]


def test_clock_going_back_counts_in_the_open_second(make_exchange: Callable[..., Exchange]) -> None:
    """An exchange stamped before the sealed past still counts, in the second in progress."""
    clock = Clock(1000.0)
    stats = make_stats(clock)
    clock.now = 1010.0
    stats.window()
    ex = finished(make_exchange, Clock(1005.0))
    stats.record(ex)
    assert stats.window().g[w.REQ] == 1


def test_recent_rows_hold_no_request_text(make_exchange: Callable[..., Exchange]) -> None:
    """The ring of recent requests keeps metadata only: the prompt never enters it."""
    clock = Clock()
    stats = make_stats(clock)
    secret = "my-secret-prompt-text"
    ex = finished(make_exchange, clock,
                  body={"model": "gpt-4o", "messages": [{"role": "user", "content": secret}]})
    stats.record(ex)
    assert secret not in repr(list(stats.recent))


def test_peak_inflight_per_second(make_exchange: Callable[..., Exchange]) -> None:
    """Each second keeps the most requests seen open at once (this one included)."""
    clock = Clock(1000.0)
    stats = make_stats(clock, inflight=3)
    stats.record(finished(make_exchange, clock))
    clock.now = 1001.0
    assert stats.rows()[0]["inflight"] == 4
