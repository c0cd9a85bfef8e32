"""Drain at scale: SIGTERM with 100 open streams; every one finishes or ends with an explicit error event.

Extends ``tests/e2e/test_shutdown.py`` (two streams) to 100: half of them are short enough to finish
within ``server.drain_s`` and must end with ``[DONE]``; the other half stall upstream and must end with
the ``gateway_shutdown`` error event at the drain deadline. A stream that just stops (no ``[DONE]``, no
error event, or a reset) is a silent cut: there must be none. The process exits 0 on time.
"""
from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from gateway.mock import MockServer
from tests.support.servers import GatewayProcess, gateway_config, spawn_gateway, wait_ready

DRAIN_S, GRACE_S = 3.0, 0.5
SHORT = "drip_ms=60"  # 16 tokens: ~1 s, well within drain_s
LONG = "stall_after_chunks=2;stall_ms=60000"


async def open_stream(
    session: aiohttp.ClientSession, gw: GatewayProcess, fault: str, i: int
) -> aiohttp.ClientResponse:
    resp = await session.post(gw.url + "/v1/chat/completions", headers={"x-mock-fault": fault},
                              json={"model": "gpt-4o", "stream": True,
                                    "messages": [{"role": "user", "content": f"drain {i}"}]})
    assert resp.status == 200
    await resp.content.readline()  # the first event arrived: the stream is open
    return resp


async def outcome(resp: aiohttp.ClientResponse) -> str:
    """done | error_event | silent_cut."""
    try:
        body = (await resp.read()).decode()
    except aiohttp.ClientError:
        return "silent_cut"
    if body.rstrip().endswith("data: [DONE]"):
        return "done"
    if "[DONE]" not in body and '"code":"gateway_shutdown"' in body.replace(" ", ""):
        return "error_event"
    return "silent_cut"


async def drain_run(mock: MockServer, streams: int) -> dict[str, int | float]:
    pool = {"max_connections": max(256, 2 * streams)}  # every stream holds an upstream connection
    gw = spawn_gateway(
        gateway_config(
            mock.url,
            server={"drain_s": DRAIN_S, "grace_s": GRACE_S},
            upstreams={"mock": {"base_url": mock.url, "api_key": "sk-up", "pool": pool}},
        )
    )
    loop = asyncio.get_running_loop()
    try:
        await wait_ready(gw.url)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            opened = await asyncio.gather(*(open_stream(session, gw, SHORT if i % 2 else LONG, i)
                                            for i in range(streams)))
            gw.proc.send_signal(signal.SIGTERM)
            signalled = loop.time()
            results = await asyncio.gather(*(outcome(r) for r in opened))
        code = await asyncio.to_thread(gw.proc.wait, DRAIN_S + GRACE_S + 15)
        took = loop.time() - signalled
    finally:
        gw.stop()
    short = [results[i] for i in range(streams) if i % 2]
    figures = {"streams": streams, "done": results.count("done"), "error_event": results.count("error_event"),
               "silent_cut": results.count("silent_cut"), "exit_code": code, "exit_after_s": round(took, 2)}
    print("drain figures:", figures)
    assert figures["silent_cut"] == 0 and code == 0, figures
    assert short == ["done"] * len(short), figures  # those that could finish in time did
    assert figures["error_event"] == streams - len(short), figures
    assert took <= DRAIN_S + GRACE_S + 5, figures
    return figures


async def test_sigterm_with_100_open_streams(mock_upstream: MockServer) -> None:
    """100 streams at SIGTERM: 50 finish with [DONE], 50 end with the shutdown error event, none cut;
    exit 0."""
    await drain_run(mock_upstream, 100)


@pytest.mark.slow
async def test_sigterm_with_1000_open_streams(mock_upstream: MockServer) -> None:
    """The same at 1,000 open streams (make chaos)."""
    await drain_run(mock_upstream, 1000)
