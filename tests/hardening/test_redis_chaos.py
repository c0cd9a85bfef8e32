"""Redis chaos under traffic, with two real gateway processes sharing one Redis through a fault proxy.

For each fault (``kill -9``, ``SIGSTOP``, +500 ms of latency) while a steady load runs through both
gateways: no 5xx is caused by Redis, the latency rise stays bounded by the Redis timeout, a client
limit of L requests per minute admits at most L across both gateways while Redis is out (each falls
back to L / ``state.replicas_hint``, never replicas x L), and both gateways report Redis up again
within 5 s of it coming back, without a restart.
"""
from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
import pytest_asyncio

from gateway.mock import MockServer
from tests.hardening.procstats import percentile
from tests.support.fault_proxy import FaultProxy
from tests.support.polling import poll_until
from tests.support.servers import (
    GatewayProcess,
    RedisServer,
    free_port,
    gateway_config,
    redis_server_binary,
    spawn_gateway,
    wait_ready,
)

L = 40  # rpm of each scenario's key, shared by both gateways
TIMEOUT_MS = 200
SCENARIOS = ("kill", "stop", "latency")


@dataclass
class Chaos:
    redis: RedisServer
    proxy: FaultProxy
    gateways: list[GatewayProcess]
    session: aiohttp.ClientSession


