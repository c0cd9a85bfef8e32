"""Raw request paths forwarded below an upstream's base URL (tool routes, passthrough), made safe.

yarl and most servers resolve ``..`` and ``%2e%2e`` segments, so a path that could
leave the upstream's base path is refused with a 400 instead of being forwarded.
"""
from __future__ import annotations

from urllib.parse import unquote

from gateway.errors import bad_request


def safe_subpath(raw_rest: str) -> str:
    """The raw (still percent-encoded) path below the base URL, or a 400 when it could escape it."""
    for segment in raw_rest.split("/"):
        decoded = unquote(segment)
        if decoded in (".", "..") or "/" in decoded or "\\" in decoded or "?" in decoded or "#" in decoded \
                or any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
            raise bad_request("Invalid path: dot segments, encoded slashes and control characters are "
                              "not allowed.", code="invalid_tool_path")
    return raw_rest
