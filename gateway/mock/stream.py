"""Writing answers to the wire: SSE streaming with pacing and in-stream faults.

Endpoint handlers build the complete list of events up front; this module owns
*when* and *whether* each byte goes out.  Every event is written and drained as
soon as its delay elapses so a client really observes token-by-token arrival,
and mid-stream faults (resets, stalls, garbage lines) are applied in one place
for every streaming endpoint.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from .context import RequestContext
from .errors import error_for_status, json_response

DONE_FRAME = b"data: [DONE]\n\n"
MALFORMED_FRAME = b"this is not an sse line {{{\n\n"
MALFORMED_DATA_FRAME = b'data: {"choices":[{"index":0,"delta":{"content":"trunc\n\n'  # JSON cut short


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One encoded SSE frame; `content` frames are paced by ttft / tokens_per_s."""

    frame: bytes
    content: bool = False


def sse_frame(payload: Any, event: str | None = None) -> bytes:
    data = b"data: " + orjson.dumps(payload) + b"\n\n"
    return b"event: " + event.encode() + b"\n" + data if event else data


async def stream_events(ctx: RequestContext, events: list[SSEEvent]) -> web.StreamResponse:
    """Send `events` as an SSE response, applying pacing and stream faults."""
    resp = await _prepare_sse(ctx)
    fault = ctx.fault
    content_seen = False
    for index, event in enumerate(events):
        if fault.reset_after_chunks is not None and index >= fault.reset_after_chunks:
            await abort_connection(ctx, resp=resp, outcome="fault:reset_after_chunks")
            return resp
        delay = _delay_before(ctx, event, first_event=index == 0, content_seen=content_seen)
        content_seen = content_seen or event.content
        if delay > 0:
            await asyncio.sleep(delay)
        await _write(resp, event.frame)
        sent = index + 1
        ctx.attempt.events_sent = sent
        if await _after_event(ctx, resp, sent):
            return resp
    if fault.reset_after_chunks is not None:
        # Asked to reset after more events than the answer has: cut before the terminal chunk.
        await abort_connection(ctx, resp=resp, outcome="fault:reset_after_chunks")
        return resp
    await resp.write_eof()
    return resp


async def _after_event(ctx: RequestContext, resp: web.StreamResponse, sent: int) -> bool:
    """Faults that strike after the ``sent``-th event; True when the stream ends here."""
    fault = ctx.fault
    if fault.malformed_sse and sent == 1:
        await _write(resp, MALFORMED_FRAME)
        ctx.success_outcome = "fault:malformed_sse"
    if fault.malformed_after_chunks == sent:
        await _write(resp, MALFORMED_DATA_FRAME)
        ctx.success_outcome = "fault:malformed_after_chunks"
    if fault.stall_after_chunks is not None and sent == fault.stall_after_chunks:
        await asyncio.sleep((fault.stall_ms or 0.0) / 1000.0)
    if fault.error_after_chunks == sent:
        await _write(resp, sse_frame(error_for_status(500).body()))
        ctx.success_outcome = "fault:error_after_chunks"
        await resp.write_eof()
        return True
    if fault.end_after_chunks == sent:
        ctx.success_outcome = "fault:end_after_chunks"  # a clean close, without the rest nor [DONE]
        await resp.write_eof()
        return True
    return False


def _delay_before(ctx: RequestContext, event: SSEEvent, *, first_event: bool, content_seen: bool) -> float:
    delay = 0.0
    if event.content:
        delay += ctx.token_interval_s if content_seen else ctx.ttft_s
    if ctx.fault.drip_ms and not first_event:
        delay += ctx.fault.drip_ms / 1000.0
    return delay


async def _prepare_sse(ctx: RequestContext) -> web.StreamResponse:
    resp = web.StreamResponse(
        status=200,
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"},
    )
    await resp.prepare(ctx.request)
    ctx.attempt.status = 200
    return resp


async def _write(resp: web.StreamResponse, frame: bytes) -> None:
    """aiohttp hands each write straight to the transport (and applies backpressure itself)."""
    await resp.write(frame)


async def send_error_event_first(ctx: RequestContext, *, event_name: str | None = None) -> web.StreamResponse:
    """200 + a single `data: {"error": ...}` event and a clean end, no [DONE]."""
    ctx.success_outcome = "fault:error_event_first"
    body = error_for_status(500).body()
    resp = await _prepare_sse(ctx)
    await _write(resp, sse_frame(body, event_name))
    ctx.attempt.events_sent = 1
    await resp.write_eof()
    return resp


async def send_json(ctx: RequestContext, payload: Any, *, n_tokens: int) -> web.StreamResponse:
    """Non-stream answer after the simulated generation time (ttft + inter-token time)."""
    delay = ctx.ttft_s + ctx.token_interval_s * max(0, n_tokens - 1)
    if delay > 0:
        await asyncio.sleep(delay)
    if ctx.fault.error_event_first:
        ctx.success_outcome = "fault:error_event_first"
        return json_response(error_for_status(500).body())
    if ctx.fault.reset_after_chunks is not None:
        return await _send_truncated(ctx, orjson.dumps(payload))
    return json_response(payload)


async def _send_truncated(ctx: RequestContext, body: bytes) -> web.StreamResponse:
    """Non-stream flavour of reset_after_chunks: announce the full length, send half, reset."""
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    resp.content_length = len(body)
    await resp.prepare(ctx.request)
    await _write(resp, body[: len(body) // 2])
    await abort_connection(ctx, resp=resp, outcome="fault:reset_after_chunks")
    return resp


async def abort_connection(
    ctx: RequestContext, *, resp: web.StreamResponse | None = None, outcome: str, rst: bool = False
) -> None:
    """Drop the TCP connection without finishing the HTTP message.

    Bytes already written are handed to the kernel first (so "N events then
    reset" really delivers N events); `rst=True` additionally sets SO_LINGER=0
    so the peer sees ECONNRESET instead of a FIN.
    """
    ctx.recorder.finish(ctx.attempt, outcome)
    transport = ctx.request.transport
    if transport is None or transport.is_closing():
        return
    if resp is not None:
        await _flush(transport)
    if rst:
        _set_linger_zero(transport)
    transport.abort()


async def _flush(transport: asyncio.Transport, timeout_s: float = 2.0) -> None:
    """Wait (bounded) until the transport has handed everything to the kernel.

    `abort()` discards the transport's user-space buffer, which would silently
    drop events the fault promised to deliver.  On loopback the buffer is almost
    always empty already, so this rarely loops.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    # Polled: a transport signals no "buffer empty" event (drain() only waits for the low-water mark).
    while loop.time() < deadline:
        if transport.get_write_buffer_size() == 0 or transport.is_closing():
            return
        await asyncio.sleep(0.002)


def _set_linger_zero(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (OSError, AttributeError, TypeError):
        pass  # best effort: a plain abort still disconnects the client
