"""Paths the gateway does not model: 404 in the OpenAI shape, or, with
``passthrough: true``, forwarded unchanged to the first upstream (files,
batches, fine-tuning...). Passthrough requests skip the policies: they are not
chat traffic, so caching, budgets and token limits do not apply to them. In keys mode the stateful
endpoints (``config_model.STATEFUL_ENDPOINTS``) answer 403 unless the key lists the family in
``auth.keys[].passthrough``."""
from __future__ import annotations

from dataclasses import replace
from functools import partial

from aiohttp import web

from gateway.appstate import APP_STATE, AppState
from gateway.auth import Identity
from gateway.body import OneChunk, close_quietly
from gateway.components import MCP_HANDLER, TOOL_HANDLER
from gateway.config_model import STATEFUL_ENDPOINTS
from gateway.errors import LocalReply
from gateway.exchange import Exchange, RequestFacts, Target, UpstreamResponse
from gateway.handler import proxy, reject, request_id_of
from gateway.ownership import filter_listing, object_ids, require_owned, tag_created_id
from gateway.paths import safe_subpath
from gateway.request import read_body
from gateway.telemetry.logging import REQUEST_ID

MAX_SCOPED_BYTES = 16 * 1024 * 1024


async def handle_other(request: web.Request) -> web.StreamResponse:
    st = request.app[APP_STATE]
    rid = request_id_of(request)
    REQUEST_ID.set(rid)
    tool_handler = st.components.get(TOOL_HANDLER)
    if tool_handler is not None and request.path.startswith("/tools/"):
        return await tool_handler(request, rid)
    mcp_handler = st.components.get(MCP_HANDLER)
    if mcp_handler is not None and request.path.startswith("/mcp/"):
        return await mcp_handler(request, rid)
    if st.config.passthrough and request.path.startswith("/v1/") and st.upstreams:
        return await proxy(request, st, rid, partial(_build, request, st, rid), _send_direct(st))  # no cells
    return reject(st, request, rid, LocalReply(404, f"Invalid URL ({request.method} {request.path[:200]})",
                                               code="unknown_url"))


async def _build(request: web.Request, st: AppState, rid: str, now: float, identity: Identity) -> Exchange:
    cfg = st.config
    upstream = next(iter(cfg.upstreams))
    if _check_grant(st, identity, request.path):
        await require_owned(st, identity.tenant, object_ids(request.path))
    raw = await read_body(request, cfg.server.max_body_bytes, work=st.work, tenant=identity.namespace)
    facts = RequestFacts(
        request_id=rid, method=request.method, path=request.path, operation="passthrough",
        headers=request.headers, received_at=now, deadline=now + cfg.upstreams[upstream].timeouts.total_s,
        route_name="passthrough", identity=identity,
        # The raw path, refused when it has dot segments or encoded slashes: request.path is decoded, and
        # "/v1/..%2F..%2Fadmin" would leave the upstream's base path (base_url + "/../../admin").
        query_string=request.query_string, upstream_path=safe_subpath(request.rel_url.raw_path[3:]))
    return Exchange(request=facts, target=Target(upstream=upstream), raw_body=raw, body=None)


def _check_grant(st: AppState, identity: Identity, path: str) -> bool:
    """Keys mode: stateful provider endpoints hold the provider account's objects, which every tenant would
    share (list, read, delete) through the gateway's key; only tenants granted the family reach them."""
    family = path[4:].split("/", 1)[0]
    if identity.key is None or family not in STATEFUL_ENDPOINTS:
        return False
    if family in identity.key.passthrough:
        st.metrics.decision("passthrough", "granted_stateful")
        return True  # a tenant's own objects only (gateway/ownership.py)
    st.metrics.decision("passthrough", "refused_stateful")
    raise LocalReply(
        403,
        f"The /v1/{family} endpoints are not enabled for this key.",
        type="permission_error",
        code="endpoint_not_granted",
    )


def _send_direct(st: AppState):  # type: ignore[no-untyped-def]
    async def send(ex: Exchange):  # type: ignore[no-untyped-def]
        resp = await st.upstreams[ex.target.upstream].send(ex)
        identity = ex.request.identity
        if identity.key is None or ex.request.path[4:].split("/", 1)[0] not in STATEFUL_ENDPOINTS:
            return resp
        return await _scoped(st, ex, resp, identity.tenant)

    return send


async def _scoped(st: AppState, ex: Exchange, resp: UpstreamResponse, tenant: str) -> UpstreamResponse:
    """A granted tenant's answer: created objects tagged, collection listings cut to its own objects."""
    listing = ex.request.method == "GET" and not object_ids(ex.request.path)
    if (
        not 200 <= resp.status < 300
        or not (listing or ex.request.method == "POST")
        or "json" not in resp.headers.get("content-type", "")
    ):
        return resp
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in resp.body:
            size += len(chunk)
            if size > MAX_SCOPED_BYTES:
                raise LocalReply(
                    502,
                    "The provider's answer is too large to scope to a tenant.",
                    type="upstream_error",
                    code="answer_too_large",
                )
            chunks.append(chunk)
    finally:
        await close_quietly(resp.body)
    data = b"".join(chunks)
    if listing:
        data = await filter_listing(st, tenant, data)
    else:
        tag_created_id(st, tenant, data)
    headers = {k: v for k, v in resp.headers.items() if k != "content-length"}
    return replace(resp, headers=headers, body=OneChunk(data))
