"""The proxy handler: parse once, build the Exchange, run the onion, relay (``relay.py``).

A client that goes away cancels this task (``handler_cancellation``), which closes the upstream body
and its socket. Nothing here may raise past the handler except a cancellation: every other error
becomes an OpenAI-style 4xx/5xx.
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import Any

import orjson
from aiohttp import web

from gateway.admission import client_key
from gateway.appstate import APP_STATE, AppState
from gateway.auth import Identity
from gateway.chain import Next
from gateway.decode import DECODE_INLINE_MAX_BYTES, decode, decode_body
from gateway.embeddings_limits import check_inputs, check_tokens
from gateway.errors import LocalReply, UpstreamFailure, bad_request, error_body
from gateway.exchange import Exchange, Record, RequestFacts, Target, UpstreamResponse
from gateway.ownership import require_owned, tag_response_body
from gateway.ranges import check as check_ranges
from gateway.relay import relay
from gateway.request import body_if_whole, read_large, too_large
from gateway.response_writer import LeanResponse
from gateway.sse import StreamInspector
from gateway.telemetry.logging import REQUEST_ID
from gateway.tokens.prompt import count_prompt, loading_for_estimate

log = logging.getLogger("gateway.handler")
EXCHANGE = web.RequestKey("exchange", Exchange)  # the request's exchange, once built
OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
}
ExchangeBuilder = Callable[[float, Identity], Awaitable[Exchange]]  # (arrival, the client's identity)


def request_id_of(request: web.Request) -> str:
    rid = request.headers.get("x-request-id", "")
    if 0 < len(rid) <= 128 and rid.isascii() and rid.isprintable():
        return rid
    return f"{random.getrandbits(96):024x}"  # unique, not secret: no system call per request


def error_response(rid: str, reply: LocalReply) -> web.StreamResponse:
    """A local JSON answer, head and body written in one piece by ``gateway.response_writer``."""
    fields = {**reply.headers, "x-request-id": rid, "content-type": "application/json"}
    return LeanResponse(reply.status, fields, body=reply.body())


async def handle_api(request: web.Request) -> web.StreamResponse:
    """POST /v1/{chat/completions,completions,embeddings,responses}."""
    return await start_api(request)


def start_api(request: web.Request) -> Awaitable[web.StreamResponse]:
    """``handle_api``'s work, handing back what answers the request (``proxy``'s coroutine, or a refusal):
    the error middleware awaits it directly, so an open stream keeps no frame of ``handle_api`` (issue 21)."""
    st = request.app[APP_STATE]
    if request.method != "POST":
        rid = request_id_of(request)
        REQUEST_ID.set(rid)
        return _answered(reject(st, request, rid, method_not_allowed(request, "POST")))
    return start_post(request, st, OPERATIONS[request.path])


def start_post(request: web.Request, st: AppState, operation: str) -> Awaitable[web.StreamResponse]:
    """A ``POST`` of ``operation``: ``proxy``'s coroutine. ``gateway.dispatch`` calls it directly for the
    requests aiohttp's router would give ``handle_api``."""
    rid = request_id_of(request)
    REQUEST_ID.set(rid)
    # a partial, not a lambda: a lambda's free variables would be cells kept for a stream's life (issue 21)
    return proxy(request, st, rid, partial(build_exchange, request, st, rid, operation),
                 st.runtime.chain_for(operation))


async def _answered(response: web.StreamResponse) -> web.StreamResponse:
    return response


def rejected_exchange(request: web.Request, rid: str, now: float) -> Exchange:
    """The record of a request refused before it was parsed (bad JSON, auth, size, method, path)."""
    facts = RequestFacts(request_id=rid, method=request.method, path=request.path,
                         operation=OPERATIONS.get(request.path, "other"), headers=request.headers,
                         received_at=now, deadline=now)
    return Exchange(request=facts, target=Target(), raw_body=b"", body=None, record=Record(source="local"))