@dataclass
class Load:
    """Steady traffic through both gateways: (seconds since start, status, latency) of every request."""

    results: list[tuple[float, int, float]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def window(self, start: float, end: float) -> list[tuple[float, int, float]]:
        return [r for r in self.results if start <= r[0] < end]


def chaos_config(mock_url: str, redis_url: str) -> dict[str, object]:
    keys = [{"key": "sk-load", "tenant": "load", "rpm": 10_000_000}]
    keys += [{"key": f"sk-{name}", "tenant": name, "rpm": L} for name in SCENARIOS]
    return gateway_config(mock_url, auth={"mode": "keys", "keys": keys},
                          state={"backend": "redis", "redis_url": redis_url, "timeout_ms": TIMEOUT_MS,
                                 "replicas_hint": 2, "key_prefix": "chaos:"})


@pytest_asyncio.fixture
async def chaos(mock_upstream: MockServer) -> AsyncIterator[Chaos]:
    redis = RedisServer(port=free_port(), binary=redis_server_binary() or "redis-server")
    redis.start()
    proxy = await FaultProxy("127.0.0.1", redis.port, scheme="redis").start()
    cfg = chaos_config(mock_upstream.url, proxy.url + "/0")
    gateways = [spawn_gateway(cfg), spawn_gateway(cfg)]
    try:
        for gw in gateways:
            await wait_ready(gw.url)
        async with aiohttp.ClientSession() as session:
            yield Chaos(redis, proxy, gateways, session)
    finally:
        for gw in gateways:
            gw.stop()
        await proxy.close()
        if redis.proc is not None and redis.proc.poll() is None:
            os.kill(redis.proc.pid, signal.SIGCONT)
        redis.kill()


async def chat(session: aiohttp.ClientSession, gw: GatewayProcess, key: str, text: str,
               temperature: float | None = None) -> tuple[int, float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": text}], "max_tokens": 8,
            **({"temperature": temperature} if temperature is not None else {})}
    try:
        async with session.post(gw.url + "/v1/chat/completions", json=body,
                                headers={"Authorization": f"Bearer {key}"}) as resp:
            await resp.read()
            return resp.status, loop.time() - started
    except aiohttp.ClientError:
        return 0, loop.time() - started


async def steady_load(env: Chaos, load: Load, t0: float, workers: int = 4) -> None:
    loop = asyncio.get_running_loop()

    async def worker(i: int) -> None:
        n = 0
        while not load.stop.is_set():
            gw = env.gateways[(i + n) % 2]
            cached = n % 2 == 0  # half repeat a few prompts at temperature 0: the Redis answer store too
            status, took = await chat(env.session, gw, "sk-load", f"steady {n % 5 if cached else (i, n)}",
                                      0 if cached else None)
            load.results.append((loop.time() - t0, status, took))
            n += 1
            await asyncio.sleep(0.02)

    await asyncio.gather(*(worker(i) for i in range(workers)))


async def backend_up(session: aiohttp.ClientSession, gw: GatewayProcess) -> float | None:
    async with session.get(gw.url + "/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith("gateway_state_backend_up"):
                return float(line.rsplit(" ", 1)[1])
    return None


async def wait_backend(env: Chaos, up: float, timeout_s: float) -> float:
    """Seconds until both gateways report the backend ``up`` (1) or down (0)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(timeout_s):
        async def reported() -> bool:
            return [await backend_up(env.session, gw) for gw in env.gateways] == [up, up]

        await poll_until(reported, 0.1)
    return loop.time() - started


async def limit_probe(env: Chaos, key: str) -> list[int]:
    """3 x L distinct requests on one key, alternating gateways, 8 at a time."""
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> int:
        async with sem:
            return (await chat(env.session, env.gateways[i % 2], key, f"probe {key} {i}"))[0]

    return list(await asyncio.gather(*(one(i) for i in range(3 * L))))


def fault(env: Chaos, name: str) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """(break, repair) for one scenario."""
    async def kill() -> None:
        env.redis.kill()  # SIGKILL: no goodbye, connections die, data is lost

    async def restart() -> None:
        env.redis.start()

    async def stop() -> None:
        assert env.redis.proc is not None
        # a blackhole: connects and writes succeed, nothing answers
        os.kill(env.redis.proc.pid, signal.SIGSTOP)

    async def cont() -> None:
        assert env.redis.proc is not None
        os.kill(env.redis.proc.pid, signal.SIGCONT)

    async def slow() -> None:
        env.proxy.set(latency_s=0.5)

    async def fast() -> None:
        env.proxy.clear()

    return {"kill": (kill, restart), "stop": (stop, cont), "latency": (slow, fast)}[name]


async def run_scenario(env: Chaos, name: str, fault_s: float) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    load, t0 = Load(), loop.time()
    runner = asyncio.create_task(steady_load(env, load, t0))
    try:
        await asyncio.sleep(2.0)
        broken_at = loop.time() - t0
        breaker, repair = fault(env, name)
        await breaker()
        down_after = await wait_backend(env, 0, 10)
        probe = await limit_probe(env, f"sk-{name}")
        await asyncio.sleep(max(0.0, fault_s - (loop.time() - t0 - broken_at)))
        repaired_at = loop.time() - t0
        await repair()
        recovery = await wait_backend(env, 1, 10)
        await asyncio.sleep(1.0)
    finally:
        load.stop.set()
        await runner
    before = [r[2] for r in load.window(0, broken_at)]
    during = [r[2] for r in load.window(broken_at, repaired_at)]
    figures = {"baseline_p99_s": percentile(before, 99), "fault_p99_s": percentile(during, 99),
               "fault_max_s": max(during, default=0.0), "admitted_while_down": probe.count(200),
               "down_detected_s": down_after, "recovery_s": recovery, "requests": len(load.results)}
    print(f"redis chaos [{name}]:", {k: round(v, 3) for k, v in figures.items()})
    statuses = {r[1] for r in load.results}
    assert statuses == {200}, statuses  # never a 5xx (or a refusal) because of Redis
    assert set(probe) <= {200, 429}, probe
    refill = L / 60 * (fault_s + 2)  # what the buckets refill while the probe runs
    assert L / 2 <= probe.count(200) <= L + refill, probe.count(200)  # <= L, never 2 x L
    assert figures["fault_p99_s"] <= figures["baseline_p99_s"] + 3 * TIMEOUT_MS / 1000 + 0.3, figures
    assert recovery <= 5.0, figures
    return figures


@pytest.mark.parametrize("name", SCENARIOS)
async def test_redis_fault_under_traffic(chaos: Chaos, name: str) -> None:
    """kill -9 / SIGSTOP / +500 ms: no 5xx, latency rise bounded by the Redis timeout, <= L admitted across
    both gateways while Redis is out, both report Redis up again within 5 s (figures printed)."""
    await run_scenario(chaos, name, fault_s=3.0)


@pytest.mark.slow
@pytest.mark.parametrize("name", SCENARIOS)
async def test_redis_fault_for_30_s(chaos: Chaos, name: str) -> None:
    """The same promises with the fault held for 30 s (make chaos)."""
    await run_scenario(chaos, name, fault_s=30.0)
