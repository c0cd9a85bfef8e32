"""Raw request paths forwarded below an upstream's base URL (tool routes, passthrough), made safe.

yarl and most servers resolve ``..`` and ``%2e%2e`` segments, so a path that could
leave the upstream's base path is refused with a 400 instead of being forwarded. Servers
differ in what they call a dot segment, so every spelling any of them resolves is refused:
percent-encoded (also double-encoded) dots, a path parameter after the dots (``..;x``, which
Tomcat-style servers strip) and Unicode dots and slashes that NFKC normalisation folds to
``.`` and ``/`` (fullwidth ``．．``, one-dot leader, fullwidth solidus).
"""
from __future__ import annotations

import unicodedata
from urllib.parse import unquote

from gateway.errors import bad_request

_MAX_DECODES = 3


def _decoded(segment: str) -> str | None:
    """The segment percent-decoded until stable (``%252e`` is ``%2e`` is ``.``), then NFKC-normalised;
    None when it is still encoded after a few rounds (nobody legitimately encodes that deep)."""
    for _ in range(_MAX_DECODES):
        once = unquote(segment)
        if once == segment:
            return unicodedata.normalize("NFKC", segment)
        segment = once
    return None if unquote(segment) != segment else unicodedata.normalize("NFKC", segment)


def _unsafe(segment: str) -> bool:
    decoded = _decoded(segment)
    if decoded is None or decoded.split(";", 1)[0].strip() in (".", ".."):
        return True
    return "/" in decoded or "\\" in decoded or "?" in decoded or "#" in decoded \
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded)


def safe_subpath(raw_rest: str) -> str:
    """The raw (still percent-encoded) path below the base URL, or a 400 when it could escape it."""
    if any(_unsafe(segment) for segment in raw_rest.split("/")):
        raise bad_request("Invalid path: dot segments, encoded slashes and control characters are "
                          "not allowed.", code="invalid_tool_path")
    return raw_rest
