"""The mock OpenAI-compatible upstream: app factory, request pipeline and server helpers.

Every non-control request goes through one pipeline: record the attempt, pick
the fault (scripted FIFO entry layered under the `x-mock-fault` header), apply
pre-response faults, enforce the provider quota, then run the endpoint.  All
state lives on the aiohttp app (`app[STATE_KEY]`), so several mocks can run in
one process (e.g. primary and fallback providers in a test).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Self

import orjson
from aiohttp import web

from .chat import chat_request_tokens, handle_chat
from .completions import completions_request_tokens, handle_completions
from .config import MockConfig
from .context import RequestContext, parse_header_int
from .control import handle_control
from .embeddings import embeddings_request_tokens, handle_embeddings
from .errors import MockHTTPError, error_for_status, error_response
from .faults import NO_FAULT, FaultQueue, FaultSpec, parse_fault_spec
from .fixtures import DEFAULT_DIR, HEADER, replay_fixture
from .models import handle_echo, handle_get_model, handle_list_models
from .quota import SlidingWindowQuota, retry_after_headers
from .recorder import (
    BAD_REQUEST,
    CLIENT_DISCONNECTED,
    COMPLETED,
    ERROR,
    NOT_FOUND,
    QUOTA_429,
    Attempt,
    Recorder,
)
from .responses_api import handle_responses, responses_request_tokens
from .stream import abort_connection, send_error_event_first

__all__ = ["STATE_KEY", "MockConfig", "MockServer", "MockState", "build_mock_app", "run_mock", "start_mock"]

log = logging.getLogger(__name__)

CLIENT_MAX_SIZE = 64 * 1024 * 1024
DEFAULT_REDIRECT_LOCATION = "http://127.0.0.1:1/elsewhere"
_RESET_BEFORE_HEADERS = "fault:reset_before_headers"
# The CLI server may serve benchmarks for hours: keep recent attempts only.
RUN_MOCK_MAX_RECORDED = 10_000


@dataclass(slots=True, kw_only=True)
class MockState:
    """Everything mutable about one mock instance (stored on its aiohttp app)."""

    cfg: MockConfig
    recorder: Recorder
    faults: FaultQueue
    quota: SlidingWindowQuota
    seen_models: set[str] = field(default_factory=set)
    prompt_cache: set[bytes] = field(default_factory=set)  # message-prefix digests (prompt_cache_min_tokens)
    rng: random.Random = field(default_factory=random.Random)  # seeded from cfg.seed (make_app)


STATE_KEY = web.AppKey("gateway_mock_state", MockState)


@dataclass(frozen=True, slots=True)
class _Endpoint:
    handler: Callable[[RequestContext], Awaitable[web.StreamResponse]]
    request_tokens: Callable[[Any, int], int]  # quota cost estimate (prompt + max completion)


_MODEL_ENDPOINTS: Mapping[str, _Endpoint] = MappingProxyType(
    {
        "/v1/chat/completions": _Endpoint(handle_chat, chat_request_tokens),
        "/v1/completions": _Endpoint(handle_completions, completions_request_tokens),
        "/v1/embeddings": _Endpoint(handle_embeddings, embeddings_request_tokens),
        "/v1/responses": _Endpoint(handle_responses, responses_request_tokens),
    }
)


def build_mock_app(
    cfg: MockConfig, *, clock: Callable[[], float] | None = None, max_recorded: int | None = None
) -> web.Application:
    """Create the mock app; `clock` (monotonic seconds, default time.monotonic) drives the quota window.

    `max_recorded` keeps only the newest attempts in memory (for long-running servers).
    Serve it with `handler_cancellation=True` (as start_mock/run_mock do) so client
    disconnects cancel the handler and are recorded as `client_disconnected`.
    """
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    app[STATE_KEY] = MockState(
        cfg=cfg,
        recorder=Recorder(max_recorded),
        faults=FaultQueue(),
        quota=SlidingWindowQuota(clock or time.monotonic, cfg.advertised_rpm, cfg.advertised_tpm),
        rng=random.Random(cfg.seed),
    )
    app.router.add_route("*", "/{tail:.*}", _dispatch)
    app.on_response_prepare.append(_add_standard_headers)
    return app


async def _add_standard_headers(request: web.Request, response: web.StreamResponse) -> None:
    """x-request-id everywhere; OpenAI `x-ratelimit-*` headers on 2xx and 429 answers."""
    if request.path.startswith("/_mock/"):
        return
    response.headers.setdefault("x-request-id", "req_" + secrets.token_hex(16))
    if 200 <= response.status < 300 or response.status == 429:
        for name, value in request.app[STATE_KEY].quota.headers().items():
            response.headers.setdefault(name, value)


async def _dispatch(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    if request.path.startswith("/_mock/"):
        return await handle_control(request, state)
    attempt = await _record(request, state.recorder)
    try:
        resp, outcome = await _serve(request, state, attempt)
    except asyncio.CancelledError:
        state.recorder.finish(attempt, CLIENT_DISCONNECTED)
        raise
    except ConnectionResetError:
        state.recorder.finish(attempt, CLIENT_DISCONNECTED)
        return web.Response(status=499)  # the client is gone; nothing will be sent
    except Exception:
        log.exception("mock upstream handler failed for %s %s", request.method, request.path)
        state.recorder.finish(attempt, ERROR, 500)
        return error_response(500, error_for_status(500))
    status = None if outcome == _RESET_BEFORE_HEADERS else resp.status
    state.recorder.finish(attempt, outcome, status)
    return resp


async def _record(request: web.Request, recorder: Recorder) -> Attempt:
    body = await request.read()
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return recorder.record(
        method=request.method,
        path=request.path,
        query={k: v for k, v in request.query.items()},
        headers=headers,
        body=body,
        json=parsed,
    )


async def _serve(request: web.Request, state: MockState, attempt: Attempt) -> tuple[web.StreamResponse, str]:
    try:
        ctx = _make_context(request, state, attempt)
        early = await _apply_pre_faults(ctx)
        if early is not None:
            return early
        fixture = request.headers.get(HEADER)
        if fixture:
            directory = Path(state.cfg.fixtures_dir) if state.cfg.fixtures_dir else DEFAULT_DIR
            return await replay_fixture(ctx, directory, fixture), COMPLETED
        return await _route(ctx, state)
    except MockHTTPError as exc:
        return error_response(exc.status, exc.error), NOT_FOUND if exc.status == 404 else BAD_REQUEST


def _make_context(request: web.Request, state: MockState, attempt: Attempt) -> RequestContext:
    """Resolve the x-mock-* knobs; headers are validated before a scripted fault is consumed."""
    body = attempt.json
    header_spec = request.headers.get("x-mock-fault")
    try:
        override = parse_fault_spec(header_spec) if header_spec else NO_FAULT
    except ValueError as exc:
        raise MockHTTPError(400, f"invalid x-mock-fault header: {exc}") from None
    header_tokens = parse_header_int(request.headers, "x-mock-tokens", minimum=1)
    tool_calls_header = parse_header_int(request.headers, "x-mock-tool-calls", minimum=0)
    scripted = state.faults.take(
        path=request.path,
        method=request.method,
        model=attempt.model,
        stream=isinstance(body, dict) and body.get("stream") is True,
    )
    fault: FaultSpec = (scripted or NO_FAULT).merged(override)
    attempt.fault = fault.describe() or None
    return RequestContext(
        request=request,
        prompt_cache=state.prompt_cache,
        rng=state.rng,
        cfg=state.cfg,
        recorder=state.recorder,
        attempt=attempt,
        fault=fault,
        body=body,
        header_tokens=header_tokens,
        tool_calls_header=tool_calls_header,
        no_usage=request.headers.get("x-mock-no-usage", "").lower() in ("1", "true", "yes"),
    )


async def _apply_pre_faults(ctx: RequestContext) -> tuple[web.StreamResponse, str] | None:
    """Faults that act before (or instead of) the normal answer, in wire order."""
    fault = ctx.fault
    if fault.stall_before_first_byte_ms:
        await asyncio.sleep(fault.stall_before_first_byte_ms / 1000.0)
    if fault.reset_before_headers:
        await abort_connection(ctx, outcome=_RESET_BEFORE_HEADERS, rst=True)
        return web.Response(status=499), _RESET_BEFORE_HEADERS  # never reaches the client
    if fault.redirect is not None:
        location = fault.location or DEFAULT_REDIRECT_LOCATION
        return web.Response(status=fault.redirect, headers={"Location": location}), "fault:redirect"
    if fault.status is not None:
        return _status_fault_response(fault), "fault:status"
    if fault.error_event_first and ctx.wants_stream():
        event_name = "error" if ctx.request.path == "/v1/responses" else None
        return await send_error_event_first(ctx, event_name=event_name), "fault:error_event_first"
    return None


def _status_fault_response(fault: FaultSpec) -> web.Response:
    assert fault.status is not None
    headers: dict[str, str] = {}
    if fault.retry_after is not None:
        ra = fault.retry_after
        headers["Retry-After"] = str(int(ra)) if float(ra).is_integer() else str(ra)
    if fault.retry_after_ms is not None:
        headers["retry-after-ms"] = str(fault.retry_after_ms)
    error = error_for_status(fault.status)
    if fault.error_code is not None:
        error = dataclasses.replace(error, code=fault.error_code, message=_CODE_MESSAGES.get(
            fault.error_code, error.message))
    return error_response(fault.status, error, headers)


_CODE_MESSAGES = {
    "context_length_exceeded": "This model's maximum context length is 8192 tokens. However, your messages "
                               "resulted in 9000 tokens. Please reduce the length of the messages.",
    "content_filter": "The response was filtered due to the prompt triggering content management policy.",
}


async def _route(ctx: RequestContext, state: MockState) -> tuple[web.StreamResponse, str]:
    method, path = ctx.request.method, ctx.request.path
    endpoint = _MODEL_ENDPOINTS.get(path) if method == "POST" else None
    if endpoint is not None:
        body = ctx.json_body()
        if isinstance(body.get("model"), str):
            state.seen_models.add(body["model"])
        decision = state.quota.admit(endpoint.request_tokens(body, state.cfg.default_tokens))
        if not decision.allowed:
            message = f"Rate limit reached for {decision.reason} (mock quota). Please try again later."
            limited = error_response(
                429, error_for_status(429, message), retry_after_headers(decision.retry_after_s)
            )
            return limited, QUOTA_429
        resp = await endpoint.handler(ctx)
        return resp, ctx.success_outcome
    if method == "GET" and path == "/v1/models":
        return await handle_list_models(ctx, state.seen_models), COMPLETED
    if method == "GET" and path.startswith("/v1/models/"):
        return await handle_get_model(ctx, state.seen_models), COMPLETED
    return await handle_echo(ctx), COMPLETED


@dataclass(slots=True, kw_only=True)
class MockServer:
    """A running mock; `url` is the OpenAI base URL (ends in /v1)."""

    url: str
    port: int
    app: web.Application
    runner: web.AppRunner

    @property
    def state(self) -> MockState:
        return self.app[STATE_KEY]

    @property
    def recorder(self) -> Recorder:
        return self.app[STATE_KEY].recorder

    @property
    def base_url(self) -> str:
        """Root URL without /v1 (for control endpoints and echo routes)."""
        return self.url.removesuffix("/v1")

    async def close(self) -> None:
        await self.runner.cleanup()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def start_mock(
    cfg: MockConfig, host: str = "127.0.0.1", port: int = 0, *, clock: Callable[[], float] | None = None
) -> MockServer:
    """Start the mock on a real socket (port 0 = ephemeral) inside the running loop."""
    app = build_mock_app(cfg, clock=clock)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    actual_port = int(runner.addresses[0][1])
    url_host = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
    return MockServer(url=f"http://{url_host}:{actual_port}/v1", port=actual_port, app=app, runner=runner)


def run_mock(cfg: MockConfig, host: str, port: int) -> None:
    """Blocking server for `gateway mock-upstream`; uses uvloop when it is installed."""
    loop: asyncio.AbstractEventLoop | None = None
    try:
        import uvloop
    except ImportError:
        pass
    else:
        loop = uvloop.new_event_loop()
    web.run_app(
        build_mock_app(cfg, max_recorded=RUN_MOCK_MAX_RECORDED),
        host=host,
        port=port,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=1.0,
        loop=loop,
    )
