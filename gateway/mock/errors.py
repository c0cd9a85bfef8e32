"""OpenAI-shaped error bodies for the mock upstream.

The gateway's retry/fallback logic classifies upstream failures by status *and*
by the OpenAI error body, so the mock must produce the same shapes (and roughly
the same `type`/`code` values) that the real API does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

# status -> (type, code, message); modelled on what api.openai.com returns.
_STATUS_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", "not_found", "Not found."),
    408: ("timeout", "timeout", "Request timed out."),
    409: ("invalid_request_error", "conflict", "Conflict."),
    413: ("invalid_request_error", "request_too_large", "Request too large."),
    422: ("invalid_request_error", "unprocessable_entity", "Unprocessable entity."),
    429: (
        "rate_limit_exceeded",
        "rate_limit_exceeded",
        "Rate limit reached for requests. Please try again later.",
    ),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", "bad_gateway", "Bad gateway."),
    503: (
        "server_error",
        "service_unavailable",
        "The engine is currently overloaded, please try again later.",
    ),
    504: ("server_error", "timeout", "Gateway timeout."),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenAIError:
    """One error in the `{"error": {...}}` envelope used by every OpenAI endpoint."""

    message: str
    type: str
    code: str | None = None
    param: str | None = None

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


class MockHTTPError(Exception):
    """Raised by handlers to answer with an OpenAI-shaped error and a given status."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        base = error_for_status(status)
        self.error = OpenAIError(message=message, type=base.type, code=code or base.code, param=param)


def error_for_status(status: int, message: str | None = None) -> OpenAIError:
    """Realistic error body for an injected status, so clients classify it like the real API."""
    etype, code, default_msg = _STATUS_ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, f"Mock error {status}.")
    )
    return OpenAIError(message=message or default_msg, type=etype, code=code)


def json_response(payload: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """orjson-encoded JSON response (aiohttp's json_response uses the slower stdlib)."""
    return web.Response(
        body=orjson.dumps(payload), status=status, headers=headers, content_type="application/json"
    )


def error_response(status: int, error: OpenAIError, headers: dict[str, str] | None = None) -> web.Response:
    return json_response(error.body(), status=status, headers=headers)
