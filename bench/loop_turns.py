"""Loop turns on a stream's way to its first token: a count the machine's load does not move.

Under concurrency every turn of the event loop a request waits for is every other stream's work of that
turn, so each turn on the first token's path adds to TTFT at c=32 even when it costs microseconds at
c=1. This serves one gateway variant in process (the fake provider in another process), sends
``stream-c1`` streams one at a time, and counts the loop's ready-queue passes (a callback that re-arms
itself with ``call_soon``) from the request's bytes to the upstream request head, and from the first
upstream content bytes to the first content chunk written to the client:

    python -m bench.loop_turns gw-off gw-default --streams 20

It patches the gateway's classes in this process (the raw client's connection, aiohttp's request handler
and response) to see those moments; run it from the tree to measure (``cd /tmp/base && PYTHONPATH=$PWD
python /path/to/bench/loop_turns.py ...`` for a baseline).
"""
from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from typing import Any

import aiohttp
from aiohttp import web_protocol, web_response

from bench import procs
from bench.loadgen import _CONTENT
from bench.scenarios import CHAT_PATH, GATEWAYS, all_scenarios, gateway_config
from gateway.rawhttp import connection


class Turns:
    """Counts loop turns between ``start(name)`` and ``stop(name)``, one span at a time."""

    def __init__(self) -> None:
        self.turns = 0
        self.name = ""
        self.counted: dict[str, int] = {}

    def start(self, name: str) -> None:
        if name not in self.counted and not self.name:
            self.name, self.turns = name, 0
            asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        if self.name:
            self.turns += 1
            asyncio.get_running_loop().call_soon(self._tick)

    def stop(self, name: str) -> None:
        if self.name == name:
            self.counted[name], self.name = self.turns, ""


def instrument(turns: Turns) -> None:
    """Mark the four moments (these patches live as long as this process)."""
    request_in = web_protocol.RequestHandler.data_received
    head_out = connection.RawConnection.start
    body_in = connection.RawConnection.data_received
    write = web_response.StreamResponse.write

    def on_request(self: Any, data: bytes) -> Any:
        if data.startswith(b"POST"):
            turns.start("request")
        return request_in(self, data)

    def on_head(self: Any, *args: Any) -> Any:
        turns.stop("request")
        return head_out(self, *args)

    def on_body(self: Any, data: bytes) -> Any:
        if _CONTENT.search(data):
            turns.start("token")
        return body_in(self, data)

    async def on_write(self: Any, data: Any) -> Any:
        if data and _CONTENT.search(bytes(data)):
            turns.stop("token")
        return await write(self, data)

    web_protocol.RequestHandler.data_received = on_request  # type: ignore[method-assign]
    connection.RawConnection.start = on_head  # type: ignore[method-assign]
    connection.RawConnection.data_received = on_body  # type: ignore[method-assign]
    web_response.StreamResponse.write = on_write  # type: ignore[method-assign]


async def count(variant: str, streams: int, upstream: str, turns: Turns) -> dict[str, Counter[int]]:
    from tests.support.servers import start_gateway

    gw = await start_gateway(gateway_config(upstream, GATEWAYS[variant]))
    scenario = next(s for s in all_scenarios() if s.name == "stream-c1")
    seen: dict[str, Counter[int]] = {"request": Counter(), "token": Counter()}
    async with aiohttp.ClientSession() as session:
        for i in range(streams):
            turns.counted = {}
            body = scenario.body.replace(b"NONCE", f"turns{time.time_ns()}-{i}".encode())
            async with session.post(gw.url + CHAT_PATH, data=body, headers=scenario.headers) as resp:
                await resp.read()
            for name, n in turns.counted.items():
                seen[name][n] += 1
    await gw.close()
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", choices=sorted(GATEWAYS))
    parser.add_argument("--streams", type=int, default=20)
    args = parser.parse_args()
    import uvloop

    turns = Turns()
    instrument(turns)
    mock = procs.start_mock()
    try:
        for variant in args.variants:
            seen = uvloop.run(count(variant, args.streams, mock.url + "/v1", turns))
            request, token = (dict(sorted(seen[name].items())) for name in ("request", "token"))
            print(f"{variant:14s} request -> upstream head: {request}   first upstream token -> client write:"
                  f" {token}  (turns: streams)")
    finally:
        mock.stop()


if __name__ == "__main__":
    main()
