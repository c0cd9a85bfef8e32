"""bench.idle_memory: its idle streams are open, committed streams, and its report ranks allocations."""
from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp

from bench.scenarios import IDLE_FAULT, STREAM
from gateway.mock import MockServer
from tests.support.servers import gateway_config, start_gateway

ROOT = Path(__file__).resolve().parents[2]


async def first_read(url: str, fault: str) -> bytes | None:
    """The first bytes a client reads within 2 s (None: still waiting for the headers or a chunk)."""
    async with aiohttp.ClientSession() as session:
        try:
            async with asyncio.timeout(2.0):
                async with session.post(url + "/chat/completions", data=STREAM.replace(b"NONCE", b"1"),
                                        headers={"content-type": "application/json",
                                                 "x-mock-fault": fault}) as resp:
                    return await resp.content.readany()
        except TimeoutError:
            return None


async def test_the_idle_fault_gives_streams_that_the_gateway_has_committed(mock_upstream: MockServer) -> None:
    gw = await start_gateway(gateway_config(mock_upstream.url))
    try:
        first = await first_read(gw.base_url, IDLE_FAULT)
        assert first is not None and b'"role":"assistant"' in first
        # the control: a role chunk alone is not committed, the client would still wait for the headers
        assert await first_read(gw.base_url, "stall_after_chunks=1;stall_ms=300000") is None
    finally:
        await gw.close()


def test_idle_memory_reports_rss_per_stream_and_the_largest_allocations() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.idle_memory", "gw-off", "--streams", "20", "--trace"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "gw-off: 20 streams open (0 errors)" in out and "KB per stream" in out
    assert "traced:" in out and "aiohttp" in out and "gateway/handler.py" in out
