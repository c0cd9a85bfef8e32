"""Control endpoints under `/_mock/` (never recorded, never faulted).

They let out-of-process users (the demo, benchmarks, e2e tests driving a
separately started `gateway mock-upstream`) script faults, set provider quotas
and inspect what the gateway sent, with the same power in-process tests get
from `MockServer.recorder` / `MockServer.state`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from .errors import OpenAIError, error_response, json_response
from .faults import scripted_fault_from_json
from .quota import QuotaLimits

if TYPE_CHECKING:
    from .app import MockState

ControlHandler = Callable[[web.Request, "MockState"], Awaitable[web.StreamResponse]]


def _bad(message: str, status: int = 400) -> web.Response:
    return error_response(status, OpenAIError(message=message, type="invalid_request_error"))


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        return None
    return orjson.loads(raw)


async def add_faults(request: web.Request, state: MockState) -> web.StreamResponse:
    try:
        payload = await _read_json(request)
        entries = payload.get("faults") if isinstance(payload, dict) and "faults" in payload else [payload]
        if not isinstance(entries, list):
            raise TypeError("'faults' must be a list")
        parsed = [scripted_fault_from_json(e) for e in entries]
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        return _bad(f"invalid faults: {exc}")
    state.faults.extend(parsed)
    return json_response({"queued": len(state.faults)})


async def clear_faults(request: web.Request, state: MockState) -> web.StreamResponse:
    state.faults.clear()
    return json_response({"queued": 0})


async def list_faults(request: web.Request, state: MockState) -> web.StreamResponse:
    return json_response({"faults": state.faults.snapshot()})


async def list_requests(request: web.Request, state: MockState) -> web.StreamResponse:
    path = request.query.get("path")
    attempts = [a.to_json() for a in state.recorder.attempts if path is None or a.path == path]
    return json_response({"requests": attempts})


async def clear_requests(request: web.Request, state: MockState) -> web.StreamResponse:
    state.recorder.clear()
    return json_response({"cleared": True})


async def stats(request: web.Request, state: MockState) -> web.StreamResponse:
    return json_response(
        {**state.recorder.stats(), "faults_queued": len(state.faults), "quota": state.quota.usage()}
    )


async def set_quota(request: web.Request, state: MockState) -> web.StreamResponse:
    try:
        payload = await _read_json(request) or {}
    except orjson.JSONDecodeError as exc:
        return _bad(f"invalid JSON: {exc}")
    if not isinstance(payload, dict) or set(payload) - {"rpm", "tpm"}:
        return _bad("quota body may only contain 'rpm' and 'tpm'")
    for key in ("rpm", "tpm"):
        value = payload.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            return _bad(f"'{key}' must be a non-negative integer or null")
    state.quota.configure(QuotaLimits(rpm=payload.get("rpm"), tpm=payload.get("tpm")))
    return json_response(state.quota.usage())


async def reset_quota(request: web.Request, state: MockState) -> web.StreamResponse:
    state.quota.configure(QuotaLimits())
    return json_response(state.quota.usage())


async def get_quota(request: web.Request, state: MockState) -> web.StreamResponse:
    return json_response(state.quota.usage())


async def health(request: web.Request, state: MockState) -> web.StreamResponse:
    return json_response({"status": "ok"})


CONTROL_ROUTES: Mapping[tuple[str, str], ControlHandler] = MappingProxyType(
    {
        ("POST", "/_mock/faults"): add_faults,
        ("DELETE", "/_mock/faults"): clear_faults,
        ("GET", "/_mock/faults"): list_faults,
        ("GET", "/_mock/requests"): list_requests,
        ("DELETE", "/_mock/requests"): clear_requests,
        ("GET", "/_mock/stats"): stats,
        ("POST", "/_mock/quota"): set_quota,
        ("DELETE", "/_mock/quota"): reset_quota,
        ("GET", "/_mock/quota"): get_quota,
        ("GET", "/_mock/health"): health,
    }
)


async def handle_control(request: web.Request, state: MockState) -> web.StreamResponse:
    handler = CONTROL_ROUTES.get((request.method, request.path))
    if handler is None:
        return _bad(f"unknown control endpoint {request.method} {request.path}", status=404)
    return await handler(request, state)