def reject(st: AppState, request: web.Request, rid: str, reply: LocalReply) -> web.StreamResponse:
    """Answer ``reply`` for a request that never reached the proxy path, and record it like any other."""
    ex = rejected_exchange(request, rid, st.clock())
    ex.record.status, ex.record.error_kind = reply.status, reply.code or reply.type
    finish(st, ex)
    return error_response(rid, reply)


def method_not_allowed(request: web.Request, allowed: str) -> LocalReply:
    return LocalReply(405, f"Method {request.method} not allowed on {request.path[:200]}; use {allowed}.",
                      code="method_not_allowed", headers={"allow": allowed})


async def proxy(request: web.Request, st: AppState, rid: str, build: ExchangeBuilder,
                call: Next | None = None) -> web.StreamResponse:
    """Run one proxied request: ``build`` parses it, ``call`` (the policy chain by default) answers it."""
    call = call or st.runtime.chain
    admitted = admit(st, request, rid)
    if isinstance(admitted, web.StreamResponse):
        return admitted
    identity, key = admitted
    reading = True
    now = st.clock()
    task = asyncio.current_task()
    if task is not None:
        st.lifecycle.active.add(task)
    ex: Exchange | None = None
    gauge: Any = None  # ``gateway_inflight_requests``'s child slot, held until the relay ends
    try:
        ex = await build(now, identity)
        del build  # its closure (request, state, id) is not kept for a stream's life
        request[EXCHANGE] = ex  # for the server's disconnect handling (``Exchange.guard``)
        st.admission.done_reading(key)
        reading = False
        gauge = _count_inflight(st, ex)
        up = await _answer(st, ex, call)
        return await relay(request, st, ex, up)  # relayed from this frame: no frame of its own (issue 21)
    except LocalReply as reply:
        if ex is None:  # refused before it became an exchange: still one record for metrics and the ledger
            ex = rejected_exchange(request, rid, now)
        return _local_error(rid, ex, reply)
    except UpstreamFailure as failure:
        return _upstream_error(rid, ex, failure)
    except asyncio.CancelledError:
        _mark_client_gone(ex)
        raise
    except Exception:
        return _internal_error(request, rid, ex)
    except BaseException as exc:  # a dependency panicked (pyo3 PanicException): a 500, never a dropped socket
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        return _internal_error(request, rid, ex)
    finally:
        if gauge is not None:
            gauge.inc(-1)
        st.admission.leave(key, reading)
        _leave(st, task)
        if ex is not None:
            _settle(st, ex)


def admit(st: AppState, request: web.Request, rid: str) -> tuple[Identity, str] | web.StreamResponse:
    """The client identified (a refused credential: 401 before anything else), once: its admission key is
    the digest its identity holds, not a second SHA-256 of its credential (issue 21). Then per-client caps
    (429), so one client's slow bodies cannot take the global slots; then ``server.max_inflight`` (503).
    Admitted: its identity and key, holding an in-flight and a reading slot; else the refusal."""
    try:
        identity = st.runtime.auth.identify(request.headers, request.query)
    except LocalReply as reply:
        return reject(st, request, rid, reply)
    key = client_key(identity, request)
    server = st.config.server
    try:
        st.admission.enter(key, server.client_max_inflight, server.client_max_reading)
    except LocalReply as reply:
        st.metrics.decision("admission", "client_limited")
        return reject(st, request, rid, reply)
    if len(st.lifecycle.active) >= server.max_inflight:
        st.admission.leave(key, still_reading=True)
        return shed(st, request, rid)
    return identity, key


def _local_error(rid: str, ex: Exchange, reply: LocalReply) -> web.StreamResponse:
    """A ``LocalReply`` raised while building or answering: recorded as a local answer and sent as is."""
    ex.record.status, ex.record.source = reply.status, "local"
    ex.record.error_kind = ex.record.error_kind or (reply.code or reply.type)
    return error_response(rid, reply)


def _upstream_error(rid: str, ex: Exchange | None, failure: UpstreamFailure) -> web.StreamResponse:
    """504 for an upstream timeout, else 502, with the headers the policies set on the exchange."""
    if ex is not None:
        ex.record.error_kind = failure.kind
        ex.record.status = 504 if failure.is_timeout else 502
    answer = failure.to_reply()
    if ex is not None:
        answer.headers.update(ex.response_headers)  # x-gateway-attempts, x-should-retry (resilience)
    return error_response(rid, answer)


