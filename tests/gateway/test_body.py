"""gateway.body: the Body protocol, the in-memory bodies and the one observing wrapper."""
from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway.body import Body, BodyClosed, Chunks, Observed, OneChunk, as_body, close_quietly


class Recorded:
    """A body that records its closes and can fail after ``fail_after`` chunks."""

    def __init__(self, chunks: list[bytes], fail_after: int | None = None) -> None:
        self.chunks = list(chunks)
        self.fail_after = fail_after
        self.sent = 0
        self.closed = 0

    def __aiter__(self) -> Recorded:
        return self

    async def __anext__(self) -> bytes:
        if self.fail_after is not None and self.sent >= self.fail_after:
            raise ConnectionResetError("upstream reset")
        if self.sent >= len(self.chunks):
            raise StopAsyncIteration
        self.sent += 1
        return self.chunks[self.sent - 1]

    async def aclose(self) -> None:
        self.closed += 1


async def read(body: Body) -> list[bytes]:
    return [chunk async for chunk in body]


async def test_one_chunk_and_chunks_are_bodies() -> None:
    assert isinstance(OneChunk(b"x"), Body) and isinstance(Chunks([b"a"]), Body)
    assert await read(OneChunk(b"whole")) == [b"whole"]
    assert await read(Chunks([b"a", b"b", b"c"])) == [b"a", b"b", b"c"]
    closed = Chunks([b"a", b"b"])
    await closed.aclose()
    assert await read(closed) == []


async def test_observed_sees_every_chunk_and_ends_once_cleanly() -> None:
    seen: list[bytes] = []
    ends: list[BaseException | None] = []
    inner = Recorded([b"a", b"b"])
    body = Observed(inner, on_chunk=lambda c: seen.append(c) or c, on_end=ends.append)
    assert await read(body) == [b"a", b"b"] and seen == [b"a", b"b"]
    await body.aclose()  # the relay always closes: the end is not reported twice
    assert ends == [None] and inner.closed == 1


async def test_observed_filter_holds_back_and_flushes() -> None:
    """A filter may hold bytes back (b"") and release them at a clean end through ``flush``."""
    held: list[bytes] = []

    def hold(chunk: bytes) -> bytes:
        held.append(chunk)
        return b""

    body = Observed(Recorded([b"a", b"b"]), on_chunk=hold, flush=lambda: b"".join(held))
    assert await read(body) == [b"ab"]


async def test_observed_reports_the_failure() -> None:
    ends: list[BaseException | None] = []
    body = Observed(Recorded([b"a", b"b"], fail_after=1), on_end=ends.append)
    with pytest.raises(ConnectionResetError):
        await read(body)
    assert len(ends) == 1 and isinstance(ends[0], ConnectionResetError)


async def test_closed_before_its_end_is_not_a_clean_end() -> None:
    """A body closed unread (a client gone, a discarded attempt) ends with BodyClosed, and still
    closes the inner body (a generator's own aclose would skip its finally when never started)."""
    ends: list[BaseException | None] = []
    inner = Recorded([b"a"])
    body = Observed(inner, on_end=ends.append)
    await body.aclose()
    assert inner.closed == 1 and len(ends) == 1 and isinstance(ends[0], BodyClosed)
    clean: list[BaseException | None] = []
    await read(Observed(Recorded([b"a"]), on_end=clean.append))
    assert clean == [None]  # positive control: a read to the end is clean


async def test_as_body_closes_generators_and_close_quietly_swallows() -> None:
    finished: list[bool] = []

    async def gen() -> AsyncIterator[bytes]:
        try:
            yield b"x"
            yield b"y"
        finally:
            finished.append(True)

    body = as_body(gen())
    assert await body.__anext__() == b"x"
    await body.aclose()
    assert finished == [True]

    class Broken(Recorded):
        async def aclose(self) -> None:
            raise RuntimeError("already failed")

    await close_quietly(Broken([]))  # no exception escapes


class Nested:
    """The wrapper as it was before stages were merged (one object, one frame per layer): the reference
    the merged ``Observed`` must match event for event."""

    def __init__(self, inner: Body, on_chunk: Callable[[bytes], bytes] | None = None,
                 on_end: Callable[[BaseException | None], None] | None = None,
                 flush: Callable[[], bytes] | None = None) -> None:
        self._inner, self._on_chunk, self._on_end, self._flush = inner, on_chunk, on_end, flush
        self._ended = False

    def __aiter__(self) -> Nested:
        return self

    async def __anext__(self) -> bytes:
        while True:
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
            if self._on_chunk is None:
                return chunk
            out = self._on_chunk(chunk)
            if out:
                return out

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._end(BodyClosed())

    def _end(self, error: BaseException | None) -> None:
        if not self._ended:
            self._ended = True
            if self._on_end is not None:
                self._on_end(error)


