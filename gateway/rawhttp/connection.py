"""One upstream connection: a request written in one piece, its answer parsed by aiohttp's parser.

The parser is aiohttp's C one (llhttp) when compiled, else its pure-Python twin: ``HttpResponseParser``
in ``aiohttp.http_parser`` is whichever is available. The body goes into the parser's ``StreamReader``,
which pauses the transport past twice ``BUFFER_LIMIT`` unread bytes and resumes it when the reader
catches up (back-pressure on a slow consumer). The connection never raises into the event loop: a
malformed answer or a loss becomes an exception on the pending head or on the body.
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpResponseParser, HttpResponseParserPy, RawResponseMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader

from gateway.parsed_head import forget_parsed_head
from gateway.rawhttp.errors import MalformedResponse
from gateway.small_queue import GROW_AT, SmallQueue, outgrow

BUFFER_LIMIT = 2**15  # the body's low-water mark; reading pauses past 64 KiB unread
_NO_BODY = frozenset({204, 304})


class RawConnection(BaseProtocol):
    """States: idle (nothing expected: any byte closes it), waiting for a head, reading a body."""

    __slots__ = ("_head_only", "_on_lost", "_pure", "busy", "idle_since", "message", "payload", "received",
                 "reused", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_lost: Callable[[RawConnection], None]) -> None:
        super().__init__(loop)
        self._on_lost = on_lost
        self._head_only = False
        self._pure = False  # set with the parser: aiohttp's pure-Python one (see ``_feed``)
        self._parser = self._new_parser()
        self.busy = False
        self.reused = False  # served an answer before: a failure before any byte may be a stale keep-alive
        self.received = False  # a byte of the current answer arrived
        self.idle_since = 0.0
        self.waiter: asyncio.Future[None] | None = None
        self.message: RawResponseMessage | None = None
        self.payload: StreamReader | None = None

    @property
    def reading_paused(self) -> bool:
        """The body's buffer is past its high-water mark: the transport is not read until it drains."""
        return self._reading_paused

    def _new_parser(self) -> HttpResponseParser:
        # payload_exception: a broken body (framing, decompression) fails the reader as MalformedResponse
        parser = HttpResponseParser(self, self._loop, BUFFER_LIMIT, response_with_body=not self._head_only,
                                    read_until_eof=True, auto_decompress=True,
                                    payload_exception=MalformedResponse)
        self._pure = isinstance(parser, HttpResponseParserPy)
        return parser

    def start(self, data: bytes, body: bytes | None, head_only: bool) -> asyncio.Future[None]:
        """Write one request (``data``; a large ``body`` in a second write, not copied behind the head);
        the future resolves when the answer's head is parsed."""
        if head_only != self._head_only:  # a HEAD answer has no body, whatever its Content-Length says
            self._head_only = head_only
            self._parser = self._new_parser()
        self.busy, self.received, self.message, self.payload = True, False, None, None
        waiter = self.waiter = self._loop.create_future()
        if self.transport is None or self.transport.is_closing():
            waiter.set_exception(ConnectionResetError("the connection is closed"))
        else:
            self.transport.write(data)
            if body is not None:
                self.transport.write(body)
        return waiter

    def data_received(self, data: bytes) -> None:
        if not self.busy:  # nothing was asked: an unsolicited byte makes the connection unusable
            if data and self.transport is not None:
                self.transport.close()
            return
        if data:
            self.received = True
        try:
            messages, upgraded = self._feed(data)
        except Exception as exc:  # noqa: BLE001  any parser error is a malformed answer
            self.fail(MalformedResponse(f"malformed response: {type(exc).__name__}"))
            return
        if upgraded:
            self.fail(MalformedResponse("unexpected protocol upgrade"))
            return
        for message, payload in messages:
            self._got(message, payload)
        body = self.payload
        if body is not None and body is not EMPTY_PAYLOAD:  # a burst of tiny chunks: deques again
            outgrow(body, "_buffer")
            outgrow(body, "_http_chunk_splits")

    def _feed(self, data: bytes) -> tuple[list[tuple[RawResponseMessage, StreamReader]], bool]:
        """The parser fed ``data``; with aiohttp's pure-Python parser, fed again while it holds input back
        and reading is not paused. That parser's pause flag outlives the pause it was set for: the body's
        next chunk after a resume is held "until the reader drains" although nothing is paused, and with
        no further read below the low-water mark nothing ever feeds it again (measured: a 100 KB chunk
        read, then the last chunk and the end marker in one piece, waited for ever; aiohttp 3.14.5). The
        C parser (llhttp) holds nothing unless paused."""
        parser = self._parser
        assert parser is not None
        messages, upgraded, _ = parser.feed_data(data)
        while self._pure and not self._reading_paused and parser._payload_has_more_data and not upgraded:
            more, upgraded, _ = parser.feed_data(b"")
            messages = [*messages, *more]
        return messages, upgraded

    def resume_reading(self, resume_parser: bool = True) -> None:
        """Only a paused connection has anything to resume. aiohttp's body reader calls this after every
        read below its low-water mark, paused or not, and aiohttp's own version then feeds the parser an
        empty buffer and asks the transport to read again: a Python call into the parser and one into the
        transport per chunk, on the first token's way to the client too (issue 21). The parser only holds
        bytes back after ``pause_reading``, which sets ``_reading_paused``: unset, nothing is held."""
        if self._reading_paused:
            super().resume_reading(resume_parser)

    def _got(self, message: RawResponseMessage, payload: StreamReader) -> None:
        if 100 <= message.code < 200:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        if self.payload is not None:  # set with ``message``, and kept after the response handle took that
            self.fail(MalformedResponse("more than one response to one request"))
            return
        self.message = message
        self.payload = EMPTY_PAYLOAD if message.code in _NO_BODY else payload
        forget_parsed_head(self._parser, message.raw_headers, message.headers)  # issue 21
        if payload is not EMPTY_PAYLOAD:
            _small_queues(payload)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, exc: BaseException) -> None:
        """End the exchange with ``exc`` (on the head or the body) and close the connection."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        payload = self.payload
        if payload is not None and not payload.is_eof() and payload.exception() is None:
            payload.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        payload = self.payload
        if payload is not None and not payload.is_eof() and payload.exception() is None:
            try:
                assert self._parser is not None
                self._parser.feed_eof()  # a body delimited by the connection's end ends here
            except Exception:  # noqa: BLE001  cut short: a Content-Length or chunked body not complete
                payload.set_exception(ConnectionResetError("the upstream closed the connection mid-body"))
            if not payload.is_eof() and payload.exception() is None:
                payload.set_exception(ConnectionResetError("the upstream closed the connection mid-body"))
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the upstream closed the connection before answering"))
        self._on_lost(self)


def _small_queues(payload: StreamReader) -> None:
    """The body reader's queues in ``SmallQueue``s (issue 21): its chunks and its record of where each
    HTTP chunk ends, not the deques it makes (~760 bytes each per open stream, even empty). An open stream
    holds a few chunks at a time; a burst of many (a read of tiny chunks) puts a deque back in their place
    (``data_received``, after each read).
    Taken over with what they hold (a first chunk may have come with the head); only when the reader has
    aiohttp's layout. An empty record of chunk ends reads as none does."""
    splits: Any = getattr(payload, "_http_chunk_splits", ())
    if splits is None or (type(splits) is deque and len(splits) <= GROW_AT):
        payload._http_chunk_splits = SmallQueue(splits or ())  # type: ignore[assignment]
    chunks: Any = getattr(payload, "_buffer", None)
    if type(chunks) is deque and len(chunks) <= GROW_AT:  # a burst that came with the head keeps its deque
        payload._buffer = SmallQueue(chunks)  # type: ignore[assignment]
