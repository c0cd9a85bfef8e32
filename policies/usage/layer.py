"""Usage policy (outermost): make every answer accountable, invisibly to the client.

Streams carry usage only when asked (``stream_options.include_usage``), so for
chat and completions streams whose client did not ask, this layer asks on its
behalf and then takes the answer back out of the stream: the final usage event
(``"choices":[]``) is dropped and the ``"usage":null`` field the provider adds
to every other chunk is removed, so the client receives exactly what it asked
for. The usage read here is stored on ``ex.usage``.

The injection splices bytes into the client's raw body when nothing else has
changed it, so an agent's 200 KB prompt is not re-serialised for one flag.

It also keeps references to the relayed chunks (``Capture``) so that a request
without usage can still be charged for what it produced (see
``policies.usage.accounting``), and counts the request in
``gateway_inflight_requests`` (the metrics sink counts it out).

Config: ``metrics.inject_stream_usage`` (default true); set it false for a
provider that rejects ``stream_options``. No decision is taken here (nothing is
refused), so there is nothing to shadow.
"""
from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import replace
from typing import Any

import orjson

from gateway.appstate import AppState
from gateway.chain import Next
from gateway.config_model import Config
from gateway.exchange import Exchange, UpstreamResponse
from gateway.telemetry.metrics import Children
from gateway.telemetry.metrics_sink import INFLIGHT_KEY
from gateway.usage import usage_from_response_obj
from policies.usage.accounting import CAPTURE_KEY, Capture

INJECT_OPERATIONS = frozenset({"chat", "completions"})
CAPTURE_OPERATIONS = frozenset({"chat", "completions", "responses"})
_SPLICE = b'"stream_options":{"include_usage":true},'
_NULL_USAGE = (b',"usage":null', b', "usage": null', b',"usage": null')
_MAX_TAIL = 64 * 1024  # an SSE event longer than this (none in practice) disables stripping: never buffer


class UsagePolicy:
    name = "usage"

    def __init__(self, inject: bool, inflight: Children | None) -> None:
        self.inject = inject
        self.inflight = inflight

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        if self.inflight is not None:
            child = self.inflight(ex.upstream)
            child.inc()
            ex.attrs[INFLIGHT_KEY] = child  # the metrics sink decrements it, whatever happens
        hidden = self.inject and ex.stream and ex.operation in INJECT_OPERATIONS and ask_for_usage(ex)
        resp = await next(ex)
        if resp.status >= 300 or ex.operation not in CAPTURE_OPERATIONS:
            return resp  # an error answer is not charged; embeddings produce no text
        capture = Capture(sse=resp.is_sse)
        ex.attrs[CAPTURE_KEY] = capture
        return replace(resp, body=Relay(resp.body, ex, capture, hidden and resp.is_sse))


def ask_for_usage(ex: Exchange) -> bool:
    """Add ``include_usage`` to a stream request that lacks it; True when the client did not ask."""
    body = ex.body
    if body is None:
        return False
    opts = body.get("stream_options")
    if isinstance(opts, dict) and opts.get("include_usage") is True:
        return False
    if opts is None and not ex.modified:
        raw = ex.raw_body
        at = raw.find(b"{")
        if at >= 0 and not raw[:at].strip():
            ex.body = {**body, "stream_options": {"include_usage": True}}
            ex.raw_body = raw[: at + 1] + _SPLICE + raw[at + 1 :]  # duplicate keys impossible: none existed
            return True
    merged = {**opts, "include_usage": True} if isinstance(opts, dict) else {"include_usage": True}
    ex.set_body({**body, "stream_options": merged})
    return True


class Relay:
    """The wrapped body. ``aclose`` always closes the upstream body too: a generator's own ``aclose``
    skips its ``finally`` when it never started (client gone before the first chunk), which would
    leave the upstream connection open until garbage collection."""

    __slots__ = ("_gen", "_inner")

    def __init__(self, inner: AsyncIterator[bytes], ex: Exchange, capture: Capture, strip: bool) -> None:
        self._inner = inner
        self._gen = _relay(inner, ex, capture, strip)

    def __aiter__(self) -> Relay:
        return self

    def __anext__(self) -> Awaitable[bytes]:
        return self._gen.__anext__()

    async def aclose(self) -> None:
        try:
            await self._gen.aclose()
        finally:
            aclose = getattr(self._inner, "aclose", None)
            if aclose is not None:
                await aclose()  # releases (or closes) the upstream connection; idempotent


async def _relay(body: AsyncIterator[bytes], ex: Exchange, capture: Capture,
                 strip: bool) -> AsyncGenerator[bytes, None]:
    """Yield the body, keeping chunk references; with ``strip``, by whole SSE events without usage."""
    tail = b""
    try:
        async for chunk in body:
            capture.add(chunk)
            if strip and not tail and b"\r\n" in chunk:
                strip = False  # CRLF-framed SSE: relay untouched rather than risk holding events back
            if not strip:
                yield chunk
                continue
            data = tail + chunk if tail else chunk
            cut = data.rfind(b"\n\n")
            if cut < 0:
                if len(data) < _MAX_TAIL:
                    tail = data
                    continue
                cut, strip = len(data) - 2, False  # not an SSE stream we understand: pass through
            ready, tail = data[: cut + 2], data[cut + 2 :]
            if b'"usage"' in ready:
                ready = strip_usage(ready, ex)
            if ready:
                yield ready
        if tail:
            yield tail
    finally:
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()  # releases (or closes) the upstream connection


def strip_usage(events: bytes, ex: Exchange) -> bytes:
    """Remove usage from complete SSE events, recording it on ``ex``."""
    for null in _NULL_USAGE:
        if null in events:
            events = events.replace(null, b"")
    if b'"usage"' not in events:
        return events
    kept: list[bytes] = []
    for event in events.split(b"\n\n"):
        out = _keep(event, ex)
        if out is not None:
            kept.append(out)
    return b"\n\n".join(kept)


def _keep(event: bytes, ex: Exchange) -> bytes | None:
    """The event without its usage (None: it carried nothing else)."""
    if b'"usage"' not in event:
        return event
    lines = event.split(b"\n")
    for i, line in enumerate(lines):
        if not line.startswith(b"data:") or b'"usage"' not in line:
            continue
        try:
            obj: Any = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            return event
        if not isinstance(obj, dict) or "usage" not in obj:
            return event
        usage = usage_from_response_obj(obj)
        if usage is not None:
            ex.usage = usage
        if not obj.get("choices"):
            return None
        del obj["usage"]
        lines[i] = b"data: " + orjson.dumps(obj)
    return b"\n".join(lines)


async def usage_factory(state: AppState, config: Config) -> UsagePolicy:
    inflight = state.components.get("request_metrics") if config.metrics.enabled else None
    return UsagePolicy(inject=config.metrics.inject_stream_usage,
                       inflight=inflight.inflight if inflight is not None else None)
