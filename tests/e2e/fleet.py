"""Real fleets for the shared-state e2e tests (issue 20), started once per session.

``fleet`` is parametrized: ``workers`` is one ``gateway serve --workers 2`` (memory backend: the
supervisor's private Redis on a Unix socket), ``replicas`` is two single-worker gateways on different
ports sharing the session's real Redis. Both sit in front of one fake provider, itself a separate
process (``gateway mock-upstream``), so every gateway process reaches the same recorder and faults.
Tests get two clients pinned to two different processes (``pair``), each an official ``openai``
client over a one-connection pool: every request of a pinned client lands on the same process.
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from tests.support.servers import (
    GatewayProcess,
    RedisServer,
    free_port,
    gateway_config,
    spawn_gateway,
    wait_ready,
)

ADMIN = "adm-fleet-e2e-never-logged"
LIMITED = "sk-fleet-limited-rpm6"  # rpm: 6 (tests/e2e/test_shared_limits.py only)
FREE = "sk-fleet-team-a"
OTHER = "sk-fleet-team-b"
BREAKER = {"consecutive_failures": 4, "min_calls": 1000, "open_s": 1.0, "max_open_s": 1.0,
           "half_open_probes": 1}


@dataclass(slots=True)
class Fleet:
    kind: str  # "workers" | "replicas"
    urls: list[str]
    mock_url: str
    scope: str  # what /admin/stats says it covers
    procs: list[GatewayProcess] = field(default_factory=list)


@dataclass(slots=True)
class Pinned:
    """One keep-alive connection to one gateway process."""

    url: str
    http: httpx2.AsyncClient
    replica: str = ""

    def client(self, key: str = FREE) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=self.url + "/v1", api_key=key, http_client=self.http, max_retries=0)

    async def stats(self) -> dict[str, Any]:
        resp = await self.http.get(self.url + "/admin/stats", headers={"authorization": f"Bearer {ADMIN}"})
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body


def fleet_config(mock_url: str, **overrides: Any) -> dict[str, Any]:
    upstream = {"base_url": mock_url + "/v1", "api_key": "sk-upstream-secret", "retry": {"max_attempts": 1},
                "circuit_breaker": BREAKER}
    return gateway_config(
        mock_url, admin={"api_key": ADMIN},
        auth={"mode": "keys", "keys": [{"key": LIMITED, "tenant": "limited", "rpm": 6},
                                       {"key": FREE, "tenant": "team-a"},
                                       {"key": OTHER, "tenant": "team-b"}]},
        upstreams={"mock": upstream, "flaky": upstream},
        routes=[{"match": {"model": "flaky"}, "upstream": "flaky"},
                {"match": {"model": "*"}, "upstream": "mock"}],
        **overrides)


@pytest.fixture(scope="session")
def mock_process() -> Iterator[str]:
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="mock-")) / "mock.log"
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "mock-upstream", "--port", str(port)],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_ready(url, path="/_mock/health"))
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session", params=["workers", "replicas"])
def fleet(request: pytest.FixtureRequest, mock_process: str) -> Iterator[Fleet]:
    if request.param == "workers":
        # a generous timeout: a loaded test machine must not be mistaken for a Redis outage
        state = {"backend": "memory", "timeout_ms": 5000}
        procs = [spawn_gateway(fleet_config(mock_process, state=state), extra_args=["--workers", "2"])]
        scope = "host"
    else:
        redis: RedisServer = request.getfixturevalue("redis_server")
        state = {"backend": "redis", "redis_url": redis.url, "key_prefix": "fleet-e2e:", "timeout_ms": 5000}
        procs = [spawn_gateway(fleet_config(mock_process, state=state)) for _ in range(2)]
        scope = "fleet"
    try:
        for proc in procs:
            asyncio.run(wait_ready(proc.url, timeout_s=60))
        yield Fleet(kind=request.param, urls=[p.url for p in procs], mock_url=mock_process, scope=scope,
                    procs=procs)
    finally:
        for proc in procs:
            proc.stop()


def pinned_http() -> httpx2.AsyncClient:
    one = httpx2.Limits(max_connections=1, max_keepalive_connections=1)
    return openai.DefaultAsyncHttpxClient(limits=one)


async def whoami(pin: Pinned) -> str:
    rows = (await pin.stats())["replicas"]
    return next(str(r["replica"]) for r in rows if r["self"])


@pytest_asyncio.fixture
async def pair(fleet: Fleet) -> AsyncIterator[tuple[Pinned, Pinned]]:
    """Two clients on two different gateway processes (two workers, or two replicas)."""
    opened: list[Pinned] = []
    try:
        if fleet.kind == "replicas":
            pins = [Pinned(url, pinned_http()) for url in fleet.urls]
            opened.extend(pins)
        else:
            pins = await two_workers(fleet.urls[0], opened)
        for pin in pins:
            pin.replica = await whoami(pin)
        assert pins[0].replica != pins[1].replica
        yield pins[0], pins[1]
    finally:
        for pin in opened:
            await pin.http.aclose()


async def two_workers(url: str, opened: list[Pinned]) -> list[Pinned]:
    """New connections until two land on different workers (SO_REUSEPORT spreads them by hash)."""
    seen: dict[str, Pinned] = {}
    for _ in range(64):
        pin = Pinned(url, pinned_http())
        opened.append(pin)
        seen.setdefault(await whoami(pin), pin)
        if len(seen) == 2:
            return list(seen.values())
    raise AssertionError("64 connections all landed on one worker")


async def mock_total(fleet: Fleet) -> int:
    async with httpx2.AsyncClient() as http:
        resp = await http.get(fleet.mock_url + "/_mock/stats")
        return int(resp.json()["total"])


async def mock_faults(fleet: Fleet, entries: list[dict[str, Any]]) -> None:
    async with httpx2.AsyncClient() as http:
        resp = await http.post(fleet.mock_url + "/_mock/faults", json={"faults": entries})
        assert resp.status_code == 200, resp.text