def _mark_client_gone(ex: Exchange | None) -> None:
    """A cancelled handler: the client left (499) unless an answer status was already recorded."""
    if ex is not None and not ex.record.status:
        ex.record.status, ex.record.stream_outcome = 499, "client_gone"


def _internal_error(request: web.Request, rid: str, ex: Exchange | None) -> web.StreamResponse:
    """An unexpected exception (call from its ``except`` block: it is logged with its traceback): a 500."""
    log.exception("unexpected error while proxying", extra={"fields": {"path": request.path[:200]}})
    if ex is not None:
        ex.record.status, ex.record.error_kind = 500, "internal"
    return error_response(rid, LocalReply(500, "The gateway hit an internal error.", type="server_error",
                                          code="internal_error"))


def _count_inflight(st: AppState, ex: Exchange) -> Any:
    """Count ``ex`` in ``gateway_inflight_requests`` (its upstream's child, through the child's value slot:
    no ``Gauge.inc`` checks, twice per request); the slot to decrement when the relay ends, or None."""
    gauge = st.request_metrics.inflight.slot(ex.target.upstream) if st.request_metrics is not None else None
    if gauge is not None:
        gauge.inc(1)
    return gauge


async def _answer(st: AppState, ex: Exchange, call: Next) -> UpstreamResponse:
    """Call the chain; the committed answer, its request bytes let go."""
    if st.runtime.counts_prompts:  # else nobody reads every request's count: counted when asked
        await count_prompt(st, ex)  # a large prompt is counted off the loop, once
    if ex.request.operation == "embeddings":
        await check_tokens(st, ex)  # over the upstream's token limit: 400
    up = await call(ex)
    ex.drop_raw_body()  # committed: a stream can stay open for minutes, its request bytes need not
    identity = ex.request.identity
    if ex.request.operation == "responses" and identity.key is not None and up.status == 200:
        up = replace(up, body=tag_response_body(st, identity.tenant, up.body))
    return up


def shed(st: AppState, request: web.Request, rid: str) -> web.StreamResponse:
    """Over ``server.max_inflight``: 503 + Retry-After at once, before the body is read or anything queues
    (recorded like any refused request, so the 5xx shows on the dashboards)."""
    st.metrics.decision("admission", "shed")
    return reject(st, request, rid, LocalReply(
        503, "The gateway is overloaded; retry after the delay in Retry-After.", type="server_error",
        code="gateway_overloaded", headers={"retry-after": "1", "x-should-retry": "true"}))


def _leave(st: AppState, task: asyncio.Task[Any] | None) -> None:
    if task is None:
        return
    st.lifecycle.active.discard(task)
    if not st.lifecycle.active:
        st.lifecycle.idle.set()


def _settle(st: AppState, ex: Exchange) -> None:
    """``finish`` now, or once the encoding its usage estimate needs has loaded (off the loop, once)."""
    loading = loading_for_estimate(st, ex)
    if loading is None:
        finish(st, ex)
    else:
        loading.add_done_callback(lambda _loaded: finish(st, ex))


def finish(st: AppState, ex: Exchange) -> None:
    """Settle the record once (``st.finalizers``: usage, cost), then hand it to every sink, which only
    read."""
    ex.record.ended_at = st.clock()
    for step in (*st.finalizers, *st.sinks):
        try:
            step(ex)
        except Exception:
            log.exception("request finalizer or sink failed")


