"""One raw connection's answers: interim 1xx answers skipped, a byte the upstream sends unasked (while the
connection idles in the pool) closes it, a second answer to one request is malformed. The pure-Python
parser (``AIOHTTP_NO_EXTENSIONS=1``) is exercised by running this package's tests with that variable."""
from __future__ import annotations

import asyncio
import gc
import sys
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import http_parser

from gateway.rawhttp import connection
from gateway.rawhttp.client import fetch
from gateway.rawhttp.origin import Origin
from gateway.rawhttp.pool import RawPool
from gateway.small_queue import SmallQueue
from tests.support.raw_server import Handler, Peer, RawServer, answer, chunked, keep_answering
from tests.support.until import until


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Any]:
    servers: list[RawServer] = []
    pools: list[RawPool] = []

    async def start(handler: Handler) -> tuple[RawServer, RawPool]:
        server = await RawServer(handler).start()
        servers.append(server)
        pools.append(RawPool(Origin.from_url(server.url), max_connections=4, keepalive_s=30))
        return server, pools[-1]

    yield start
    for pool in pools:
        await pool.close()
    for server in servers:
        await server.close()


REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def body_of(pool: RawPool) -> bytes:
    resp = await fetch(pool, REQUEST, None, False, 5.0)
    try:
        return await resp.content.read()
    finally:
        resp.release()


async def test_interim_answers_are_skipped(serve: Any) -> None:
    async def handler(peer: Peer) -> None:
        interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        await keep_answering(peer, interim + answer(b"final"))

    server, pool = await serve(handler)
    assert await body_of(pool) == b"final"
    assert await body_of(pool) == b"final" and server.accepted == 1  # the connection stayed usable


async def test_a_byte_sent_unasked_to_an_idle_connection_closes_it(serve: Any) -> None:
    extra = asyncio.Event()

    async def handler(peer: Peer) -> None:
        if peer.index > 0:
            await keep_answering(peer)
            return
        await peer.request()
        await peer.send(answer(b"one"))
        await extra.wait()
        await peer.send(b"HTTP/1.1 200 OK\r\n")
        await keep_answering(peer)

    server, pool = await serve(handler)
    assert await body_of(pool) == b"one" and pool.idle_count == 1  # control: kept after a clean answer
    extra.set()
    await until(lambda: pool.open_count == 0, message="the idle connection closed")
    assert await body_of(pool) == b"ok" and server.accepted == 2


async def test_a_second_answer_to_one_request_closes_the_connection(serve: Any) -> None:
    """The first (complete) answer is delivered; the connection it came on is never reused."""
    async def handler(peer: Peer) -> None:
        await keep_answering(peer, answer(b"one") + answer(b"two"))

    server, pool = await serve(handler)
    assert await body_of(pool) == b"one"
    await until(lambda: pool.open_count == 0, message="closed, not pooled")
    assert await body_of(pool) == b"one" and server.accepted == 2


async def test_an_answers_head_is_not_kept_twice_by_the_parser(serve: Any) -> None:
    """Issue 21: once the head is parsed the parser's own lists of it are emptied, and the body's record of
    chunk ends is a small list; the response handle keeps its headers (control) and the body reads on,
    the connection is reused as before."""
    async def handler(peer: Peer) -> None:
        await keep_answering(peer, chunked(b"hello", b" world", headers="X-One: 1\r\nX-Two: 2\r\n"))

    server, pool = await serve(handler)
    resp = await fetch(pool, REQUEST, None, False, 5.0)
    parser_lists = [ref for ref in gc.get_referents(resp._conn._parser) if type(ref) is list]
    assert resp.headers["x-two"] == "2" and parser_lists and not any(parser_lists)
    splits = resp.content._http_chunk_splits  # a list, not a deque with its 64-slot block (the control)
    assert splits is not None and sys.getsizeof(splits) < 200 < 600 < sys.getsizeof(deque())
    assert sys.getsizeof(resp.content._buffer) < 200  # the body's chunks too
    assert await resp.content.read() == b"hello world"
    resp.release()
    assert await body_of(pool) == b"hello world" and server.accepted == 1


async def test_many_small_chunks_still_pause_reading_with_the_small_splits_record(serve: Any) -> None:
    """Issue 21: the body's record of chunk ends is a small list, not a 760-byte deque; it still does its
    job: 4,000 unread 1-byte chunks (4 KB, far below the byte mark) pause reading past 2,048 chunks, and
    reading them all resumes it, the body whole and the connection reused."""
    many = 4000
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"

    fetched = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(head + b"1\r\nx\r\n")
        await fetched.wait()  # the burst comes after the head was taken: into the small queues first
        await peer.send(b"1\r\nx\r\n" * (many - 1) + b"0\r\n\r\n")
        await keep_answering(peer)

    server, pool = await serve(handler)
    resp = await fetch(pool, REQUEST, None, False, 5.0)
    assert type(resp.content._http_chunk_splits) is SmallQueue  # the control: small before the burst
    fetched.set()
    conn = resp._conn
    await until(lambda: conn.reading_paused, message="reading paused on the chunk count")
    assert resp.content._size < 2**15  # control: not the bytes
    # a burst of chunks past GROW_AT: deques again (popleft O(1); a list's pop(0) would be quadratic)
    assert type(resp.content._http_chunk_splits) is deque and type(resp.content._buffer) is deque
    assert await resp.content.read() == b"x" * many and not conn.reading_paused
    resp.release()
    assert await body_of(pool) == b"ok" and server.accepted == 1


