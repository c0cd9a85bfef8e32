"""Long base64 strings of a large request body, kept out of the parsed JSON.

A 50 MB vision request is almost all one base64 image that no feature reads. For bodies of at
least ``MIN_BODY`` bytes, every run of base64 characters of at least ``MIN_BLOB`` bytes that fills a
JSON string (or the payload of a ``data:...,`` URL) is replaced, before the body is parsed, by a
marker naming its SHA-256 (so cache keys still depend on the image). The parsed body then holds a
few dozen bytes where it held megabytes, and the blob stays a span of the raw body (no copy).
The raw body is forwarded unchanged; a re-serialised body gets its blobs back with ``restore``.

At C speed: a quote search per window of 64 KiB finds the quote-free runs a blob needs
(``quote_free_strings``, also used by ``gateway/long_strings.py``); only the
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
    for quote, end in quote_free_strings(raw, _WINDOW):
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


def quote_free_strings(raw: bytes, window: int) -> Iterator[tuple[int, int]]:
    """``(quote before, quote after)`` of each run of ``_WINDOWS`` or more aligned ``window``-byte windows
    without a quote, found at C speed: a string that long with no quote in it (a blob, long text) covers
    such a run. One quote search per window (stopped by its first quote), not a walk of every string of
    the body (100k short strings cost 40 ms walked one by one). The two quotes are consecutive in the
    body; the one before is not escaped. In valid JSON they open and close one string, or close one and
    open the next (a separator between them): the caller tells which.
    """
    n, after = len(raw), 0
    run = 0
    for at in range(0, n - window + 1, window):
        if raw.find(b'"', at, at + window) >= 0:
            run = 0
            continue
        run += 1
        if run != _WINDOWS or at < after:
            continue
        quote = raw.rfind(b'"', 0, at)
        end = raw.find(b'"', at + window)
        if end < 0:
            return
        after = end
        if quote >= 0 and not escaped(raw, quote):
            yield quote, end


_BACKSLASHES_SEEN = 4096


def escaped(raw: bytes, quote: int) -> bool:
    """Whether the byte at ``quote`` is escaped (an odd run of backslashes before it). A run longer than
    ``_BACKSLASHES_SEEN`` counts as escaping it: the callers then leave the string alone (safe)."""
    before = raw[max(0, quote - _BACKSLASHES_SEEN):quote]
    run = len(before) - len(before.rstrip(b"\\"))
    return run % 2 == 1 or run == _BACKSLASHES_SEEN


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
