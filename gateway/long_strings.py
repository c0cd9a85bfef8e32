"""A large body's long strings, decoded one by one instead of in one parse (issue 15).

orjson parses a body in one C call that keeps the GIL: ~8 ms for 5 MB of whitespace messages, in a
worker thread, during which the event loop cannot take the GIL back to serve anybody. For a body of at
least ``MIN_BODY`` bytes, each string value with a quote-free stretch of at least three 16 KiB windows
(found at C speed by ``gateway.blobs.quote_free_strings``) is cut out of the bytes before the parse and
replaced by a short marker. The rest (the skeleton) is parsed, then each long string is decoded by its
own orjson call (~0.2 ms for 150 KB) and put back where its marker is. Between two calls the GIL can
go to the event loop. JSON string decoding does not depend on where the string is, so the result is the
one parse's.

A string is cut only when its two quotes are unescaped and it is not an object key (a ``:`` follows).
The two quotes found are consecutive in the body: if they closed one string and opened the next, the
skeleton holds a bare marker between two strings and does not parse. Any doubt (no parse, a string that
does not decode) and the caller parses the whole body as before, which gives the same answer or error.
"""
from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import orjson

from gateway.blobs import escaped, quote_free_strings
from gateway.errors import LocalReply
from gateway.request_json import parse_json

MIN_BODY = 1 << 20
WINDOW = 16 << 10  # strings with a quote-free run of 3 windows (48 KiB or more) are cut
MARK = "\x00gw-long:"  # a decoded marker: the cut's random tag, ":" and the index of its string follow
_MARK_JSON = b"\\u0000gw-long:"  # the same in the skeleton's JSON (a NUL is always escaped in JSON)
PIECE = 256 << 10  # a longer string is decoded in pieces of about this size (fresh pages: see ``parse``)
_KEY_LOOKAHEAD = 64  # bytes after a closing quote searched for the ':' of a key (more spaces: not cut)

Spans = list[tuple[int, int]]  # (first byte, closing quote) of each string cut, by marker index


def cut(raw: bytes) -> tuple[bytes, Spans, str] | None:
    """The skeleton (long string values replaced by markers), where each string was and the markers'
    random tag (a body cannot spell a marker with ``\\u`` escapes: the tag is not in it); None: no cut."""
    if len(raw) < MIN_BODY or _MARK_JSON in raw:  # a body that spells a marker is parsed whole
        return None
    view = memoryview(raw)
    pieces: list[bytes | memoryview] = []
    spans: Spans = []
    tag = secrets.token_hex(8)
    done = 0
    for quote, end in quote_free_strings(raw, WINDOW):
        if escaped(raw, end) or _is_key(raw, end):
            continue
        pieces += (view[done:quote + 1], f"{_MARK_JSON.decode()}{tag}:{len(spans)}".encode())
        spans.append((quote + 1, end))
        done = end
    if not spans:
        return None
    pieces.append(view[done:])
    return b"".join(pieces), spans, tag


def _is_key(raw: bytes, end: int) -> bool:
    """Whether the string closed at ``end`` is followed by ``:`` (a key), or by too many spaces to tell."""
    after = raw[end + 1:end + 1 + _KEY_LOOKAHEAD]
    rest = after.lstrip()
    return rest[:1] == b":" or (not rest and len(after) == _KEY_LOOKAHEAD)


def parse(raw: bytes) -> dict[str, Any] | None:
    """``parse_json`` of ``raw`` with its long strings cut and put back; None when nothing was cut or in
    doubt (the skeleton does not parse, a string does not decode): the caller parses ``raw`` whole."""
    split = cut(raw)
    if split is None:
        return None
    skeleton, spans, tag = split
    try:
        body = parse_json(skeleton)
    except LocalReply:  # a bad body or a wrong cut: the whole parse gives the answer (or the error)
        return None
    return body if put_back(body, raw, spans, tag) else None


def put_back(body: dict[str, Any], raw: bytes, spans: Spans, tag: str) -> bool:
    """Replace every marker in ``body`` by its string decoded from ``raw``; False when a string does not
    decode or a marker is missing (the caller then parses the whole body)."""
    left = len(spans)
    prefix = f"{MARK}{tag}:"
    stack: list[Any] = [body]
    while stack and left:
        node = stack.pop()
        items = node.items() if type(node) is dict else enumerate(node)
        for key, value in items:
            kind = type(value)
            if kind is str:
                if value.startswith(prefix):
                    decoded = _decode(raw, spans, value[len(prefix):])
                    if decoded is None:
                        return False
                    node[key] = decoded
                    left -= 1
            elif kind is dict or kind is list:
                stack.append(value)
    return left == 0


def _decode(raw: bytes, spans: Spans, index: str) -> str | None:
    """The string of span ``index``: decoded from a view of ``raw`` (its quotes included: no copy), in
    pieces when it is longer than ``PIECE``."""
    try:
        start, end = spans[int(index)]
    except (ValueError, IndexError):
        return None
    view = memoryview(raw)
    if end - start <= PIECE:
        return _loads(view[start - 1:end + 1])
    parts = []
    for low, high in pieces(raw, start, end):
        part = _loads(b'"' + view[low:high] + b'"')
        if part is None:
            return None
        parts.append(part)
    return "".join(parts)


def pieces(raw: bytes, start: int, end: int) -> Iterator[tuple[int, int]]:
    """``raw[start:end]`` in pieces of about ``PIECE`` bytes, each cut just before a space: a space is
    never part of an escape or of a multi-byte UTF-8 character, so the pieces decode to the whole string's
    parts (a body where an escape is cut was invalid: a piece does not decode, and the whole parse answers).
    A stretch without a space is not cut."""
    low = start
    while end - low > PIECE:
        cut = raw.rfind(b" ", low + 1, low + PIECE)
        if cut < 0:
            cut = raw.find(b" ", low + PIECE, end)
        if cut < 0:
            break
        yield low, cut
        low = cut
    yield low, end


def _loads(quoted: bytes | memoryview) -> str | None:
    try:
        text = orjson.loads(quoted)
    except orjson.JSONDecodeError:
        return None
    return text if type(text) is str else None
