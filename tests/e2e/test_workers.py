"""`gateway serve --workers 2`: one port, a killed worker replaced, metrics for the whole pod, clean drain."""
from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from gateway.mock import MockServer
from tests.support.servers import GatewayProcess, free_port, gateway_config, spawn_gateway, wait_ready
from tests.support.until import until

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def children(pid: int) -> set[int]:
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def listening_inodes(port: int) -> set[str]:
    """Socket inodes in LISTEN state on ``port`` (IPv4 and IPv6 tables)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[1].rsplit(":", 1)[1] == f"{port:04X}" and cols[3] == "0A":
                found.add(cols[9])
    return found


def listens_on(pid: int, port: int) -> bool:
    inodes = listening_inodes(port)
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def worker_env(pid: int, name: str) -> str | None:
    for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        key, _, value = item.partition(b"=")
        if key.decode() == name:
            return value.decode()
    return None


def serving_workers(gw: GatewayProcess) -> set[int]:
    return {pid for pid in children(gw.proc.pid) if listens_on(pid, gw.port)}


async def requests_total(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "gateway_requests_total")


async def until_total(session: aiohttp.ClientSession, url: str, expected: float,
                      within_s: float = 10.0) -> None:
    async def reached() -> bool:
        return await requests_total(session, url) == expected

    await until(reached, timeout=within_s, interval=0.05, message=f"gateway_requests_total == {expected}")


async def send_many(url: str, n: int) -> list[int]:
    """``n`` requests, each on a new connection so SO_REUSEPORT spreads them over the workers."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        async def one() -> int:
            async with session.post(url + "/v1/chat/completions", json=CHAT) as resp:
                await resp.read()
                return resp.status

        return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_two_workers_one_port_survive_a_kill_and_report_the_whole_pod(
    mock_upstream: MockServer,
) -> None:
    """Both workers listen on one port (and on metrics.port), a SIGKILLed one is replaced, and /metrics
    counts every worker's requests, the dead one's included."""
    metrics_port = free_port()
    gw = spawn_gateway(gateway_config(mock_upstream.url, metrics={"port": metrics_port}),
                       extra_args=["--workers", "2"])
    metrics_url = f"http://127.0.0.1:{metrics_port}"
    try:
        await wait_ready(gw.url, timeout_s=60)
        await until(lambda: len(serving_workers(gw)) == 2, timeout=40.0, interval=0.05)
        first = serving_workers(gw)
        metrics_dir = worker_env(next(iter(first)), "PROMETHEUS_MULTIPROC_DIR")
        assert metrics_dir and Path(metrics_dir).is_dir()  # noqa: ASYNC240  one stat of a local dir
        async with AsyncOpenAI(base_url=gw.url + "/v1", api_key="sk-client", max_retries=0) as client:
            reply = await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
        assert reply.choices[0].message.content
        assert await send_many(gw.url, 39) == [200] * 39
        # Both workers served (each wrote its own value files), and any scrape reports all 40 requests.
        await until(
            lambda: first <= {int(p.stem.rsplit("_", 1)[1]) for p in Path(metrics_dir).glob("counter_*.db")},
            timeout=40.0,
            interval=0.05,
        )
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            await until_total(session, gw.url, 40)  # the count lands just after each response ends
            for _ in range(4):  # new connections: scrapes land on either worker, on either port
                assert await requests_total(session, gw.url) == 40
                assert await requests_total(session, metrics_url) == 40

            victim = min(first)
            os.kill(victim, signal.SIGKILL)
            await until(lambda: victim not in children(gw.proc.pid), timeout=40.0, interval=0.05)
            assert await send_many(gw.url, 20) == [200] * 20  # the survivor takes all new connections
            await until(lambda: len(serving_workers(gw)) == 2 and victim not in serving_workers(gw),
                        timeout=40.0, interval=0.05)
            assert await send_many(gw.url, 10) == [200] * 10
            await until_total(session, gw.url, 70)
            totals = [await requests_total(session, gw.url) for _ in range(4)]
        assert totals == [70.0] * 4  # the dead worker's counts are kept: totals never go backwards
        gw.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(gw.proc.wait, 20) == 0
        assert not Path(metrics_dir).exists()  # noqa: ASYNC240  one stat of a local dir
        assert "worker_restart" in gw.logs()
    finally:
        gw.stop()


async def test_sigterm_drains_every_worker_and_exits_zero(mock_upstream: MockServer) -> None:
    """Streams open on both workers finish with [DONE] after SIGTERM; readiness drops; exit code 0."""
    gw = spawn_gateway(gateway_config(mock_upstream.url, server={"drain_s": 10, "grace_s": 0.5}),
                       extra_args=["--workers", "2"])
    try:
        await wait_ready(gw.url, timeout_s=60)
        await until(lambda: len(serving_workers(gw)) == 2, timeout=40.0, interval=0.05)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            streams = []
            for _ in range(6):
                resp = await session.post(gw.url + "/v1/chat/completions",
                                          headers={"x-mock-fault": "drip_ms=100"},
                                          json={**CHAT, "stream": True, "max_tokens": 12})
                assert resp.status == 200
                await resp.content.readline()  # open
                streams.append(resp)
            gw.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(5):
                while True:
                    async with session.get(gw.url + "/readyz") as ready:
                        if ready.status == 503:
                            break
            bodies = [(await s.read()).decode() for s in streams]
        assert all(b.rstrip().endswith("data: [DONE]") for b in bodies)
        assert await asyncio.to_thread(gw.proc.wait, 20) == 0
        assert gw.logs().count('"msg":"gateway stopped"') == 2
    finally:
        gw.stop()
