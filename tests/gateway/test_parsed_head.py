"""gateway.parsed_head: the parser's own copy of a parsed head is emptied, nothing else of the parser.

Run on aiohttp's C parser (the one that keeps the lists); the pure-Python parser keeps none, so the
helper finds nothing there and parsing is unchanged (``AIOHTTP_NO_EXTENSIONS=1`` runs these on it).
"""
from __future__ import annotations

import asyncio
import gc
import tracemalloc
from typing import Any

from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpRequestParser, HttpResponseParser

from gateway.parsed_head import forget_parsed_head

HEADERS = "".join(f"X-Header-{i}: value-{i}-{'v' * 40}\r\n" for i in range(12))
HEAD = (f"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n{HEADERS}"
        "Transfer-Encoding: chunked\r\n\r\n").encode()
C_PARSER = HttpResponseParser.__module__ == "aiohttp._http_parser"


def response_parser() -> HttpResponseParser:
    loop = asyncio.get_running_loop()
    return HttpResponseParser(BaseProtocol(loop), loop, 2**15, read_until_eof=True)


def reachable(parser: object, target: object) -> bool:
    """``target`` is one of the parser's references, or an item of one of its lists."""
    return any(ref is target or (type(ref) is list and any(item is target for item in ref))
               for ref in gc.get_referents(parser))


async def test_the_parsers_lists_of_a_parsed_head_are_emptied() -> None:
    parser = response_parser()
    (message, payload), *_ = parser.feed_data(HEAD + b"5\r\nhello\r\n")[0]
    first_raw = message.raw_headers[0]
    assert reachable(parser, first_raw) == C_PARSER  # control: the C parser keeps the head's pairs
    assert forget_parsed_head(parser, message.raw_headers, message.headers) == (2 if C_PARSER else 0)
    assert not reachable(parser, first_raw)
    assert reachable(parser, payload) == C_PARSER  # the body's reader (not a list) is kept: the body reads on
    assert message.headers["x-header-11"].startswith("value-11")  # the message keeps its own copy


async def test_parsing_goes_on_as_before_after_the_lists_are_emptied() -> None:
    """The rest of the body, then a second answer on the same connection, with its own headers."""
    parser = response_parser()
    (message, payload), *_ = parser.feed_data(HEAD + b"5\r\nhello\r\n")[0]
    forget_parsed_head(parser, message.raw_headers, message.headers)
    parser.feed_data(b"6\r\n world\r\n0\r\n\r\n")
    assert await payload.read() == b"hello world"
    next_answer = b"HTTP/1.1 201 Created\r\nX-Second: 2\r\nContent-Length: 2\r\n\r\nok"
    (second, body), *_ = parser.feed_data(next_answer)[0]
    assert second.code == 201 and dict(second.headers) == {"X-Second": "2", "Content-Length": "2"}
    assert await body.read() == b"ok"


async def test_a_request_parsers_lists_are_emptied_too_and_the_message_is_untouched() -> None:
    loop = asyncio.get_running_loop()
    parser = HttpRequestParser(BaseProtocol(loop), loop, 2**16)
    data = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{HEADERS}Content-Length: 2\r\n\r\n{{}}".encode()
    (message, _), *_ = parser.feed_data(data)[0]
    raw = message.raw_headers
    assert forget_parsed_head(parser, raw, message.headers) == (2 if C_PARSER else 0)
    assert message.raw_headers is raw and len(raw) == 14 and message.headers["host"] == "x"


async def test_a_head_without_headers_and_unrelated_lists_are_left_alone() -> None:
    parser = response_parser()
    (message, _), *_ = parser.feed_data(b"HTTP/1.1 204 No Content\r\n\r\n")[0]
    assert forget_parsed_head(parser, message.raw_headers, message.headers) == 0
    other: list[tuple[str, str]] = [("a", "b")]
    holder: Any = type("Holder", (), {})()
    holder.pairs = other
    assert forget_parsed_head(holder, ((b"a", b"b"),), {"a": "c"}) == 0 and other == [("a", "b")]


async def test_many_parsed_heads_hold_a_fraction_of_the_memory() -> None:
    """Issue 21's pin: 200 connections' parsers after one long head each (the message let go, as the raw
    client does). Control: the same without emptying holds the heads again."""
    kept = await _traced_parsers(forget=False)
    emptied = await _traced_parsers(forget=True)
    if C_PARSER:
        # ~8 KB per parser kept (its reader, its protocol, the head's 14 pairs twice), ~3.4 KB once emptied
        assert kept - emptied > 200 * 3000 and emptied < kept / 2
    else:
        assert emptied <= kept * 1.1


async def _traced_parsers(forget: bool) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        parsers: list[tuple[HttpResponseParser, Any]] = []
        for _ in range(200):
            parser = response_parser()
            (message, payload), *_ = parser.feed_data(HEAD + b"5\r\nhello\r\n")[0]
            if forget:
                forget_parsed_head(parser, message.raw_headers, message.headers)
            parsers.append((parser, payload))
            del message
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