class Boom(Exception):
    pass


def _stage(n: int, kind: str, fail: str, log: list[object]) -> dict[str, Any]:
    """Stage ``n``'s callbacks: ``kind`` of filter (none, tag, hold: every other chunk held and released with
    the next, all: everything held until the flush), ``fail`` (which callback raises, and when)."""
    held: list[bytes] = []
    seen = [0]

    def on_chunk(chunk: bytes) -> bytes:
        seen[0] += 1
        if fail == "filter" and seen[0] == 2:
            raise Boom(f"filter {n}")
        if kind == "all" or (kind == "hold" and seen[0] % 2):
            held.append(chunk)
            return b""
        out = b"".join([*held, chunk]) + str(n).encode()
        held.clear()
        return out

    def flush() -> bytes:
        if fail == "flush":
            raise Boom(f"flush {n}")
        out = b"".join(held)
        held.clear()
        return out

    def on_end(error: BaseException | None) -> None:
        log.append(("end", n, type(error).__name__ if error is not None else None, str(error or "")))
        if fail == "end":
            raise Boom(f"end {n}")

    return {"on_chunk": None if kind == "none" else on_chunk, "on_end": on_end,
            "flush": flush if kind in ("hold", "all") else None}


async def _run(wrap: Callable[..., Body], stages: list[tuple[str, str]], base_fails: bool, close_after: int,
               ) -> list[object]:
    log: list[object] = []
    body: Body = Recorded([b"a", b"b", b"c", b"d"], fail_after=3 if base_fails else None)
    for n, (kind, fail) in enumerate(stages):
        body = wrap(body, **_stage(n, kind, fail, log))
    try:
        for _ in range(close_after):
            log.append(("chunk", await body.__anext__()))
        await body.aclose()
        log.append("closed")
    except BaseException as exc:
        log.append(("raised", type(exc).__name__, str(exc)))
    return log


# (filter kind, failing callback): a filter that fails needs a filter, a flush that fails a flush.
STAGE_KINDS = [(kind, fail) for kind in ("none", "tag", "hold", "all")
               for fail in ("", "filter", "flush", "end")
               if not (fail == "filter" and kind == "none")
               and not (fail == "flush" and kind in ("none", "tag"))]


@pytest.mark.parametrize("depth", [1, 2, 3])
async def test_merged_stages_match_nested_wrappers_event_for_event(depth: int) -> None:
    """Every mix of filters (passing, tagging, holding back, holding all until the flush) and failures (the
    body, a filter, a flush, an end callback), read to the end or closed part way: the merged wrapper gives
    the chunks, the ends (which stage, with what, in which order) and the outcome of nested wrappers."""
    cases = 0
    for stages in itertools.product(STAGE_KINDS, repeat=depth):
        if sum(1 for _, fail in stages if fail) > 1:
            continue  # one failure at a time
        for base_fails, close_after in itertools.product((False, True), (0, 2, 9)):
            expected = await _run(Nested, list(stages), base_fails, close_after)
            got = await _run(Observed, list(stages), base_fails, close_after)
            assert got == expected, (stages, base_fails, close_after)
            cases += 1
    assert cases > 30 * depth


async def test_merged_wrappers_read_in_one_frame_and_the_taken_one_forwards() -> None:
    """Two layers' wrappers become one object around the body (the per-chunk frame saved); a wrapper
    already read is wrapped, not merged (positive control); the merged-away wrapper still reads and closes."""
    inner = Observed(Recorded([b"a", b"b"]), on_chunk=lambda c: c + b"1")
    outer = Observed(inner, on_chunk=lambda c: c + b"2")
    assert outer._inner is not inner and isinstance(outer._inner, Recorded) and len(outer._stages) == 2
    assert await inner.__anext__() == b"a12"  # forwards to the wrapper that took it over
    started = Observed(Recorded([b"x", b"y"]))
    assert await started.__anext__() == b"x"
    around = Observed(started, on_chunk=lambda c: c + b"!")
    assert around._inner is started and await read(around) == [b"y!"]
    ends: list[BaseException | None] = []
    merged = Observed(Observed(Recorded([b"q"]), on_end=ends.append), on_end=ends.append)
    await merged.aclose()
    assert len(ends) == 2 and all(isinstance(e, BodyClosed) for e in ends)
