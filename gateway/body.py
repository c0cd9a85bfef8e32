"""The response body type and the one way every layer observes or filters it.

A ``Body`` is an async iterator of byte chunks with ``aclose``: closing it
releases (or closes) the upstream connection, and must reach the upstream body
even when iteration never started (a generator's own ``aclose`` would skip its
``finally`` then, leaving the connection open until garbage collection).

``Observed`` is the only wrapper layers put around a body: an optional chunk
filter (returns the bytes to pass on: the chunk itself to observe only, ``b""``
to hold it back), an optional ``flush`` for held-back bytes at a clean end, and
an ``on_end`` callback called exactly once however the body ends (clean end,
upstream failure, client gone, or closed unread), with None only for a clean end
(closed before its end: a ``BodyClosed``).
"""
from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Protocol, runtime_checkable

ChunkFilter = Callable[[bytes], bytes]
_NO_PIECES = 1 << 62  # ``piece_bytes`` unset: every chunk is handed on whole


class BodyClosed(Exception):
    """What ``on_end`` gets when a body was closed before its end (client gone, answer discarded)."""

EndCallback = Callable[[BaseException | None], None]


@runtime_checkable
class Body(Protocol):
    def __aiter__(self) -> AsyncIterator[bytes]: ...

    def __anext__(self) -> Awaitable[bytes]: ...

    async def aclose(self) -> None: ...


class OneChunk:
    """A body made of one buffer (cache hits, local answers)."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> OneChunk:
        return self

    async def __anext__(self) -> bytes:
        data, self._data = self._data, None
        if data is None:
            raise StopAsyncIteration
        return data

    async def aclose(self) -> None:
        self._data = None


class Chunks:
    """A body made of buffers already in memory, yielded one by one (replays, peeked heads)."""

    __slots__ = ("_chunks",)

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks[::-1]

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> bytes:
        if not self._chunks:
            raise StopAsyncIteration
        return self._chunks.pop()

    async def aclose(self) -> None:
        self._chunks.clear()


class Observed:
    """``inner`` as it flows, seen by ``on_chunk`` (a filter) and ended once with ``on_end``.

    ``piece_bytes`` (an SSE body only): a chunk longer than that is handed on in pieces of whole events
    (at most ``piece_bytes`` each where an event boundary allows), with one loop turn between two pieces.
    A fast upstream read by a slow client gives 64 KiB reads of ~200 events; the filters and the relay's
    inspector and write for one took ~0.5 ms in one go, so 30 such streams made every loop turn ~15 ms
    long, which each other request's steps waited for (issue 15, the unread streams). Nothing is held
    that was not read already: the read's own bytes, handed on within the next turns.
    """

    __slots__ = ("_at", "_ended", "_flush", "_held", "_inner", "_on_chunk", "_on_end", "_piece_bytes")

    def __init__(self, inner: Body, on_chunk: ChunkFilter | None = None, on_end: EndCallback | None = None,
                 flush: Callable[[], bytes] | None = None, piece_bytes: int = 0) -> None:
        self._inner = inner
        self._on_chunk = on_chunk
        self._on_end = on_end
        self._flush = flush
        self._ended = False
        self._piece_bytes = piece_bytes or _NO_PIECES
        self._held = b""  # a long chunk whose pieces from ``_at`` on are still to be handed on
        self._at = 0

    def __aiter__(self) -> Observed:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._held:
                try:
                    await asyncio.sleep(0)  # a loop turn for everybody else between two pieces of one read
                except BaseException as exc:  # cancelled there: ended as if while waiting for the inner body
                    self._end(exc)
                    raise
                chunk = self._piece()
            else:
                try:
                    chunk = await self._inner.__anext__()
                except StopAsyncIteration:
                    rest = self._flush() if self._flush is not None and not self._ended else b""
                    self._flush = None
                    if rest:
                        return rest
                    self._end(None)
                    raise
                except BaseException as exc:
                    self._end(exc)
                    raise
                if len(chunk) > self._piece_bytes:
                    self._held, self._at = chunk, 0
                    chunk = self._piece()
            if self._on_chunk is None:
                return chunk
            out = self._on_chunk(chunk)
            if out:
                return out

    def _piece(self) -> bytes:
        """The next piece of the held chunk: up to its last event end within ``piece_bytes`` (an event
        longer than that: up to its end; no event end at all: the rest)."""
        held, at = self._held, self._at
        end = at + self._piece_bytes
        if end >= len(held):
            cut = len(held)
        else:
            cut = held.rfind(b"\n\n", at, end) + 2
            if cut < 2:
                found = held.find(b"\n\n", end)
                cut = found + 2 if found >= 0 else len(held)
        if cut >= len(held):
            self._held, self._at = b"", 0
            return held[at:] if at else held
        self._at = cut
        return held[at:cut]

    async def aclose(self) -> None:
        self._held = b""
        try:
            await self._inner.aclose()
        finally:
            self._end(BodyClosed())

    def _end(self, error: BaseException | None) -> None:
        if not self._ended:
            self._ended = True
            if self._on_end is not None:
                self._on_end(error)


async def close_quietly(body: Body) -> None:
    """Close a body we will not read further; its own failure was already handled where it happened."""
    with contextlib.suppress(Exception):
        await body.aclose()


def as_body(chunks: AsyncIterator[bytes]) -> Body:
    """An async iterator (an async generator, or one without ``aclose``) as a ``Body``.

    The common shapes are recognised by their type first: a runtime ``Protocol`` check costs
    microseconds per call (it looks every member up), too much for the per-request path.
    """
    if type(chunks) in _BODY_TYPES or isinstance(chunks, Body):
        return chunks  # type: ignore[return-value]
    return _Adapted(chunks)


class _Adapted:
    __slots__ = ("_it",)

    def __init__(self, it: AsyncIterator[bytes]) -> None:
        self._it = it

    def __aiter__(self) -> _Adapted:
        return self

    def __anext__(self) -> Awaitable[bytes]:
        return self._it.__anext__()

    async def aclose(self) -> None:
        if isinstance(self._it, AsyncGenerator):
            await self._it.aclose()


_BODY_TYPES: frozenset[type] = frozenset({Observed, OneChunk, Chunks, types.AsyncGeneratorType})
