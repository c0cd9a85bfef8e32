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

import contextlib
import types
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Protocol, TypeVar, runtime_checkable

ChunkFilter = Callable[[bytes], bytes]
_T = TypeVar("_T")


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


class _Stage:
    """One layer's part of an ``Observed`` body: its filter, its flush and its end callback."""

    __slots__ = ("ended", "flush", "on_chunk", "on_end")

    def __init__(self, on_chunk: ChunkFilter | None, on_end: EndCallback | None,
                 flush: Callable[[], bytes] | None) -> None:
        self.on_chunk, self.on_end, self.flush = on_chunk, on_end, flush
        self.ended = False

    def end(self, error: BaseException | None) -> None:
        if not self.ended:
            self.ended = True
            if self.on_end is not None:
                self.on_end(error)


class Observed:
    """``inner`` as it flows, seen by ``on_chunk`` (a filter) and ended once with ``on_end``.

    An ``Observed`` around an ``Observed`` not yet read takes its stages over instead of nesting: one
    frame per chunk however many layers observe the body (issue 21: the default config's usage and cache
    layers; rate-limit settlement too with all policies on), with the chunks and the ends of nested
    wrappers, in their order: stages innermost first, a filter's output is the next one's input, bytes
    held back wait for the next chunk, flushes cascade outwards at a clean end, and a failure (of the body,
    or of a filter, flush or end callback) ends the stages after the one it came from. The wrapper taken
    over forwards to the one that took it (its layer returned it: nobody reads it any more).
    """

    __slots__ = ("_filters", "_fresh", "_inner", "_stages")
    _fresh: bool
    _filters: tuple[tuple[int, ChunkFilter], ...]

    def __init__(self, inner: Body, on_chunk: ChunkFilter | None = None, on_end: EndCallback | None = None,
                 flush: Callable[[], bytes] | None = None) -> None:
        stage = _Stage(on_chunk, on_end, flush)
        if type(inner) is Observed and inner._fresh:
            self._inner: Body = inner._inner
            self._stages: tuple[_Stage, ...] = (*inner._stages, stage)
            filters = inner._filters
            inner._inner, inner._stages, inner._filters = self, (), ()
        else:
            self._inner, self._stages, filters = inner, (stage,), ()
        self._filters = filters if on_chunk is None else (*filters, (len(self._stages) - 1, on_chunk))
        self._fresh = True

    def __aiter__(self) -> Observed:
        return self

    async def __anext__(self) -> bytes:
        self._fresh = False
        while True:
            try:
                chunk = await self._inner.__anext__()
            except StopAsyncIteration:
                rest = self._stopped()
                if rest:
                    return rest
                raise
            except BaseException as exc:
                failure = self._failed(0, exc)
                if failure is exc:
                    raise
                raise failure from exc
            stage = -1
            try:
                for stage, on_chunk in self._filters:  # noqa: B007 (read by the handler below)
                    chunk = on_chunk(chunk)
                    if not chunk:
                        break
                else:
                    return chunk
            except BaseException as exc:
                failure = self._failed(stage + 1, exc)
                if failure is exc:
                    raise
                raise failure from exc

    def _passed(self, chunk: bytes, first: int) -> bytes:
        """``chunk`` through the filters of the stages from ``first`` on (b"": held back)."""
        stage = first - 1
        try:
            for stage, on_chunk in self._filters:
                if stage >= first:
                    chunk = on_chunk(chunk)
                    if not chunk:
                        return b""
        except BaseException as exc:
            failure = self._failed(stage + 1, exc)
            if failure is exc:
                raise
            raise failure from exc
        return chunk

    def _stopped(self) -> bytes:
        """The body ended cleanly: each stage in turn flushes (its bytes go through the stages after it; the
        first bytes out are returned, the rest on the next call) and ends. b"" once every stage ended."""
        for i, stage in enumerate(self._stages):
            if stage.ended:
                continue
            flush, stage.flush = stage.flush, None
            if flush is not None:
                rest = self._guarded(i, flush)
                if rest and (rest := self._passed(rest, i + 1)):
                    return rest
            self._guarded(i, partial(stage.end, None))
        return b""

    def _guarded(self, i: int, call: Callable[[], _T]) -> _T:
        """``call()`` of stage ``i``; its failure ends the stages after ``i`` and propagates."""
        try:
            return call()
        except BaseException as exc:
            failure = self._failed(i + 1, exc)
            if failure is exc:
                raise
            raise failure from exc

    def _failed(self, first: int, exc: BaseException) -> BaseException:
        """End the stages from ``first`` on with ``exc`` (an end callback's own failure replaces it for the
        stages after it); the exception to raise."""
        for stage in self._stages[first:]:
            try:
                stage.end(exc)
            except BaseException as failure:
                exc = failure
        return exc

    async def aclose(self) -> None:
        self._fresh = False
        try:
            await self._inner.aclose()
        finally:
            failure: BaseException | None = None
            for stage in self._stages:
                try:
                    stage.end(BodyClosed())
                except BaseException as exc:
                    failure = exc
            if failure is not None:
                raise failure


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
