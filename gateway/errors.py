"""Errors the gateway answers itself, always in the OpenAI error shape.

Every rejection in the gateway is a ``LocalReply`` raised from wherever the
problem is found; the handler turns it into ``{"error": {...}}`` with the right
status. Keeping one exception type means policies never build HTTP responses.
"""
from __future__ import annotations

from collections.abc import Mapping

import orjson


class LocalReply(Exception):
    """An answer produced by the gateway instead of the upstream."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "code": code, "param": param}})


def sse_error_event(message: str, type: str = "upstream_error", code: str | None = None) -> bytes:
    """The event that ends a broken stream: clients must never see a clean end."""
    return b"data: " + error_body(message, type, code) + b"\n\n"


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> LocalReply:
    return LocalReply(400, message, type="invalid_request_error", code=code, param=param)


class UpstreamFailure(Exception):
    """The upstream could not give a usable answer (connect error, reset, timeout).

    ``kind`` is a short, bounded name used by retry decisions and metrics:
    ``connect_error``, ``reset_before_response``, ``timeout_before_first_byte``,
    ``idle_timeout``, ``reset_mid_stream``, ``total_timeout``.
    ``committed`` is true once any byte of the body was handed on.
    """

    def __init__(self, kind: str, message: str, *, upstream: str = "", committed: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.upstream = upstream
        self.committed = committed

    @property
    def is_timeout(self) -> bool:
        return "timeout" in self.kind

    def to_reply(self) -> LocalReply:
        if self.is_timeout:
            return LocalReply(504, self.message, type="timeout_error", code=self.kind)
        return LocalReply(502, self.message, type="upstream_error", code=self.kind)
