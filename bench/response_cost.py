"""The response half alone: aiohttp's ``StreamResponse`` path (as the relay and the handler's builders used
it before issue 21's response writer) against ``gateway.response_writer.LeanResponse``, on a transport that
drops the bytes, with the request side held fixed (one parsed request; a fresh ``StreamWriter`` per answer,
as aiohttp's server makes one per request either way).

    python -m bench.response_cost                       # time per answer, both paths interleaved
    python -m bench.response_cost --instructions        # instructions per answer (valgrind, callgrind)

Kinds: ``json`` (a local JSON answer: an error, a cache hit's handler answer; built, then ``prepare`` and
``write_eof`` as aiohttp's ``finish_response`` calls them), ``relay-json`` (the relay's non-stream answer in
one piece), ``stream`` (the relay's SSE answer: head with the first chunk, 19 more chunks, the end).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_writer import StreamWriter
from aiohttp.test_utils import make_mocked_request

from gateway.response_writer import LeanResponse

CHUNK = (b'data: {"id":"c","object":"chat.completion.chunk",'
         b'"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n')
JSON = b'{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"content":"hello"}}]}' * 3
FIELDS = {"content-type": "application/json", "openai-processing-ms": "12",
          "x-ratelimit-limit-requests": "500", "x-gateway-cache": "miss",
          "x-request-id": "0123456789abcdef01234567", "x-gateway-upstream": "openai"}
SSE_FIELDS = {**FIELDS, "content-type": "text/event-stream"}


class _Sink(asyncio.Transport):
    def write(self, data: Any) -> None:
        pass

    def writelines(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return False


class _Protocol(BaseProtocol):
    """aiohttp's base protocol with a ``__dict__`` (``make_mocked_request`` sets attributes on it)."""

    ssl_context = None
    peername = None
    sockname = None


class _OldRelayResponse(web.StreamResponse):
    _send_headers_immediately = False  # the relay's _HeadersWithBody before the writer


def _request() -> tuple[web.Request, BaseProtocol]:
    loop = asyncio.get_running_loop()
    protocol = _Protocol(loop)
    protocol.transport = _Sink()
    request = make_mocked_request("POST", "/v1/chat/completions", transport=protocol.transport,
                                  protocol=protocol, writer=StreamWriter(protocol, loop))
    assert request.keep_alive
    return request, protocol


async def old_json(request: web.Request, protocol: BaseProtocol) -> None:
    resp = web.Response(status=400, body=JSON, headers={"x-request-id": "r"}, content_type="application/json")
    await resp.prepare(request)
    await resp.write_eof()


async def new_json(request: web.Request, protocol: BaseProtocol) -> None:
    resp = LeanResponse(400, {"x-request-id": "r", "content-type": "application/json"}, body=JSON)
    await resp.prepare(request)
    await resp.write_eof()


async def old_relay_json(request: web.Request, protocol: BaseProtocol) -> None:
    resp = _OldRelayResponse(status=200, headers=FIELDS)
    await resp.prepare(request)
    resp.headers.clear()
    await resp.write_eof(JSON)
    await resp.prepare(request)  # finish_response
    await resp.write_eof()


async def new_relay_json(request: web.Request, protocol: BaseProtocol) -> None:
    resp = LeanResponse(200, dict(FIELDS), request=request)
    if resp.send(JSON):
        await resp.drain()
    await resp.prepare(request)  # finish_response
    await resp.write_eof()


async def old_stream(request: web.Request, protocol: BaseProtocol) -> None:
    resp = _OldRelayResponse(status=200, headers=SSE_FIELDS)
    await resp.prepare(request)
    resp.headers.clear()
    for _ in range(20):
        await resp.write(CHUNK)
    await resp.write_eof()
    await resp.prepare(request)
    await resp.write_eof()


async def new_stream(request: web.Request, protocol: BaseProtocol) -> None:
    resp = LeanResponse(200, dict(SSE_FIELDS), request=request)
    for _ in range(20):
        if resp.put(CHUNK):
            await resp.drain()
    if resp.end():
        await resp.drain()
    await resp.prepare(request)
    await resp.write_eof()


Path = Callable[[web.Request, BaseProtocol], Awaitable[None]]
KINDS: dict[str, tuple[Path, Path]] = {"json": (old_json, new_json),
                                       "relay-json": (old_relay_json, new_relay_json),
                                       "stream": (old_stream, new_stream)}


async def run(path: Path, n: int) -> float:
    """Seconds per answer over ``n`` answers."""
    request, protocol = _request()
    loop = asyncio.get_running_loop()
    writers = [StreamWriter(protocol, loop) for _ in range(n)]
    start = time.perf_counter()
    for writer in writers:
        request._payload_writer = writer
        await path(request, protocol)
    return (time.perf_counter() - start) / n


async def timed(n: int, rounds: int) -> None:
    for kind, (old, new) in KINDS.items():
        olds, news = [], []
        for _ in range(rounds):
            olds.append(await run(old, n))
            news.append(await run(new, n))
        o, w = statistics.median(olds) * 1e6, statistics.median(news) * 1e6
        print(f"{kind:10s} aiohttp {o:6.2f} us  lean {w:6.2f} us  per answer ({w / o - 1:+.0%})", flush=True)


async def counted(kind: str, which: str, n: int) -> None:
    path = KINDS[kind][0 if which == "old" else 1]
    await run(path, 200)  # warm
    _toggle(True)
    await run(path, n)
    _toggle(False)


def _toggle(on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
                   capture_output=True, check=False)


def instructions(n: int) -> None:
    import re
    for kind in KINDS:
        counts = {}
        for which in ("old", "new"):
            argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=/dev/null",
                    sys.executable, "-m", "bench.response_cost", "--count", f"{kind}:{which}", "-n", str(n)]
            out = subprocess.run(argv, capture_output=True, text=True, check=False,
                                 env={**os.environ, "PYTHONHASHSEED": "0"})
            found = re.search(r"Collected : (\d+)", out.stderr)
            if found is None:
                raise SystemExit(out.stderr[-2000:])
            counts[which] = int(found.group(1)) / n
        old, new = counts["old"], counts["new"]
        print(f"{kind:10s} aiohttp {old / 1000:6.1f}k  lean {new / 1000:6.1f}k instructions per answer "
              f"({new / old - 1:+.0%})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5000, help="answers per measurement")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--instructions", action="store_true", help="count instructions under valgrind")
    parser.add_argument("--count", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count:
        kind, which = args.count.split(":")
        asyncio.run(counted(kind, which, args.n))
    elif args.instructions:
        instructions(min(args.n, 2000))
    else:
        asyncio.run(timed(args.n, args.rounds))


if __name__ == "__main__":
    main()
