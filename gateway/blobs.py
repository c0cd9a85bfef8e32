"""Long base64 strings of a large request body, kept out of the parsed JSON.

A 50 MB vision request is almost all one base64 image that no feature reads. For bodies of at
least ``MIN_BODY`` bytes, every run of base64 characters of at least ``MIN_BLOB`` bytes that fills a
JSON string (or the payload of a ``data:...,`` URL) is replaced, before the body is parsed, by a
marker naming its SHA-256 (so cache keys still depend on the image). The parsed body then holds a
few dozen bytes where it held megabytes, and the blob stays a span of the raw body (no copy).
The raw body is forwarded unchanged; a re-serialised body gets its blobs back with ``restore``.

At C speed: a quote search per window of 64 KiB finds the quote-free runs a blob needs; only the
strings around them are checked (in slices of ``_SLICE`` bytes, so no copy of the whole string is
made) and hashed (``hashlib`` releases the GIL).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

MIN_BODY = 1 << 20
MIN_BLOB = 256 << 10
PREFIX = b"gw-blob:sha256:"
MARKER_LEN = len(PREFIX) + 64
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_SLICE = 1 << 20
_WINDOW = MIN_BLOB // 4  # a blob covers at least _WINDOWS whole aligned windows of this size
_WINDOWS = 3
_DATA_URL_HEAD = 256  # "data:<media type>;base64," is short; a comma further in is not its end


@dataclass(frozen=True, slots=True)
class Blobs:
    """Where each marker's blob lies in ``source`` (the raw body): ``marker -> (start, end)``."""

    source: bytes
    spans: dict[bytes, tuple[int, int]] = field(default_factory=dict)

    def restore(self, data: bytes) -> bytes:
        """``data`` with every known marker replaced by its blob (one copy; unknown markers stay)."""
        if not self.spans or PREFIX not in data:
            return data
        view, source = memoryview(data), memoryview(self.source)
        pieces: list[bytes | memoryview] = []
        done = scan = 0
        while (at := data.find(PREFIX, scan)) >= 0:
            span = self.spans.get(data[at : at + MARKER_LEN])
            scan = at + len(PREFIX)
            if span is not None:
                pieces += (view[done:at], source[span[0] : span[1]])
                done = scan = at + MARKER_LEN
        pieces.append(view[done:])
        return b"".join(pieces)

    def moved(self, source: bytes, after: int, by: int) -> Blobs:
        """The same blobs in a copy of the raw body with ``by`` bytes inserted at ``after``.

        Lets the old raw body be freed (a spliced copy would otherwise sit beside it).
        """
        spans = {m: (s + by, e + by) if s >= after else (s, e) for m, (s, e) in self.spans.items()}
        return Blobs(source, spans)


def extract(raw: bytes) -> tuple[bytes, Blobs | None]:
    """The body with long base64 strings replaced by markers, and the blobs; ``(raw, None)`` if none."""
    if len(raw) < MIN_BODY or PREFIX in raw:  # a body that already spells a marker is left alone
        return raw, None
    view = memoryview(raw)
    spans: dict[bytes, tuple[int, int]] = {}
    pieces: list[bytes | memoryview] = []
    done = 0
    for quote, end in _long_strings(raw):
        start = _payload_start(raw, quote + 1, end)
        if end - start < MIN_BLOB or not _all_base64(raw, start, end):
            continue
        marker = PREFIX + hashlib.sha256(view[start:end]).hexdigest().encode()
        spans[marker] = (start, end)
        pieces += (view[done:start], marker)
        done = end
    if not spans:
        return raw, None
    pieces.append(view[done:])
    return b"".join(pieces), Blobs(raw, spans)


def _long_strings(raw: bytes) -> Iterator[tuple[int, int]]:
    """``(opening quote, closing quote)`` of each string that may hold a blob, found at C speed.

    A blob has no quote in it, so it covers ``_WINDOWS`` whole aligned windows of ``_WINDOW`` bytes
    without a quote: only runs of such windows are looked at (a quote search per window, stopped by
    the window's first quote), not every string of the body (100k short strings cost 40 ms walked
    one by one). The quote before a run opens its string when no backslash escapes it; in valid JSON
    a quote closing a string is followed by a separator (not base64) before the next quote.
    """
    n, after = len(raw), 0
    run = 0
    for at in range(0, n - _WINDOW + 1, _WINDOW):
        if raw.find(b'"', at, at + _WINDOW) >= 0:
            run = 0
            continue
        run += 1
        if run != _WINDOWS or at < after:
            continue
        quote = raw.rfind(b'"', 0, at)
        end = raw.find(b'"', at + _WINDOW)
        if end < 0:
            return
        after = end
        if quote >= 0 and not _escaped(raw, quote):
            yield quote, end


def _escaped(raw: bytes, quote: int) -> bool:
    """Whether the quote at ``quote`` is escaped (an odd run of backslashes before it)."""
    first = quote
    while first > 0 and raw[first - 1] == 0x5C:
        first -= 1
    return (quote - first) % 2 == 1


def _payload_start(raw: bytes, start: int, end: int) -> int:
    """Where the base64 begins: after the comma of a ``data:`` URL, else at the string's start."""
    if raw.startswith(b"data:", start):
        comma = raw.find(b",", start, min(end, start + _DATA_URL_HEAD))
        if comma >= 0:
            return comma + 1
    return start


def _all_base64(raw: bytes, start: int, end: int) -> bool:
    """Every byte in ``raw[start:end]`` is a base64 character (escapes, quotes, spaces are not)."""
    return all(not raw[i : min(i + _SLICE, end)].translate(None, _B64) for i in range(start, end, _SLICE))
