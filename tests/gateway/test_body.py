"""gateway.body: the Body protocol, the in-memory bodies and the one observing wrapper."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

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


def _events(sizes: list[int]) -> list[bytes]:
    return [b"data: " + b"x" * (size - 8) + b"\n\n" for size in sizes]


@pytest.mark.parametrize(("sizes", "pieces"), [
    ([300] * 10, [[300] * 3, [300] * 3, [300] * 3, [300]]),  # whole events, at most 1,000 bytes a piece
    ([300, 2500, 300], [[300], [2500], [300]]),  # an event longer than a piece: whole
    ([300] * 3, [[300] * 3]),  # not longer than a piece: as it came
])
async def test_a_long_chunk_goes_on_in_pieces_of_whole_events(sizes: list[int],
                                                              pieces: list[list[int]]) -> None:
    events = _events(sizes)
    seen: list[bytes] = []
    body = Observed(Recorded([b"".join(events), b"tail"]), on_chunk=lambda c: seen.append(c) or c,
                    piece_bytes=1000)
    got = await read(body)
    expected = [b"".join(events[sum(map(len, pieces[:i])):sum(map(len, pieces[:i + 1]))])
                for i in range(len(pieces))]
    assert got == [*expected, b"tail"] and seen == got  # the filter sees each piece


async def test_a_long_chunk_without_an_event_end_goes_on_whole() -> None:
    """Not SSE as we know it (no blank line): nothing to cut at, handed on as it came, after its first
    piece's end is looked for past the limit."""
    chunk = b"data: " + b"x" * 5000
    cut_late = b"data: " + b"x" * 1500 + b"\n\n" + b"y" * 10
    assert await read(Observed(Recorded([chunk]), piece_bytes=1000)) == [chunk]
    assert await read(Observed(Recorded([cut_late]), piece_bytes=1000)) == [cut_late[:1508], b"y" * 10]


async def test_the_loop_turns_between_two_pieces() -> None:
    """Everybody else's ready work runs between two pieces of one read; without pieces (the control) a
    read goes on in one go."""
    for piece_bytes, expected in ((1000, ["piece", "turn", "piece"]), (0, ["piece", "piece"])):
        order: list[str] = []
        body = Observed(Recorded([b"".join(_events([600, 600])), b"tail"]), piece_bytes=piece_bytes)
        first = await body.__anext__()
        order.append("piece")
        asyncio.get_running_loop().call_soon(order.append, "turn")
        second = await body.__anext__()
        order.append("piece")
        assert order == expected and len(first) + len(second) > 600


async def test_closing_drops_the_pieces_not_handed_on_and_ends_once() -> None:
    ends: list[BaseException | None] = []
    inner = Recorded([b"".join(_events([600] * 4))])
    body = Observed(inner, on_end=ends.append, piece_bytes=1000)
    assert len(await body.__anext__()) == 600
    await body.aclose()
    assert inner.closed == 1 and len(ends) == 1 and isinstance(ends[0], BodyClosed)
    with pytest.raises(StopAsyncIteration):
        await body.__anext__()


async def test_cancelled_between_two_pieces_ends_with_the_cancellation() -> None:
    """As when cancelled while waiting for the inner body: ``on_end`` hears the cancellation, once."""
    ends: list[BaseException | None] = []
    body = Observed(Recorded([b"".join(_events([600] * 4))]), on_end=ends.append, piece_bytes=1000)
    await body.__anext__()
    waiting = asyncio.ensure_future(body.__anext__())
    await asyncio.sleep(0)  # the task reaches the turn between the pieces
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await body.aclose()
    assert len(ends) == 1 and isinstance(ends[0], asyncio.CancelledError)
