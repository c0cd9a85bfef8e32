"""SIGTERM: readiness drops at once, open streams finish or end with an explicit error, exit 0."""
from __future__ import annotations

import asyncio
import signal

import aiohttp

from gateway.mock import MockServer
from tests.support.servers import gateway_config, spawn_gateway, wait_ready

CHAT = [{"role": "user", "content": "drain me"}]


async def _open_stream(session: aiohttp.ClientSession, url: str, fault: str) -> aiohttp.ClientResponse:
    resp = await session.post(url + "/v1/chat/completions", headers={"x-mock-fault": fault},
                              json={"model": "gpt-4o", "messages": CHAT, "stream": True, "max_tokens": 10})
    assert resp.status == 200
    await resp.content.readline()  # the first event arrived: the stream is open
    return resp


async def test_sigterm_drains_open_streams(mock_upstream: MockServer) -> None:
    """A short stream completes with [DONE]; one longer than drain_s ends with an error event; exit 0."""
    gw = spawn_gateway(gateway_config(mock_upstream.url, server={"drain_s": 2.5, "grace_s": 0.5}))
    try:
        await wait_ready(gw.url)
        async with aiohttp.ClientSession() as session:
            short = await _open_stream(session, gw.url, "drip_ms=80")
            long = await _open_stream(session, gw.url, "stall_after_chunks=2;stall_ms=60000")
            gw.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(5):
                while True:  # readiness flips at once while connections are still accepted
                    async with session.get(gw.url + "/readyz") as ready:
                        if ready.status == 503:
                            break
            short_body = (await short.read()).decode()
            long_body = (await long.read()).decode()
        assert short_body.rstrip().endswith("data: [DONE]")
        assert "[DONE]" not in long_body
        assert '"code":"gateway_shutdown"' in long_body.replace(" ", "")
        assert await asyncio.to_thread(gw.proc.wait, 10) == 0
    finally:
        gw.stop()


async def test_sigterm_when_idle_exits_zero(mock_upstream: MockServer) -> None:
    """With nothing open, SIGTERM exits 0 promptly."""
    gw = spawn_gateway(gateway_config(mock_upstream.url, server={"drain_s": 5, "grace_s": 0}))
    try:
        await wait_ready(gw.url)
        gw.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(gw.proc.wait, 10) == 0
    finally:
        gw.stop()
