"""Live statistics of every worker and replica: each process publishes its windows to Redis.

Once a second (and just before it answers ``/admin/stats``) each process writes its window
totals (counters, groups, cache results and the latency histograms' bins) plus its last minute's
counters into one Redis hash (``<prefix>live``: process id -> payload). Any process can then
merge every fresh entry into fleet totals: exact sums, and percentiles computed from the merged
histograms, never averaged. Entries older than ``STALE_S`` (a process gone) are dropped.

Scope of the figures: ``host`` when the Redis is the supervisor's private one (the workers of one
host), ``fleet`` with ``state.backend: redis``; ``worker`` (this process only) when there is no
shared backend or Redis does not answer, and then the summary says so (``shared.banner``).
The request path is not touched: publishing runs in a background task.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from gateway.appstate import AppState
from gateway.exchange import StateKey
from gateway.state.errors import RedisUnavailable
from gateway.telemetry import live_window as w
from gateway.telemetry.live import LiveStats
from gateway.telemetry.live_window import Hist, Second

if TYPE_CHECKING:
    from gateway.state.redis_client import GuardedRedis

PUBLISH_S = 1.0
STALE_S = 5.0
KEY_TTL_S = 60


def process_id() -> str:
    """This process in the breakdown: host name (the pod), pid (the worker), and a short random tag (two
    apps in one process, a pid reused after a restart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


@dataclass(slots=True, kw_only=True)
class FleetView:
    """The merged figures of every fresh process, and one row per process."""

    scope: str
    window: Second
    last60: list[float]
    inflight: int
    replicas: list[dict[str, Any]] = field(default_factory=list)


def encode(replica: str, at: float, t: Second, last60: list[float], inflight: int) -> bytes:
    hists = [[list(k) if isinstance(k, tuple) else k, sorted(h.bins.items()), h.n]
             for k, h in t.hists.items()]
    return orjson.dumps({"replica": replica, "at": at, "g": t.g, "models": t.models, "tenants": t.tenants,
                         "cache": t.cache, "hists": hists, "last60": last60, "inflight": inflight},
                        option=orjson.OPT_NON_STR_KEYS)


def decode(raw: bytes) -> tuple[str, float, Second, list[float], int]:
    obj = orjson.loads(raw)
    t = Second()
    t.g = [float(v) for v in obj["g"]][: w.N_GLOBAL] + [0.0] * max(0, w.N_GLOBAL - len(obj["g"]))
    t.models = {str(k): [float(x) for x in v] for k, v in obj["models"].items()}
    t.tenants = {str(k): [float(x) for x in v] for k, v in obj["tenants"].items()}
    t.cache = {str(k): int(v) for k, v in obj["cache"].items()}
    for key, bins, n in obj["hists"]:
        h = Hist()
        h.bins = {int(i): int(c) for i, c in bins}
        h.n = int(n)
        t.hists[tuple(key) if isinstance(key, list) else key] = h
    return str(obj["replica"]), float(obj["at"]), t, [float(v) for v in obj["last60"]], int(obj["inflight"])


class FleetStats:
    """Publishes this process's windows and reads everybody's."""

    def __init__(self, backend: GuardedRedis, prefix: str, stats: LiveStats,
                 wall: Callable[[], float] | None = None, replica: str | None = None) -> None:
        self.backend, self.stats = backend, stats
        self.key = prefix + "live"
        self.wall = wall or stats.wall
        self.replica = replica or process_id()
        self._task: asyncio.Task[None] | None = None

    @property
    def scope(self) -> str:
        return self.backend.scope

    def payload(self) -> bytes:
        s = self.stats
        return encode(self.replica, self.wall(), s.window(), s.recent_sums(60), s.inflight())

    async def publish(self) -> None:
        data = self.payload()

        async def write(r: Any) -> None:
            async with r.pipeline(transaction=False) as pipe:
                pipe.hset(self.key, self.replica, data)
                pipe.expire(self.key, KEY_TTL_S)
                await pipe.execute()

        await self.backend.call(write)

    async def view(self) -> FleetView | None:
        """Fleet totals (this process's entry fresh), or None when Redis does not answer."""
        try:
            await self.publish()
            raw: Any = await self.backend.call(lambda r: r.hgetall(self.key))
        except RedisUnavailable:
            return None
        now = self.wall()
        merged, last60, inflight = Second(), [0.0] * w.N_GLOBAL, 0
        rows: list[dict[str, Any]] = []
        stale: list[Any] = []
        for name, data in raw.items():
            replica, at, t, last, live = decode(data)
            if now - at > STALE_S:
                stale.append(name)
                continue
            merged.merge(t)
            last60 = [a + b for a, b in zip(last60, last, strict=False)]
            inflight += live
            rows.append({"replica": replica, "scope": "worker", "self": replica == self.replica,
                         "requests": int(t.g[w.REQ]), "errors": int(t.g[w.ERR]), "inflight": live,
                         "age_s": round(max(0.0, now - at), 1)})
        if stale:
            with contextlib.suppress(RedisUnavailable):
                await self.backend.call(lambda r: r.hdel(self.key, *stale))
        rows.sort(key=lambda row: str(row["replica"]))
        return FleetView(scope=self.scope, window=merged, last60=last60, inflight=inflight, replicas=rows)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._publish_forever())

    async def _publish_forever(self) -> None:
        while True:
            with contextlib.suppress(RedisUnavailable):
                await self.publish()
            await asyncio.sleep(PUBLISH_S)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisUnavailable):
            await self.backend.call(lambda r: r.hdel(self.key, self.replica))


FLEET: StateKey[FleetStats] = StateKey("telemetry.live_fleet")


def start_fleet_stats(state: AppState) -> None:
    """With a shared backend, publish this process's windows and let ``/admin/stats`` read the fleet's."""
    if state.backend is None or state.stats is None:
        return
    fleet = FleetStats(state.backend, state.config.state.key_prefix, state.stats)
    state.components.set(FLEET, fleet)
    fleet.start()
    state.closers.append(fleet.close)


async def fleet_view(state: AppState) -> tuple[FleetView | None, str | None]:
    """The fleet's figures, else None and the banner that says the figures are this worker's only."""
    fleet = state.components.get(FLEET)
    if fleet is None:
        if state.workers > 1:
            return None, "No shared state (host_state_unavailable): figures are this worker's only."
        return None, None
    view = await fleet.view()
    if view is None:
        return None, "Redis is unreachable: figures are this worker's only."
    return view, None