async def test_a_finished_answers_reader_is_freed_without_the_cyclic_collector(serve: Any) -> None:
    """Issue 21: the body reader and its small queues make no reference cycle (a queue that held its owner
    did: every upstream answer's reader was left for the cyclic collector). Control: the same shape with a
    queue holding its owner is found as cyclic garbage."""
    server, pool = await serve(keep_answering)

    class Owning(list):  # type: ignore[type-arg]
        owner: object = None

    async def answered() -> None:
        resp = await fetch(pool, REQUEST, None, False, 5.0)
        assert await resp.content.read() == b"ok"
        resp.release()

    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        await answered()
        await answered()  # the pooled connection lets go of the first answer's reader for the second one's
        queue = Owning()  # the control
        queue.owner = [queue]
        del queue
        gc.collect()
        garbage = [type(o).__name__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert "Owning" in garbage and "StreamReader" not in garbage
    assert server.accepted == 1


class _CountingParser:
    """The connection's parser, with its empty feeds (what a resume without a pause costs) counted."""

    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self.empty_feeds = 0

    def feed_data(self, data: bytes) -> Any:
        self.empty_feeds += not data
        return self.parser.feed_data(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parser, name)


async def test_reads_resume_nothing_unless_reading_was_paused(serve: Any) -> None:
    """Issue 21: aiohttp's body reader asks for a resume after every read; the connection feeds its parser
    again only after a pause. Three chunks read one by one: no empty feed. Control: a burst of 4,000 unread
    chunks pauses reading (on the chunk count), and the reads that drain it resume the parser (an empty
    feed) and the body arrives whole."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    many = 4000
    next_chunk = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(head)
        for _ in range(3):
            await next_chunk.wait()
            next_chunk.clear()
            await peer.send(b"5\r\nchunk\r\n")
        await next_chunk.wait()
        await peer.send(b"1\r\ny\r\n" * many + b"0\r\n\r\n")
        await keep_answering(peer)

    server, pool = await serve(handler)
    resp = await fetch(pool, REQUEST, None, False, 5.0)
    conn = resp._conn
    counting = conn._parser = _CountingParser(conn._parser)
    for _ in range(3):
        next_chunk.set()
        assert await resp.content.readany() == b"chunk"
    assert counting.empty_feeds == 0 and not conn.reading_paused
    next_chunk.set()
    await until(lambda: conn.reading_paused, message="reading paused on the chunk count")
    assert await resp.content.read() == b"y" * many
    assert counting.empty_feeds >= 1 and not conn.reading_paused  # the control: a paused parser resumed
    resp.release()
    assert await body_of(pool) == b"ok" and server.accepted == 1



def _parsers() -> list[Any]:
    found: list[Any] = [http_parser.HttpResponseParserPy]
    c_parser = getattr(http_parser, "HttpResponseParserC", None)  # None where aiohttp has no C extension
    return found if c_parser is None else [*found, c_parser]


async def _paused_then_read(serve: Any, parser: Any, monkeypatch: Any) -> tuple[Any, asyncio.Event]:
    """A chunked answer whose 100 KB chunk pauses reading (past the 64 KiB mark) and is read (a resume);
    the returned event sends the last chunk and the end marker in one piece."""
    monkeypatch.setattr(connection, "HttpResponseParser", parser)
    big, rest = asyncio.Event(), asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await big.wait()
        await peer.send(b"%x\r\n" % 100_000 + b"x" * 100_000 + b"\r\n")
        await rest.wait()
        await peer.send(b"5\r\nhello\r\n0\r\n\r\n")
        await keep_answering(peer)

    _, pool = await serve(handler)
    resp = await fetch(pool, REQUEST, None, False, 5.0)
    assert isinstance(resp._conn._parser, parser)
    big.set()
    await until(lambda: resp._conn.reading_paused, message="reading paused past the high-water mark")
    got = b""
    while len(got) < 100_000:
        got += await resp.content.readany()
    assert got == b"x" * 100_000 and not resp._conn.reading_paused
    return resp, rest


@pytest.mark.parametrize("parser", _parsers(), ids=lambda p: p.__module__)
async def test_the_last_chunk_after_a_pause_arrives_with_either_parser(serve: Any, monkeypatch: Any,
                                                                      parser: Any) -> None:
    """aiohttp's pure-Python parser keeps its pause flag after the resume and holds the piece that follows
    back with reading not paused; nothing fed it again and the body never ended (before the fix: for
    ever). With either parser the body is whole (the control below shows the held state arising)."""
    resp, rest = await _paused_then_read(serve, parser, monkeypatch)
    assert resp._conn._pure == (parser is http_parser.HttpResponseParserPy)
    rest.set()
    assert await asyncio.wait_for(resp.content.read(), 5) == b"hello"
    resp.release()


async def test_the_pure_python_parser_holds_the_last_chunk_without_the_refeed(serve: Any,
                                                                            monkeypatch: Any) -> None:
    """The control: the same answer with the connection's re-feed off holds the last piece in the parser
    (reading not paused, nothing in the body's buffer), which the test above would wait on for ever."""
    resp, rest = await _paused_then_read(serve, http_parser.HttpResponseParserPy, monkeypatch)
    conn = resp._conn
    conn._pure = False  # the re-feed off
    rest.set()
    await until(lambda: bool(conn._parser._payload_has_more_data), message="the last piece held back")
    assert not conn.reading_paused and resp.content._size == 0 and not resp.content.is_eof()
    conn._pure = True
    conn.data_received(b"")  # what the fix does on the piece's arrival: it comes out
    assert await asyncio.wait_for(resp.content.read(), 5) == b"hello"
    resp.release()
