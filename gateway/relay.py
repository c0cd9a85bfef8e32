"""Relaying an upstream answer to the client, chunk by chunk, and what the relay saw.

The response is relayed as the upstream produces it (``gateway/response_writer.py`` writes it to the
client's transport); a slow client slows the upstream read through the awaited ``drain``. A failure
after the response has started ends an SSE stream with an error event and no ``[DONE]``; a non-stream
body is cut (the connection aborted), so the client can see that it is truncated. A client that leaves
cancels the relay, which closes the upstream body; during a drain that ran out of time the stream is
ended with a ``gateway_shutdown`` error event instead.
"""
from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.appstate import AppState
from gateway.body import Body, close_quietly
from gateway.errors import UpstreamFailure, sse_error_event
from gateway.exchange import Exchange, Record, UpstreamResponse
from gateway.produced import CAPTURE_KEY
from gateway.response_writer import LeanResponse
from gateway.sse import StreamInspector
from gateway.usage import usage_from_json_bytes


async def relay(request: web.Request, st: AppState, ex: Exchange, up: UpstreamResponse) -> web.StreamResponse:
    rec = ex.record
    rec.status, rec.source, ex.target.upstream = up.status, up.source, up.upstream or ex.target.upstream
    sse = up.is_sse
    resp = LeanResponse(up.status, _response_headers(ex, up), request=request)
    view = ex.view if sse else None
    collected: list[bytes] = []
    try:
        if not sse:
            await _relay_whole(st, rec, resp, up.body, collected)
            return resp
        # The head leaves with the first chunk, usually in hand (the commit point read it before the answer
        # came out of the chain): off the time to first token. When it is not, on the loop's next turn, so
        # an SSE client still sees the status before the first token.
        asyncio.get_running_loop().call_soon(resp.send_head_soon)
        async for chunk in up.body:  # in this frame: an open stream waits in no helper's frame (issue 21)
            try:
                if resp.put(chunk):  # over the transport's high-water mark
                    await resp.drain()
            finally:  # looked at once it left (off the time to first token), even when the write failed
                if view is not None:
                    view.feed(chunk)
            del chunk  # written: an idle stream does not hold the last chunk while it waits for the next
        if resp.end():
            await resp.drain()
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


async def _relay_whole(st: AppState, rec: Record, resp: LeanResponse, body: Body,
                       collected: list[bytes]) -> None:
    """A non-stream answer, sent whole once it has all come: head and body in one write with its
    Content-Length (a JSON answer is of no use to its client before its end; it was kept whole for the
    usage reader anyway). ``collected`` is left holding the body in one piece, read once more by
    ``_record_outcome``, not joined again."""
    async for chunk in body:
        if not collected:
            rec.first_token_at = st.clock()
        collected.append(chunk)
    whole = collected[0] if len(collected) == 1 else b"".join(collected)
    if len(collected) > 1:
        collected[:] = [whole]
    if resp.send(whole):
        await resp.drain()


def _response_headers(ex: Exchange, up: UpstreamResponse) -> dict[str, str]:
    """The client's response headers; the response lets them go once its head is written. The upstream's
    Content-Length is not the client's: the writer frames the body it sends (a layer may have changed it)."""
    headers = {**up.headers, **ex.response_headers, "x-request-id": ex.request.request_id}
    headers.pop("content-length", None)
    if up.upstream:
        headers["x-gateway-upstream"] = up.upstream
    return headers


async def _end_broken(request: web.Request, resp: LeanResponse, ex: Exchange, sse: bool, message: str,
                      code: str) -> None:
    if not sse or not resp.prepared:
        ex.record.stream_outcome = "cut"
        resp.cut()
        if request.transport is not None:
            request.transport.abort()  # a truncated body must look truncated, never complete
        return
    ex.record.stream_outcome = "error_event"
    try:
        kind = "upstream_error" if code != "gateway_shutdown" else "server_error"
        resp.put(sse_error_event(message, kind, code))
        if resp.end():
            await resp.drain()
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
