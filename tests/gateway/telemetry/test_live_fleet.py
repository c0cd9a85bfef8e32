"""Fleet live stats through a real Redis: exact merged totals and percentiles, per-replica rows, staleness,
and the local-only banner when Redis is away."""
from __future__ import annotations

import secrets
from collections.abc import Callable

from gateway.config_model import StateConfig
from gateway.exchange import Exchange
from gateway.state.redis_client import GuardedRedis
from gateway.telemetry import live_window as w
from gateway.telemetry.live_fleet import FleetStats, decode, encode
from tests.gateway.telemetry.test_live import Clock, finished, make_stats
from tests.support.servers import RedisServer, free_port


def backend(url: str, clock: Clock) -> GuardedRedis:
    return GuardedRedis.from_config(StateConfig(backend="redis", redis_url=url, timeout_ms=5000), clock)


def process(url: str, prefix: str, clock: Clock, name: str, make_exchange: Callable[..., Exchange],
            requests: int, ttft: float) -> FleetStats:
    stats = make_stats(clock)
    for _ in range(requests):
        stats.record(finished(make_exchange, clock, ttft=ttft, took=1.0))
    return FleetStats(backend(url, clock), prefix, stats, replica=name)


def test_encode_decode_round_trip(make_exchange: Callable[..., Exchange]) -> None:
    clock = Clock()
    stats = make_stats(clock)
    stats.record(finished(make_exchange, clock, ttft=0.2))
    window = stats.window()
    replica, at, t, last60, inflight = decode(encode("a", 5.0, window, stats.recent_sums(60), 3))
    assert (replica, at, inflight) == ("a", 5.0, 3)
    assert t.g == window.g and t.models == window.models and t.cache == window.cache
    bins = {k: (h.bins, h.n) for k, h in window.hists.items()}
    assert {k: (h.bins, h.n) for k, h in t.hists.items()} == bins
    assert last60[w.REQ] == 1


async def test_any_process_reports_the_sum_of_all(redis_server: RedisServer,
                                                  make_exchange: Callable[..., Exchange]) -> None:
    prefix, clock = f"t{secrets.token_hex(4)}:", Clock()
    a = process(redis_server.url, prefix, clock, "a", make_exchange, 30, 0.01)
    b = process(redis_server.url, prefix, clock, "b", make_exchange, 70, 1.0)
    await b.publish()
    view = await a.view()
    assert view is not None and view.scope == "fleet"
    assert view.window.g[w.REQ] == 100 and view.last60[w.REQ] == 100
    assert [(r["replica"], r["requests"], r["self"]) for r in view.replicas] == [("a", 30, True),
                                                                               ("b", 70, False)]
    # percentiles from the merged histograms: the median is one of B's slow first tokens
    ttft = view.window.hists["ttft"]
    assert ttft.n == 100 and ttft.quantile(0.5) is not None and ttft.quantile(0.5) > 0.5  # type: ignore[operator]
    # a process that stopped publishing drops out after STALE_S
    clock.now += 10
    view = await a.view()
    assert view is not None and [r["replica"] for r in view.replicas] == ["a"]
    for fleet in (a, b):
        await fleet.close()
        await fleet.backend.close()


async def test_redis_away_gives_no_view(make_exchange: Callable[..., Exchange]) -> None:
    clock = Clock()
    a = process(f"redis://127.0.0.1:{free_port()}/0", "t:", clock, "a", make_exchange, 1, 0.1)
    assert await a.view() is None
    await a.backend.close()
