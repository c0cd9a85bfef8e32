"""What the gateway adds to an MCP ``tools/call``: the SDK server alone vs through ``/mcp/{server}``.

Starts the test MCP server (official SDK, Streamable HTTP, SSE answers) and the gateway as separate
processes, opens one MCP session on each target with raw HTTP, and times ``tools/call get_quote`` at
concurrency 1 and 32; then the catalog-cache hit (``tools/list`` answered by the gateway). The
machine may be shared: besides latency, each gateway row gives the gateway process's CPU time per
call (user + system, from ``/proc``), which other load disturbs much less.

    python -m bench.mcp --seconds 2
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import aiohttp

from bench.loadgen import percentile
from tests.support.servers import free_port, gateway_config, spawn_gateway, wait_ready

HEAD = {"accept": "application/json, text/event-stream", "content-type": "application/json",
        "mcp-protocol-version": "2025-06-18"}


async def open_session(http: aiohttp.ClientSession, url: str) -> dict[str, str]:
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}}
    async with http.post(url, json=init, headers=HEAD) as resp:
        await resp.read()
        headers = {**HEAD, "mcp-session-id": resp.headers["mcp-session-id"]}
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    async with http.post(url, json=note, headers=headers) as resp:
        await resp.read()
    return headers


async def timed(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], body: dict[str, Any]
) -> float:
    start = time.perf_counter()
    async with http.post(url, json=body, headers=headers) as resp:
        data = await resp.read()
        assert resp.status == 200 and b'"result"' in data, data[:200]
    return time.perf_counter() - start


async def load(url: str, method: str, concurrency: int, seconds: float) -> list[float]:
    params = {"name": "get_quote", "arguments": {"symbol": "IBM"}} if method == "tools/call" else {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        headers = await open_session(http, url)
        out: list[float] = []
        end = time.perf_counter() + seconds

        async def worker(n: int) -> None:
            i = 0
            while time.perf_counter() < end:
                i += 1
                out.append(
                    await timed(
                        http,
                        url,
                        headers,
                        {"jsonrpc": "2.0", "id": n * 10**6 + i, "method": method, "params": params},
                    )
                )

        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return sorted(out)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def row(name: str, values: list[float], base: list[float] | None = None, cpu: float | None = None) -> str:
    p50, p99 = percentile(values, 50) * 1e3, percentile(values, 99) * 1e3
    added = "| |"
    if base:
        added = f"| {p50 - percentile(base, 50) * 1e3:+.2f} | {p99 - percentile(base, 99) * 1e3:+.2f} |"
    per_call = f" {cpu * 1e3 / len(values):.3f} |" if cpu is not None and values else " |"
    return f"| {name} | {len(values)} | {p50:.2f} | {p99:.2f} {added}{per_call}"


async def through(pid: int, url: str, method: str, c: int, seconds: float) -> tuple[list[float], float]:
    before = cpu_s(pid)
    values = await load(url, method, c, seconds)
    return values, cpu_s(pid) - before


async def run(seconds: float, mcp_url: str, gw_url: str, gw_pid: int) -> None:
    print("| target | calls | p50 ms | p99 ms | added p50 ms | added p99 ms | gateway CPU ms/call |")
    print("|---|---|---|---|---|---|---|")
    for c in (1, 32):
        direct = await load(mcp_url, "tools/call", c, seconds)
        proxied, cpu = await through(gw_pid, gw_url, "tools/call", c, seconds)
        print(row(f"direct tools/call c={c}", direct))
        print(row(f"gateway tools/call c={c}", proxied, direct, cpu))
    direct = await load(mcp_url, "tools/list", 1, seconds)
    hits, cpu = await through(gw_pid, gw_url, "tools/list", 1, seconds)
    print(row("direct tools/list c=1", direct))
    print(row("gateway tools/list (catalog hit) c=1", hits, direct, cpu))


async def port_open(port: int, timeout_s: float = 20.0) -> None:
    end = time.monotonic() + timeout_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(prog="python -m bench.mcp")
    args.add_argument("--seconds", type=float, default=3.0)
    ns = args.parse_args(argv)
    port = free_port()
    code = (
        f"import time\nfrom tests.support import mcp_server as m\nm.free_port = lambda: {port}\n"
        "s = m.McpServerThread(); s.start()\nwhile True: time.sleep(1)\n"
    )
    quiet = subprocess.DEVNULL
    server = subprocess.Popen([sys.executable, "-c", code], stdout=quiet, stderr=quiet)
    mcp_url = f"http://127.0.0.1:{port}/mcp"
    gw = spawn_gateway(gateway_config("http://127.0.0.1:9/v1", mcp={"servers": {"quotes": {"url": mcp_url}}}))
    try:
        asyncio.run(wait_ready(gw.url))
        asyncio.run(port_open(port))
        asyncio.run(run(ns.seconds, mcp_url, gw.url + "/mcp/quotes", gw.proc.pid))
    finally:
        gw.stop()
        server.terminate()
        server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
