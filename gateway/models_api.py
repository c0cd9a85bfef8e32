"""GET /v1/models and /v1/models/{id}: routed models plus what upstreams list.

Upstream lists are fetched with a short timeout and remembered for a minute, so a slow or
unreachable upstream never slows the listing down for long. A list is remembered per upstream *and*
per credential hash (the upstream's own key, or the client's when it is forwarded), so a list fetched
with one client's key is never served to another; concurrent refreshes of one list share one fetch.
In keys mode the listing needs a valid key like every other ``/v1`` endpoint.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiohttp import web

from gateway.appstate import APP_STATE, AppState
from gateway.auth import CREDENTIAL_HEADERS, Identity
from gateway.errors import LocalReply
from gateway.exchange import StateKey
from gateway.handler import error_response, json_response, method_not_allowed, request_id_of

log = logging.getLogger("gateway.models")
LIST_TTL_S = 60.0
LIST_TIMEOUT_S = 2.0
MEMO_MAX_ENTRIES = 1024
Listed = list[dict[str, Any]]


class ModelLists:
    """Upstream lists by (upstream, credential hash), and the fetches in flight (one per key)."""

    def __init__(self) -> None:
        self.memo: dict[tuple[str, str], tuple[float, Listed]] = {}
        self.inflight: dict[tuple[str, str], asyncio.Future[Listed]] = {}

    def remember(self, key: tuple[str, str], now: float, listed: Listed) -> None:
        if len(self.memo) >= MEMO_MAX_ENTRIES:
            self.memo = {k: v for k, v in self.memo.items() if now - v[0] < LIST_TTL_S}
            if len(self.memo) >= MEMO_MAX_ENTRIES:
                self.memo.clear()
        self.memo[key] = (now, listed)


MODELS_MEMO: StateKey[ModelLists] = StateKey("models.memo")


async def handle_models(request: web.Request) -> web.StreamResponse:
    st = request.app[APP_STATE]
    rid = request_id_of(request)
    if request.method != "GET":
        return error_response(rid, method_not_allowed(request, "GET"))
    try:
        identity = st.runtime.auth.identify(request.headers, request.query)
    except LocalReply as reply:
        st.metrics.decision("models", "unauthenticated")
        return error_response(rid, reply)
    models = await list_models(st, request, identity)
    model_id = request.match_info.get("model_id")
    if model_id is None:
        return json_response(rid, {"object": "list", "data": models})
    for entry in models:
        if entry["id"] == model_id:
            return json_response(rid, entry)
    if st.runtime.router.resolve(model_id) is not None:
        return json_response(rid, _entry(model_id, "gateway"))
    return error_response(rid, LocalReply(404, f"The model '{model_id[:256]}' does not exist",
                                          code="model_not_found", param="model"))


def _entry(model_id: str, owner: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owner}


async def list_models(st: AppState, request: web.Request, identity: Identity) -> Listed:
    seen: dict[str, dict[str, Any]] = {m: _entry(m, "gateway") for m in st.runtime.router.advertised_models()}
    names = [n for n, cfg in st.config.upstreams.items() if cfg.list_models and n in st.upstreams]
    results = await asyncio.gather(*(_upstream_models(st, n, request, identity) for n in names))
    for listed in results:
        for entry in listed:
            model_id = entry.get("id")
            if isinstance(model_id, str) and model_id not in seen and st.runtime.router.resolve(model_id):
                seen[model_id] = entry
    return list(seen.values())


def _credentials(
    st: AppState, name: str, request: web.Request, identity: Identity
) -> tuple[dict[str, str], str]:
    """Headers for the list call and the credential hash its answer is remembered under."""
    client = st.upstreams[name]
    if client.api_key:
        return {"Authorization": f"Bearer {client.api_key}"}, ""
    if identity.key is not None and not client.forward_client_key:
        return {}, ""  # keys mode: the tenant's gateway key never leaves (check-config refuses this config)
    headers = {h: request.headers[h] for h in CREDENTIAL_HEADERS if h in request.headers}
    return headers, identity.key_hash


async def _upstream_models(st: AppState, name: str, request: web.Request, identity: Identity) -> Listed:
    lists = st.components.ensure(MODELS_MEMO, ModelLists)
    headers, cred = _credentials(st, name, request, identity)
    key = (name, cred)
    now = st.clock()
    hit = lists.memo.get(key)
    if hit is not None and now - hit[0] < LIST_TTL_S:
        return hit[1]
    pending = lists.inflight.get(key)
    if pending is not None:
        st.metrics.decision("models", "coalesced")
        return await asyncio.shield(pending)
    future: asyncio.Future[Listed] = asyncio.get_running_loop().create_future()
    lists.inflight[key] = future
    try:
        listed = await _fetch(st, name, headers)
        lists.remember(key, now, listed)
        future.set_result(listed)
    finally:
        lists.inflight.pop(key, None)
        if not future.done():
            future.set_result([])  # the fetching request was cancelled: followers list what the routes know
    return listed


async def _fetch(st: AppState, name: str, headers: dict[str, str]) -> Listed:
    client = st.upstreams[name]
    listed: Listed = []
    try:
        async with asyncio.timeout(LIST_TIMEOUT_S):
            async with client.session.get(
                client.base_url + "/models", headers=headers, allow_redirects=False
            ) as resp:
                if resp.status == 200:
                    data = orjson.loads(await resp.read()).get("data")
                    listed = [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []
    except Exception as exc:  # unreachable or odd upstream: list what the routes know
        log.info(
            "upstream model list unavailable",
            extra={"fields": {"upstream": name, "error": type(exc).__name__}},
        )
    return listed