async def build_exchange(request: web.Request, st: AppState, rid: str, operation: str,
                         now: float, identity: Identity) -> Exchange:
    runtime = st.runtime
    cfg = runtime.config
    limit = cfg.server.max_body_bytes
    raw = body_if_whole(request, limit)  # most bodies are whole when the handler starts: no coroutine
    if raw is not None and len(raw) < DECODE_INLINE_MAX_BYTES:
        body, blobs = decode(raw, operation)  # what decode_body does for it, without its coroutine
    else:  # a large body is joined (if in pieces) and decoded in the work pool
        received = raw if raw is not None else await read_large(request, limit, st.work, identity.namespace,
                                                                   budget=st.receiving, metrics=st.metrics)
        raw, body, blobs = await decode_body(st.work, identity.namespace, received, operation)
    if operation == "responses" and identity.key is not None and body.get("previous_response_id") is not None:
        await _check_previous_response(st, identity, body["previous_response_id"])
    model: str = body["model"]
    route = runtime.router.resolve(model)
    if route is None:
        raise LocalReply(404, f"The model `{model[:256]}` does not exist or you do not have access to it.",
                         code="model_not_found", param="model")
    check_ranges(route.validate, body, st.metrics)
    upstream_cfg = cfg.upstreams[route.upstream]
    if operation == "embeddings":
        check_inputs(body, upstream_cfg.limits)
    total_s = (route.timeouts or upstream_cfg.timeouts).total_s
    facts = RequestFacts(
        request_id=rid, method="POST", path=request.path, operation=operation, headers=request.headers,
        received_at=now, deadline=now + total_s, model=model, stream=body.get("stream") is True,
        query_string=request.query_string, upstream_path=request.path[3:], identity=identity, route=route,
        route_name=route.label)
    ex = Exchange(request=facts, target=Target(upstream=route.upstream, model=route.model or model),
                  raw_body=raw, body=body, blobs=blobs, view=StreamInspector(st.clock))
    if route.model and route.model != model:
        ex.set_body({**body, "model": route.model})
    return ex


async def _check_previous_response(st: AppState, identity: Identity, previous: Any) -> None:
    """``previous_response_id`` reads a stored response of the provider account: in keys mode it must name
    a response this tenant created through the gateway (else 404, as if it did not exist)."""
    if not isinstance(previous, str):
        raise bad_request("Invalid type for 'previous_response_id': expected a string.",
                          param="previous_response_id", code="invalid_type")
    try:
        await require_owned(st, identity.tenant, [previous])
    except LocalReply as reply:
        reply.param = "previous_response_id"
        raise


def json_response(rid: str, payload: Any, status: int = 200) -> web.StreamResponse:
    return LeanResponse(status, {"x-request-id": rid, "content-type": "application/json"},
                        body=orjson.dumps(payload))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
def openai_errors(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
    """aiohttp's own HTTP errors (no route for a target such as ``*`` or ``host:port``) in the OpenAI
    shape. ``handle_api`` raises none (``proxy`` answers every error itself): what answers it is handed
    back as it is (``start_api``), so an open stream holds no frame of this middleware nor of
    ``handle_api`` (issue 21)."""
    if handler is handle_api:
        return start_api(request)
    return _openai_errors(request, handler)


async def _openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(request_id_of(request), LocalReply(
            exc.status, f"{exc.reason} ({request.method} {request.path[:200]})",
            type="invalid_request_error" if exc.status < 500 else "server_error",
            code="unknown_url" if exc.status == 404 else f"http_{exc.status}",
            headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"}))


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue``: answer 413 at once when the announced body is over the limit (the client
    never uploads it); any other expectation gets 417 in the OpenAI shape instead of aiohttp's text."""
    if request.headers.get("expect", "").lower() != "100-continue":
        return error_response(request_id_of(request),
                              LocalReply(417, "Only 'Expect: 100-continue' is supported.",
                                         code="expectation_failed"))
    limit = request.app[APP_STATE].config.server.max_body_bytes
    if request.content_length is not None and request.content_length > limit and \
            not request.headers.get("content-encoding"):
        return error_response(request_id_of(request), too_large(limit))
    if request.version == (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # as aiohttp's default handler: the real answer has not started
    return None


def not_found(rid: str, request: web.Request) -> web.StreamResponse:
    return LeanResponse(404, {"x-request-id": rid, "content-type": "application/json"},
                        body=error_body(f"Invalid URL ({request.method} {request.path[:200]})",
                                        "invalid_request_error", "unknown_url"))
