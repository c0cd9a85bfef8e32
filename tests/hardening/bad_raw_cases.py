"""Bad-input catalogue, part three: bytes no HTTP library will send (framing, headers, protocol confusion).

Each ``RawCase`` is sent on its own connection; the answer must be a 4xx in the OpenAI error shape.
``pieces`` with ``gap_s`` model a client that trickles its request.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass

from tests.hardening.bad_cases import KEY, LIMIT, VALID

CHAT = "/v1/chat/completions"
# expected "status" of a case the gateway answers by closing the connection (nobody left to answer)
CLOSED = 0
AUTH = f"Authorization: Bearer {KEY}\r\n".encode()
START = b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: gw\r\n" + AUTH + b"Content-Type: application/json\r\n"


@dataclass(frozen=True)
class RawCase:
    name: str
    pieces: tuple[bytes, ...]
    status: int
    code: str
    gap_s: float = 0.0
    half_close: bool = False  # shut our write side after the last piece (the client gave up sending)


def raw(
    name: str, data: bytes, status: int = 400, code: str = "invalid_http_request", **kw: object
) -> RawCase:
    return RawCase(name, (data,), status, code, **kw)  # type: ignore[arg-type]


def req(headers: bytes, body: bytes = b"") -> bytes:
    return START + headers + b"\r\n" + body


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def framing_cases() -> list[RawCase]:
    body = VALID
    cl = b"Content-Length: %d\r\n" % len(body)
    te = b"Transfer-Encoding: chunked\r\n"
    return [
        raw("framing: Content-Length then Transfer-Encoding", req(cl + te, chunked(body))),
        raw("framing: Transfer-Encoding then Content-Length", req(te + cl, chunked(body))),
        raw("framing: two different Content-Lengths", req(cl + b"Content-Length: 3\r\n", body)),
        raw("framing: two equal Content-Lengths", req(cl + cl, body)),
        raw("framing: Content-Length not a number", req(b"Content-Length: abc\r\n", body)),
        raw("framing: negative Content-Length", req(b"Content-Length: -1\r\n", body)),
        raw("framing: Content-Length with a plus sign", req(b"Content-Length: +%d\r\n" % len(body), body)),
        raw("framing: Content-Length in hex", req(b"Content-Length: 0x10\r\n", body)),
        raw("framing: Content-Length overflow", req(b"Content-Length: 99999999999999999999999\r\n", body)),
        raw(
            "framing: Content-Length list", req(b"Content-Length: %d, %d\r\n" % (len(body), len(body)), body)
        ),
        raw("framing: Transfer-Encoding gzip only", req(b"Transfer-Encoding: gzip\r\n", body)),
        raw("framing: chunked twice", req(b"Transfer-Encoding: chunked, chunked\r\n", chunked(body))),
        raw("framing: Transfer-Encoding identity", req(b"Transfer-Encoding: identity\r\n", body)),
        raw("framing: Transfer-Encoding xchunked", req(b"Transfer-Encoding: xchunked\r\n", chunked(body))),
        raw("framing: chunk size not hex", req(te, b"zz\r\n" + body + b"\r\n0\r\n\r\n")),
        raw(
            "framing: chunk size overflow", req(te, b"fffffffffffffffffffffff\r\n" + body + b"\r\n0\r\n\r\n")
        ),
        raw("framing: chunk longer than its size", req(te, b"2\r\n" + body + b"\r\n0\r\n\r\n")),
        raw("framing: negative chunk size", req(te, b"-5\r\n" + body + b"\r\n0\r\n\r\n")),
        raw(
            "framing: chunked body over the limit",
            req(te, chunked(*[b" " * 8192] * (LIMIT // 8192 + 2))),
            413,
            "request_too_large",
        ),
        raw(
            "framing: chunked gzip bomb",
            req(te + b"Content-Encoding: gzip\r\n", chunked(gzip.compress(b" " * 5_000_000))),
            413,
            "request_too_large",
        ),
        raw(
            "framing: 10 KB chunk extension on an empty object",
            req(te, b"2;" + b"e" * 10_000 + b"\r\n{}\r\n0\r\n\r\n"),
            400,
            "missing_model",
        ),
        # A client that shuts its side mid-body is gone: the connection closes, nothing is sent anywhere.
        RawCase(
            "framing: body shorter than Content-Length, then EOF",
            (req(b"Content-Length: 500\r\n", body),),
            CLOSED,
            "",
            half_close=True,
        ),
        RawCase(
            "framing: chunked without the last chunk, then EOF",
            (req(te, b"5\r\nhello\r\n"),),
            CLOSED,
            "",
            half_close=True,
        ),
        raw(
            "framing: HTTP/1.0 body without Content-Length",
            b"POST " + CHAT.encode() + b" HTTP/1.0\r\nHost: gw\r\n" + AUTH + b"\r\n" + body,
        ),
    ]


def header_cases() -> list[RawCase]:
    cl = b"Content-Length: %d\r\n" % len(VALID)
    many = b"".join(b"X-Filler-%d: v\r\n" % i for i in range(300))
    return [
        raw(
            "headers: bare LF line endings",
            START.replace(b"\r\n", b"\n") + cl.replace(b"\r\n", b"\n") + b"\n" + VALID,
        ),
        raw("headers: line without a colon", req(b"NotAHeader\r\n" + cl, VALID)),
        raw("headers: space before the colon", req(b"X-Bad : v\r\n" + cl, VALID)),
        raw("headers: obsolete line folding", req(b"X-Fold: a\r\n b\r\n" + cl, VALID)),
        raw("headers: NUL in a value", req(b"X-Nul: a\x00b\r\n" + cl, VALID)),
        raw("headers: CR in a value", req(b"X-Cr: a\rb\r\n" + cl, VALID)),
        raw("headers: NUL in the authorization header", req(b"X-Api-Key: sk-\x00secret\r\n" + cl, VALID)),
        raw("headers: non-ASCII name", req("X-Ümlaut: v\r\n".encode() + cl, VALID)),
        raw("headers: space inside a name", req(b"X Bad: v\r\n" + cl, VALID)),
        raw("headers: empty name", req(b": v\r\n" + cl, VALID)),
        raw("headers: 300 headers", req(many + cl, VALID)),
        raw("headers: one 20 KB header", req(b"X-Big: " + b"a" * 20_000 + b"\r\n" + cl, VALID)),
        raw("headers: 20 KB cookie", req(b"Cookie: " + b"c=" + b"a" * 20_000 + b"\r\n" + cl, VALID)),
        raw(
            "headers: 20 KB authorization",
            req(b"Authorization: Bearer " + b"k" * 20_000 + b"\r\n" + cl, VALID),
        ),
        raw("headers: missing Host on HTTP/1.1", START.replace(b"Host: gw\r\n", b"") + cl + b"\r\n" + VALID),
        raw("headers: two Host headers", req(b"Host: other\r\n" + cl, VALID)),
        raw(
            "headers: 16 KB of trailers",
            req(
                b"Transfer-Encoding: chunked\r\n",
                b"2\r\n{}\r\n0\r\nX-Trailer: " + b"t" * 17_000 + b"\r\n\r\n",
            ),
        ),
    ]


def protocol_cases() -> list[RawCase]:
    cl = b"Content-Length: %d\r\n" % len(VALID)
    return [
        raw(
            "protocol: request line of 10 KB",
            b"POST " + CHAT.encode() + b"?" + b"q" * 10_000 + b" HTTP/1.1\r\n"
            b"Host: gw\r\n" + AUTH + cl + b"\r\n" + VALID,
        ),
        raw("protocol: raw space in the target", b"POST /v1/chat completions HTTP/1.1\r\nHost: gw\r\n\r\n"),
        raw(
            "protocol: raw UTF-8 in the target",
            "POST /v1/chät/completions HTTP/1.1\r\nHost: gw\r\n\r\n".encode(),
        ),
        raw("protocol: target without a slash", b"POST v1/chat/completions HTTP/1.1\r\nHost: gw\r\n\r\n"),
        raw("protocol: invalid method token", b"P@ST " + CHAT.encode() + b" HTTP/1.1\r\nHost: gw\r\n\r\n"),
        raw(
            "protocol: lowercase method",
            b"post " + CHAT.encode() + b" HTTP/1.1\r\nHost: gw\r\n" + AUTH + cl + b"\r\n" + VALID,
        ),
        raw(
            "protocol: unknown method",
            b"BREW " + CHAT.encode() + b" HTTP/1.1\r\nHost: gw\r\n" + AUTH + b"\r\n",
        ),
        raw("protocol: HTTP/3.0 version", b"POST " + CHAT.encode() + b" HTTP/3.0\r\nHost: gw\r\n\r\n"),
        raw("protocol: version garbage", b"POST " + CHAT.encode() + b" HTTQ/1.1\r\nHost: gw\r\n\r\n"),
        raw("protocol: TLS ClientHello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64),
        raw("protocol: HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        raw("protocol: HTTP/0.9 request", b"GET /\r\n\r\n", 404, "unknown_url"),
        raw(
            "protocol: CONNECT to another host",
            b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
            404,
            "unknown_url",
        ),
        raw("protocol: OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: gw\r\n\r\n", 404, "unknown_url"),
        raw(
            "protocol: Expect other than 100-continue",
            req(b"Expect: fancy\r\n" + cl, VALID),
            417,
            "expectation_failed",
        ),
        raw(
            "protocol: Expect 100-continue for an oversized body",
            req(b"Expect: 100-continue\r\nContent-Length: 99999999\r\n"),
            413,
            "request_too_large",
        ),
        raw(
            "protocol: websocket upgrade on chat",
            req(b"Connection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 2\r\n", b"{}"),
            400,
            "missing_model",
        ),
    ]


def slow_cases() -> list[RawCase]:
    head = req(b"Content-Length: %d\r\n" % len(VALID))
    trickled_bad = req(b"Content-Length: 14\r\n", b'{"model": 5 }x')
    return [
        RawCase(
            "slow: body trickled past the body timeout",
            (head, *[bytes([b]) for b in VALID[:8]]),
            408,
            "request_timeout",
            gap_s=0.25,
        ),
        RawCase(
            "slow: bad body trickled within the timeout",
            (trickled_bad[:-14], *[bytes([b]) for b in trickled_bad[-14:]]),
            400,
            "invalid_json",
            gap_s=0.02,
        ),
        RawCase(
            "slow: bad request with headers trickled byte by byte",
            tuple(bytes([b]) for b in trickled_bad),
            400,
            "invalid_json",
            gap_s=0.002,
        ),
        RawCase("slow: body never sent", (head,), 408, "request_timeout"),
    ]


RAW_CASES = [*framing_cases(), *header_cases(), *protocol_cases(), *slow_cases()]
