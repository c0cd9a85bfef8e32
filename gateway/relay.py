"""Relaying an upstream answer to the client, chunk by chunk, and what the relay saw.

The response is relayed as the upstream produces it; a slow client slows the upstream read through
the awaited ``write``. A failure after the response has started ends an SSE stream with an error
event and no ``[DONE]``; a non-stream body is cut (the connection aborted), so the client can see
that it is truncated. A client that leaves cancels the relay, which closes the upstream body; during
a drain that ran out of time the stream is ended with a ``gateway_shutdown`` error event instead.
"""
from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from gateway.appstate import AppState
from gateway.body import Body, close_quietly
from gateway.errors import UpstreamFailure, sse_error_event
from gateway.exchange import Exchange, Record, UpstreamResponse
from gateway.produced import CAPTURE_KEY
from gateway.sse import StreamInspector
from gateway.usage import usage_from_json_bytes


class _HeadersWithBody(web.StreamResponse):
    """A relayed answer whose headers leave with its first body bytes, in one write.

    A JSON answer is useless to a client before its body, and providers send both together, so this
    saves a syscall and a client wake-up per request. A stream's first chunk is usually in hand when
    the relay starts (the commit point read it before the answer came out of the chain): it leaves
    with the headers too, off the time to first token. When it is not, ``_headers_soon`` sends the
    headers on the loop's next turn, so an SSE client still sees the status before the first token.
    """

    _send_headers_immediately = False  # aiohttp >= 3.10; older versions ignore it (headers at once)


async def relay(request: web.Request, st: AppState, ex: Exchange, up: UpstreamResponse) -> web.StreamResponse:
    rec = ex.record
    rec.status, rec.source, ex.target.upstream = up.status, up.source, up.upstream or ex.target.upstream
    sse = up.is_sse
    resp = _HeadersWithBody(status=up.status, headers=_response_headers(ex, up))
    view = ex.view if sse else None
    collected: list[bytes] = []
    try:
        writer = await resp.prepare(request)
        resp.headers.clear()  # serialised into the writer: a long stream need not keep them (issue 21)
        if sse and writer is not None:
            asyncio.get_running_loop().call_soon(_headers_soon, writer)
        if not sse:
            await _relay_whole(st, rec, resp, up.body, collected)
            return resp
        async for chunk in up.body:  # in this frame: an open stream waits in no helper's frame (issue 21)
            try:
                await resp.write(chunk)
            finally:  # looked at once it left (off the time to first token), even when the write failed
                if view is not None:
                    view.feed(chunk)
            del chunk  # written: an idle stream does not hold the last chunk while it waits for the next
        await resp.write_eof()
    except UpstreamFailure as failure:
        rec.error_kind = failure.kind
        await _end_broken(request, resp, ex, sse, failure.message, failure.kind)
    except asyncio.CancelledError:
        if not st.lifecycle.drain_expired:
            rec.stream_outcome = "client_gone"
            raise
        _uncancel()
        rec.error_kind = "shutdown"
        await _end_broken(request, resp, ex, sse, "The gateway is shutting down; the stream was cut.",
                          "gateway_shutdown")
    except (ConnectionResetError, ConnectionError):
        rec.stream_outcome = "client_gone"
    finally:
        await close_quietly(up.body)
        _record_outcome(ex, view, collected, up)
    return resp


async def _relay_whole(st: AppState, rec: Record, resp: web.StreamResponse, body: Body,
                       collected: list[bytes]) -> None:
    """A non-stream answer, each chunk written once the next one has come: the last goes with ``write_eof``,
    which sends it with the headers and, for a chunked answer, the end marker in one write (a body read in
    one piece: a cache hit, an upstream that chunks its JSON) where it took two (issue 21). A JSON answer is
    of no use to its client before its end; a stream is never held."""
    held = b""
    async for chunk in body:
        if not collected:
            rec.first_token_at = st.clock()
        collected.append(chunk)
        if held:
            await resp.write(held)
        held = chunk
    await resp.write_eof(held)


def _headers_soon(writer: AbstractStreamWriter) -> None:
    """A stream's headers, if its first chunk has not taken them yet (a no-op once it has)."""
    send = getattr(writer, "send_headers", None)  # aiohttp < 3.12 has none: its headers left at once
    try:
        if send is not None:
            send()
    except ConnectionError:  # the client left first: the relay sees it on its next write
        pass


def _response_headers(ex: Exchange, up: UpstreamResponse) -> dict[str, str]:
    """The client's response headers; built outside ``relay`` so this dict is not kept for a stream's life
    (the response holds its own copy)."""
    headers = {**up.headers, **ex.response_headers, "x-request-id": ex.request.request_id}
    if up.upstream:
        headers["x-gateway-upstream"] = up.upstream
    return headers


async def _end_broken(request: web.Request, resp: web.StreamResponse, ex: Exchange, sse: bool, message: str,
                      code: str) -> None:
    if not sse or not resp.prepared:
        ex.record.stream_outcome = "cut"
        if request.transport is not None:
            request.transport.abort()  # a truncated body must look truncated, never complete
        return
    ex.record.stream_outcome = "error_event"
    try:
        await resp.write(
            sse_error_event(message, "upstream_error" if code != "gateway_shutdown" else "server_error", code)
        )
        await resp.write_eof()
    except (ConnectionError, RuntimeError):
        ex.record.stream_outcome = "client_gone"


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _record_outcome(ex: Exchange, view: StreamInspector | None, collected: list[bytes],
                    up: UpstreamResponse) -> None:
    """What the relay itself saw: timings, finish reasons and the provider's usage (stream or JSON tail)."""
    rec = ex.record
    if view is not None:
        rec.first_token_at = rec.first_token_at or view.first_token_at
        rec.last_token_at = view.last_token_at
        if view.usage is not None and rec.reported_usage is None:
            rec.reported_usage = view.usage
        rec.finish_reasons = view.finish_reasons
        rec.response_model = view.model
        if not rec.stream_outcome:
            rec.stream_outcome = "done" if view.clean_end else ("error_event" if view.error_event else "")
    else:
        capture = ex.state.get(CAPTURE_KEY)  # the usage layer's, for a JSON answer: fed here, not per chunk
        if capture is not None:
            for chunk in collected:
                capture.add(chunk)
        if collected and rec.reported_usage is None and up.status < 300:
            rec.reported_usage = usage_from_json_bytes(
                collected[-1] if len(collected) == 1 else b"".join(collected)
            )
