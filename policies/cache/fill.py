"""Collect an answer while it streams to the client, and store it only after a clean end.

The body is wrapped by one async generator that yields every chunk unchanged
and keeps a reference to it (no copy, no parsing). Only when the upstream body
ended normally is the answer assembled (``policies.cache.canonical``) and handed
to the registered callbacks (exact cache, semantic cache). An error raised by
the body, a client disconnect (``aclose``/cancel) or an oversized answer stores
nothing. One collector per exchange: a second cache layer adds its callback to
the first one's collector instead of wrapping the body again.
"""
from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

from gateway.exchange import Exchange, UpstreamResponse
from policies.cache.canonical import answer_from_json, answer_from_sse, finish_reasons
from policies.cache.entry import CachedAnswer

log = logging.getLogger("gateway.cache")
FILL_KEY = "cache_fill"
CLAIM_KEY = "cache_fill_claim"  # set by single flight: only one subscriber stores the shared answer
Callback = Callable[[CachedAnswer, list[str]], None]


@dataclass(slots=True)
class Fill:
    operation: str
    sse: bool
    limit: int
    callbacks: list[Callback] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    overflow: bool = False

    def add(self, chunk: bytes) -> None:
        if self.overflow:
            return
        self.size += len(chunk)
        if self.size > self.limit:
            self.overflow = True
            self.chunks.clear()
        else:
            self.chunks.append(chunk)

    def complete(self, ex: Exchange) -> None:
        if self.overflow or not self.callbacks:
            return
        claim = ex.attrs.get(CLAIM_KEY)
        if claim is not None and not claim():
            return
        data = b"".join(self.chunks)
        self.chunks = []
        obj = answer_from_sse(self.operation, data) if self.sse else answer_from_json(self.operation, data)
        if obj is None:
            return
        answer = CachedAnswer.from_obj(self.operation, obj, time.time())
        reasons = finish_reasons(self.operation, obj)
        for callback in self.callbacks:
            try:
                callback(answer, reasons)
            except Exception:
                log.exception("cache fill callback failed")


def attach_fill(ex: Exchange, resp: UpstreamResponse, callback: Callback, limit: int) -> UpstreamResponse:
    """Arrange for ``callback`` to get the canonical answer if ``resp`` ends cleanly with a 200."""
    if resp.status != 200:
        return resp
    fill = ex.attrs.get(FILL_KEY)
    if isinstance(fill, Fill):
        fill.callbacks.append(callback)
        return resp
    fill = Fill(operation=ex.operation, sse=resp.is_sse, limit=limit, callbacks=[callback])
    ex.attrs[FILL_KEY] = fill
    return replace(resp, body=_collect(fill, ex, resp.body))


async def _collect(fill: Fill, ex: Exchange, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for chunk in body:
            fill.add(chunk)
            yield chunk
    finally:
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()
    fill.complete(ex)  # reached only after a normal end of the upstream body
