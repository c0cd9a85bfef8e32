"""Relay an upstream answer to the client chunk by chunk, as it arrives (never buffered).

SSE answers are read on the way (``list_changed``, the call's result for the caches), JSON answers
once whole (they were relayed as they came all the same). A call's
stream that stalls past its deadline or breaks (reset) ends with ``fallback.mid_stream``'s event.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from policies.mcp import jsonrpc as rpc
from policies.mcp.call import Call, Tap
from policies.mcp.cancel import cancel_upstream
from policies.mcp.deps import JSON, SSE, Deps
from policies.mcp.fallback import mid_stream
from policies.mcp.notices import saw
from policies.mcp.upstream import FORWARD_RESPONSE, McpServer


class _Cut(Exception):
    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


async def relay(deps: Deps, request: web.Request, server: McpServer, upstream: aiohttp.ClientResponse,
                first: bytes | None = None, call: Call | None = None, tap: Tap | None = None
                ) -> web.StreamResponse:
    resp = web.StreamResponse(status=upstream.status, headers=response_headers(upstream))
    await resp.prepare(request)
    sse = upstream.content_type == SSE
    watch = _Watch(deps, server, call, tap, upstream.content_type)
    chunks = _chunks(upstream, first)
    try:
        while True:
            chunk = await _next(deps, chunks, call)
            if chunk is None:
                break
            watch.feed(chunk)
            await resp.write(chunk)
        watch.end()
        await resp.write_eof()
    except _Cut as cut:
        upstream.close()
        if call is not None and not call.answered:
            await _end_cut(resp, call, cut.cause, sse)
        await _quietly_eof(resp)
    except ConnectionResetError:  # the client left (an SDK may close the stream once it has its answer)
        upstream.close()
        if call is not None and not call.answered:
            call.outcome = "client_disconnected"
    return resp


class _Watch:
    """Reads the relayed answer's JSON-RPC messages: SSE events as they come, a JSON body once whole."""

    def __init__(self, deps: Deps, server: McpServer, call: Call | None, tap: Tap | None, ctype: str) -> None:
        self.deps, self.server, self.call, self.tap = deps, server, call, tap
        self.reader = rpc.SseReader() if ctype == SSE else rpc.JsonReader() if ctype == JSON else None

    def feed(self, chunk: bytes) -> None:
        if self.reader is not None:
            self._read(self.reader.feed(chunk))

    def end(self) -> None:
        if isinstance(self.reader, rpc.JsonReader):
            self._read(self.reader.end())

    def _read(self, messages: list[Any]) -> None:
        for message in messages:
            saw(self.deps, self.server, message)
            if self.call is not None:
                self.call.saw(message)
            if self.tap is not None:
                self.tap(message)


async def _quietly_eof(resp: web.StreamResponse) -> None:
    with contextlib.suppress(ConnectionResetError):
        await resp.write_eof()


async def _next(deps: Deps, chunks: AsyncIterator[bytes], call: Call | None) -> bytes | None:
    """The next chunk; None at the end; ``_Cut`` when the stream breaks or a call's stalls past its
    deadline."""
    left = None if call is None else max(call.deadline - deps.now(), 0.001)
    try:
        return await asyncio.wait_for(chunks.__anext__(), left)
    except StopAsyncIteration:
        return None
    except TimeoutError as exc:
        raise _Cut("timeout") from exc
    except (aiohttp.ClientError, OSError) as exc:  # a plain stream (GET) just ends; a call gets its event
        raise _Cut("reset") from exc


async def _end_cut(resp: web.StreamResponse, call: Call, cause: str, sse: bool) -> None:
    if cause == "timeout":
        cancel_upstream(call)
    event = mid_stream(call, cause)
    if sse:
        with contextlib.suppress(ConnectionResetError):
            await resp.write(event)


async def _chunks(upstream: aiohttp.ClientResponse, first: bytes | None) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in upstream.content.iter_any():
        yield chunk


def response_headers(upstream: aiohttp.ClientResponse) -> dict[str, str]:
    return {k: upstream.headers[k] for k in FORWARD_RESPONSE if k in upstream.headers}
