"""Answers written straight to the client's transport, past aiohttp's ``StreamResponse`` (issue 21).

aiohttp's response set-up costs ~90 us of the gateway's ~400 us to a first token (a first-token trace,
``bench/results/2026-12-06-lean-relay.md``): a ``CIMultiDict`` of the headers, the status line formatted,
the headers serialised by its writer, a ``StreamWriter`` per chunk with its length and chunking checks,
and a coroutine per write. ``LeanResponse`` writes the same bytes with less: the status line pre-built per
status, the header block joined once from the caller's dict, ``Content-Length`` when the whole body is
known (one write for head and body), chunked framing for a stream (its head leaves with the first chunk),
keep-alive and ``Connection`` decided as aiohttp decides them, no body for ``HEAD``, 1xx, 204 and 304.

aiohttp's request side stays: ``RequestHandler`` still calls ``prepare`` and ``write_eof`` on what the
handler returned (both do nothing once this response has ended), reads ``keep_alive`` to keep the
connection, and its access log reads ``status``, ``body_length`` (bytes written, head included, as
aiohttp counts them) and ``headers``. The request's own ``StreamWriter`` is kept informed
(``output_size``), so aiohttp's error handling knows an answer has started. Back-pressure is aiohttp's:
``write`` reports when the transport is over its high-water mark (``pause_writing``) and the caller awaits
``drain``; a client that left raises ``ConnectionResetError`` on the next write. ``on_response_prepare``
signals are not sent (the gateway registers none; ``tests/gateway/test_app.py`` keeps it so).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from http import HTTPStatus
from types import MappingProxyType

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.base_protocol import BaseProtocol
from aiohttp.helpers import EMPTY_BODY_STATUS_CODES, must_be_empty_body, rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion, HttpVersion10, HttpVersion11
from multidict import CIMultiDict, CIMultiDictProxy

_REASONS: Mapping[int, str] = MappingProxyType({s.value: s.phrase for s in HTTPStatus})  # aiohttp's phrases
_STATUS_11: Mapping[int, bytes] = MappingProxyType(
    {code: f"HTTP/1.1 {code} {phrase}\r\n".encode() for code, phrase in _REASONS.items()})
_STATUS_10: Mapping[int, bytes] = MappingProxyType(
    {code: f"HTTP/1.0 {code} {phrase}\r\n".encode() for code, phrase in _REASONS.items()})
_SERVER = f"\r\nServer: {SERVER_SOFTWARE}"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # aiohttp's forbidden set, CR and LF counted apart
_CHUNKED_END = b"0\r\n\r\n"


def status_line(version: HttpVersion, status: int) -> bytes:
    """``HTTP/1.1 200 OK\\r\\n``, pre-built for every known status of HTTP/1.1 and 1.0."""
    table = _STATUS_11 if version == HttpVersion11 else _STATUS_10 if version == HttpVersion10 else None
    line = table.get(status) if table is not None else None
    if line is None:
        line = f"HTTP/{version[0]}.{version[1]} {status} {_REASONS.get(status, '')}\r\n".encode()
    return line


def header_block(fields: Mapping[str, str]) -> str:
    """``name: value`` lines joined once; a CR, LF or other control byte in a name or value is refused, as
    aiohttp refuses it (ValueError: a header injection)."""
    if not fields:
        return ""
    text = "\r\n".join(map(": ".join, fields.items()))
    lines = len(fields) - 1
    if text.count("\n") != lines or text.count("\r") != lines or _CONTROL.search(text) is not None:
        raise ValueError("Forbidden control character in response headers: a header injection.")
    return "\r\n" + text


class LeanResponse(web.StreamResponse):
    """One answer: ``fields`` (lower-case names, without framing, Date, Server or Connection) and either
    the whole ``body`` (sent by ``prepare``: head and body in one write) or a stream (``write`` each chunk,
    then ``end``). aiohttp's ``StreamResponse.__init__`` is not run: it builds the header multidict this
    class replaces; what aiohttp's server reads of a response is set here."""

    def __init__(self, status: int, fields: Mapping[str, str], *, body: bytes | None = None,
                 request: web.BaseRequest | None = None) -> None:
        self._state = {}
        self._status = status
        self._fields: Mapping[str, str] | None = fields  # until the head is written (a stream's: dropped)
        self._whole = body
        self._request = request
        self._empty = False  # no body may follow the head (HEAD, 1xx, 204, 304)
        self._writer: AbstractStreamWriter | None = None  # the request's, once the head is written
        self._protocol: BaseProtocol | None = None  # aiohttp's connection handler, then too

    # --- what aiohttp reads --------------------------------------------------------------------------
    @property
    def reason(self) -> str:
        return _REASONS.get(self._status, "")

    @property
    def headers(self) -> CIMultiDictProxy[str]:  # type: ignore[override]
        """Read only (the access log's ``%{name}o``, ``content_type``): a change after the handler would
        never be sent, so it raises instead. Empty once a stream's head has left."""
        return CIMultiDictProxy(CIMultiDict(self._fields or ()))

    @property
    def _headers(self) -> CIMultiDictProxy[str]:  # type: ignore[override]  # HeadersMixin's reads
        return self.headers

    @property
    def prepared(self) -> bool:
        return self._eof_sent or self._writer is not None

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        """aiohttp's server calls this (``finish_response``) on what a handler returned: a whole answer is
        sent now; a stream's head if it was not."""
        if self._eof_sent or self._writer is not None:
            return None
        self._request = request
        if request.writer.output_size:  # another answer to this request started (a relay that failed,
            self.cut()  # then the handler's 500): a second head would corrupt the connection
            if request.transport is not None:
                request.transport.abort()
            return None
        if self._whole is not None:
            if self.send(self._whole):
                await self.drain()
            return None
        self.write_head()
        return self._writer

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.put(bytes(data)):
            await self.drain()

    async def write_eof(self, data: bytes = b"") -> None:
        if self._eof_sent:
            return
        if self.end(data):
            await self.drain()

    # --- the gateway's calls -------------------------------------------------------------------------
    def send(self, body: bytes) -> bool:
        """The whole answer, head and body in one write, with its Content-Length. True: drain."""
        request = self._bound()
        status = self._status
        self._empty = empty = must_be_empty_body(request.method, status)
        # aiohttp's Response: no length for 1xx/204/304, nor for a HEAD answer without a body
        no_length = status in EMPTY_BODY_STATUS_CODES or (empty and not body)
        length = "" if no_length else f"\r\nContent-Length: {len(body)}"
        head = self._head(request, length, keep_alive=self._wants_keep_alive(request))
        self._eof_sent = True
        return self._out(head if empty or not body else head + body)

    def write_head(self) -> bool:
        """A stream's head, on its own (its first chunk is not there yet). True: drain."""
        return self._out(self._stream_head(self._bound()))

    def send_head_soon(self) -> None:
        """A stream's head, if its first chunk has not taken it yet (for ``loop.call_soon``): an SSE client
        sees the status before the first token."""
        if self._writer is None and not self._eof_sent:
            try:
                self.write_head()
            except ConnectionError:  # the client left first: the relay sees it on its next write
                pass

    def put(self, chunk: bytes) -> bool:
        """One chunk of a stream, framed; the head with it if it has not left. True: drain."""
        if self._writer is None:
            head = self._stream_head(self._bound())
            return self._out(head + self._framed(chunk) if chunk and not self._empty else head)
        if not chunk or self._empty:
            return False
        return self._out(self._framed(chunk))

    def end(self, last: bytes = b"") -> bool:
        """A stream's last bytes and its end (the chunked end marker): head, last chunk and end in one write
        when nothing was written yet. True: drain."""
        if self._eof_sent:
            return False
        if self._writer is None:
            head = self._stream_head(self._bound())
            out = head if self._empty else head + self._framed(last) + self._end_marker()
        else:
            out = b"" if self._empty else self._framed(last) + self._end_marker()
        self._eof_sent = True
        return self._out(out) if out else False

    def cut(self) -> None:
        """The answer stops here, unfinished: nothing more is written, the connection is not kept."""
        self._keep_alive = False
        self._eof_sent = True

    async def drain(self) -> None:
        """Until the transport is under its low-water mark again (aiohttp's ``StreamWriter.drain``)."""
        writer = self._writer or (self._request.writer if self._request is not None else None)
        if writer is not None:
            await writer.drain()

    # --- the bytes ----------------------------------------------------------------------------------
    def _bound(self) -> web.BaseRequest:
        request = self._request
        if request is None:
            raise RuntimeError("LeanResponse written before it was given its request")
        return request

    def _wants_keep_alive(self, request: web.BaseRequest) -> bool:
        keep_alive = self._keep_alive
        if keep_alive is None:
            keep_alive = request.keep_alive
        return keep_alive

    def _stream_head(self, request: web.BaseRequest) -> bytes:
        """Chunked on HTTP/1.1; on HTTP/1.0 the body ends with the connection (aiohttp's choice)."""
        self._empty = empty = must_be_empty_body(request.method, self._status)
        keep_alive = self._wants_keep_alive(request)
        framing = ""
        if not empty:
            if request.version >= HttpVersion11:
                self._chunked = True
                framing = "\r\nTransfer-Encoding: chunked"
            else:
                keep_alive = False
        return self._head(request, framing, keep_alive=keep_alive)

    def _head(self, request: web.BaseRequest, framing: str, *, keep_alive: bool) -> bytes:
        fields = self._fields or {}
        version = request.version
        connection = ""
        if keep_alive:
            if version == HttpVersion10:
                connection = "\r\nConnection: keep-alive"
        elif version == HttpVersion11:
            connection = "\r\nConnection: close"
        self._keep_alive = keep_alive
        default_type = ""
        if not self._empty and "content-type" not in fields and framing != "\r\nContent-Length: 0":
            default_type = "\r\nContent-Type: application/octet-stream"  # RFC 9110 8.3, as aiohttp adds it
        text = (f"{header_block(fields)}{default_type}\r\nDate: {rfc822_formatted_time()}{_SERVER}"
                f"{framing}{connection}\r\n\r\n")
        if self._whole is None:
            self._fields = None  # a stream need not keep its headers for its life (issue 21)
        return status_line(version, self._status) + text[2:].encode()

    def _framed(self, chunk: bytes) -> bytes:
        if not self._chunked or not chunk:
            return chunk
        return b"%x\r\n%b\r\n" % (len(chunk), chunk)

    def _end_marker(self) -> bytes:
        return _CHUNKED_END if self._chunked else b""

    def _out(self, data: bytes) -> bool:
        """Write ``data`` to the client's transport; True when the transport asks the writer to wait."""
        protocol, writer = self._protocol, self._writer
        if protocol is None or writer is None:  # the first write
            request = self._bound()
            self._protocol = protocol = request.protocol
            self._writer = writer = request.writer
        transport = protocol.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")
        size = len(data)
        writer.output_size += size  # aiohttp's handle_error: an answer has started
        self._body_length += size
        transport.write(data)
        return protocol.writing_paused
