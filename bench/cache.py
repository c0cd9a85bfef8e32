"""Cache latency: exact hits (memory) and semantic hits, measured inside the gateway.

Runs the real gateway in-process (uvloop) in front of the fake provider, warms
one entry, then sends sequential requests over one keep-alive connection and
records, for each hit, the time the gateway spent on it: a timing middleware
around the aiohttp handler (``time.perf_counter``: uvloop's loop clock only has
millisecond resolution), from the handler's start (before the body is read and
parsed) to the end of the response (after the last byte was written). The
client's round trip is reported beside it. Semantic hits are measured twice: with a new text
each time (the question is embedded: the model's cost) and with a repeated
text (its vector memoised).

    python -m bench.cache                 # defaults: 3000 exact, 300 semantic
    python -m bench.cache --exact 5000 --semantic 0
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import aiohttp
from aiohttp import web

from gateway.app import build_app
from gateway.appstate import APP_STATE
from gateway.config import parse_config
from gateway.mock import MockConfig, start_mock
from gateway.server import make_runner
from tests.support.servers import bound_socket, gateway_config

TIMES = web.AppKey("bench_times", list)


@web.middleware
async def timing(request: web.Request, handler: Any) -> web.StreamResponse:
    started = time.perf_counter()
    resp = await handler(request)
    if resp.headers.get("x-gateway-cache") in ("hit", "semantic-hit"):
        request.app[TIMES].append(time.perf_counter() - started)
    return resp


class Gateway:
    """The real app with a timing middleware (the only difference from ``start_gateway``)."""

    def __init__(self, app: web.Application, runner: web.AppRunner, port: int) -> None:
        self.app, self.runner, self.base_url = app, runner, f"http://127.0.0.1:{port}/v1"

    @property
    def state(self) -> Any:
        return self.app[APP_STATE]

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_gateway(cfg: dict[str, Any]) -> Gateway:
    config = parse_config(cfg, {})
    app = build_app(config)
    app.middlewares.append(timing)
    app[TIMES] = []
    runner = make_runner(app, config)
    await runner.setup()
    sock = bound_socket()
    await web.SockSite(runner, sock).start()
    return Gateway(app, runner, sock.getsockname()[1])

MSGS = [{"role": "system", "content": "You are terse."},
        {"role": "user", "content": "How do I undo the last git commit?"}]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def line(name: str, inside: list[float], rtt: list[float]) -> str:
    ms = 1000.0
    return (
        f"{name:<34} n={len(inside):<5} inside p50={pct(inside, 0.5) * ms:.3f} ms "
        f"p99={pct(inside, 0.99) * ms:.3f} ms"
        f" | client rtt p50={pct(rtt, 0.5) * ms:.3f} ms mean={statistics.mean(rtt) * ms:.3f} ms"
    )


async def run(
    url: str, gw: Any, bodies: list[dict[str, Any]], expect: str
) -> tuple[list[float], list[float]]:
    inside: list[float] = gw.app[TIMES]
    inside.clear()
    rtt: list[float] = []
    async with aiohttp.ClientSession() as http:
        for body in bodies:
            started = time.perf_counter()
            async with http.post(url, json=body, headers={"authorization": "Bearer sk-bench"}) as resp:
                await resp.read()
                assert resp.headers.get("x-gateway-cache") == expect, resp.headers.get("x-gateway-cache")
            rtt.append(time.perf_counter() - started)
    return list(inside), rtt


async def main(args: argparse.Namespace) -> None:
    mock = await start_mock(MockConfig())
    gws = []
    try:
        gw = await start_gateway(gateway_config(mock.url))
        gws.append(gw)
        url = gw.base_url + "/chat/completions"
        body = {"model": "gpt-4o", "messages": MSGS, "temperature": 0}
        await run(url, gw, [body], "miss")
        if args.exact:
            print(line("exact hit, non-stream", *await run(url, gw, [body] * args.exact, "hit")))
            print(
                line(
                    "exact hit, stream (SSE replay)",
                    *await run(url, gw, [{**body, "stream": True}] * args.exact, "hit"),
                )
            )
        if args.semantic:
            sgw = await start_gateway(gateway_config(mock.url, cache={"semantic": {"enabled": True}}))
            gws.append(sgw)
            surl = sgw.base_url + "/chat/completions"
            await run(surl, sgw, [{"model": "gpt-4o", "messages": MSGS}], "miss")
            para = "How can I undo my last git commit?"
            fresh = [{"model": "gpt-4o", "messages": [MSGS[0], {"role": "user", "content": para + " " * i}]}
                     for i in range(1, args.semantic + 1)]
            print(line("semantic hit, new text (embedded)", *await run(surl, sgw, fresh, "semantic-hit")))
            print(line("semantic hit, repeated text", *await run(surl, sgw, fresh[:1] * args.semantic,
                                                                  "semantic-hit")))
    finally:
        for g in gws:
            await g.close()
        await mock.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exact", type=int, default=3000)
    parser.add_argument("--semantic", type=int, default=300)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(parser.parse_args()))
