"""The request head: request line, Host, the forwarded headers, Content-Length; one bytes object."""
from __future__ import annotations

from collections.abc import Iterable

from yarl import URL

_PLAIN_TARGET_BAD = frozenset(" \"<>\\^`{|}")


def request_target(target: str) -> str:
    """The path and query as sent, percent-encoded as aiohttp (yarl) would when not plain already."""
    if target.isascii() and target.isprintable() and _PLAIN_TARGET_BAD.isdisjoint(target):
        return target
    return URL(target).raw_path_qs


def request_head(method: str, target: str, host: str, headers: Iterable[tuple[str, str]],
                 body_length: int | None) -> bytes:
    """The head; ``body_length`` None sends no Content-Length (a GET or HEAD without body).

    A CR or LF inside a name or value (header injection) raises ``ValueError``, as aiohttp does."""
    parts = [method, " ", target, " HTTP/1.1\r\nHost: ", host, "\r\n"]
    count = 1
    for name, value in headers:
        parts += (name, ": ", value, "\r\n")
        count += 1
    if body_length is not None:
        parts.append(f"Content-Length: {body_length}\r\n")
        count += 1
    parts.append("\r\n")
    text = "".join(parts)
    if text.count("\n") != count + 2 or text.count("\r") != count + 2:  # the request line, the blank line
        raise ValueError("Newline or carriage return character detected in HTTP status/header")
    return text.encode("utf-8")
