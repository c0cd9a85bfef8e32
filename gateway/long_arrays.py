"""A large body's long ``input`` array of strings, parsed in pieces instead of in one call (issue 15).

orjson parses a body in one C call that keeps the GIL. For 100k short embeddings inputs (1.3 MB) that
is ~7 ms, most of it page faults for 100k new string objects, during which the event loop cannot take
the GIL back to serve anybody. For a body of at least ``MIN_BODY`` bytes whose ``"input"`` value is an
array starting with a string, the array is cut at ``","`` separators (spaces allowed after the comma)
about every ``PIECE`` bytes: the elements before the last cut are parsed piece by piece (``[`` piece
``]``, one orjson call each, the GIL free between them), and a skeleton (those elements replaced by one
marker string with a random tag, the array's tail and the rest of the body as they were) is parsed and
checked by ``parse_json``; the pieces' strings then take the marker's place.

Why a wrong cut cannot change the result: a cut at a comma inside a string leaves the piece before it
with an unterminated string, and one inside a nested array or object leaves it unbalanced; either piece
does not parse. Pieces are accepted only when every element is a string (no key, no nesting, so the
skeleton's depth and duplicate-key checks see everything they would). Any doubt (a piece or the
skeleton that does not parse, an element that is not a string, no marker found) and the caller parses
the whole body, which gives the same answer or error.
"""
from __future__ import annotations

import re
import secrets
from typing import Any

import orjson

from gateway.blobs import escaped
from gateway.errors import LocalReply
from gateway.request_json import parse_json

MIN_BODY = 1 << 20
PIECE = 64 << 10
MARK = "\x00gw-array:"  # the decoded marker's start (a random tag follows: a body cannot spell it)
_INPUT = re.compile(rb'"input"\s*:\s*\[\s*"')
_SPACES = 16  # whitespace looked at after a comma for the next string's quote (more: not cut there)


def cuts(raw: bytes) -> tuple[int, list[int]] | None:
    """Where the ``input`` array's elements begin (after its ``[``) and the commas it is cut at, about
    ``PIECE`` bytes apart; None: not a large body with such an array, or no cut."""
    if len(raw) < MIN_BODY:
        return None
    found = _INPUT.search(raw)
    if found is None or escaped(raw, found.start()):
        return None
    start = raw.index(b"[", found.start()) + 1
    commas: list[int] = []
    at, end = start + PIECE, _end(raw, start)
    while (quote := raw.find(b'",', at, end)) >= 0:
        if not escaped(raw, quote) and raw[quote + 2:quote + 2 + _SPACES].lstrip(b" \t\r\n")[:1] == b'"':
            commas.append(quote + 1)
            at = quote + 1 + PIECE
        else:
            at = quote + 1
    return (start, commas) if commas else None


def _end(raw: bytes, start: int) -> int:
    """Where the array may end: the body's last unescaped ``"]`` (searched from the end: the array is
    most of the body); a ``"]`` past the array's end only lets a cut fall outside it (that piece does
    not parse)."""
    end = raw.rfind(b'"]', start)
    while end >= 0 and escaped(raw, end):
        end = raw.rfind(b'"]', start, end)
    return end if end >= 0 else len(raw)


def parse(raw: bytes) -> dict[str, Any] | None:
    """``parse_json`` of ``raw`` with its ``input`` array's first elements parsed in pieces; None when
    nothing was cut or in doubt: the caller parses ``raw`` whole."""
    split = cuts(raw)
    if split is None:
        return None
    start, commas = split
    elements = _elements(raw, start, commas)
    if elements is None:
        return None
    mark = MARK + secrets.token_hex(8)
    marker = orjson.dumps(mark)
    try:
        body = parse_json(b"".join((memoryview(raw)[:start], marker, memoryview(raw)[commas[-1]:])))
    except LocalReply:  # a bad body or a wrong cut: the whole parse gives the answer (or the error)
        return None
    return body if _put_back(body, mark, elements) else None


def _elements(raw: bytes, start: int, commas: list[int]) -> list[str] | None:
    """The strings between ``start`` and the last comma, one orjson call per piece; None: in doubt."""
    view = memoryview(raw)
    elements: list[str] = []
    for low, high in zip([start, *(c + 1 for c in commas[:-1])], commas, strict=True):
        try:
            part = orjson.loads(b"".join((b"[", view[low:high], b"]")))
        except orjson.JSONDecodeError:
            return None
        if not set(map(type, part)) <= {str}:  # a container or a number: the whole parse decides
            return None
        elements += part
    return elements


def _put_back(body: dict[str, Any], mark: str, elements: list[str]) -> bool:
    """Replace ``mark`` (the first element of ``body["input"]``) by ``elements``; False if absent."""
    value = body.get("input")
    if type(value) is not list or not value or value[0] != mark:
        return False  # the array was another "input" (nested): the whole parse decides
    value[0:1] = elements
    return True
