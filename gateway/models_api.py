"""GET /v1/models and /v1/models/{id}: routed models plus what upstreams list.

Upstream lists are fetched with a short timeout and remembered for a minute,
so a slow or unreachable upstream never slows the listing down for long.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiohttp import web

from gateway.appstate import APP_STATE, AppState
from gateway.errors import LocalReply
from gateway.exchange import StateKey
from gateway.handler import error_response, json_response, method_not_allowed, request_id_of

log = logging.getLogger("gateway.models")
LIST_TTL_S = 60.0
MODELS_MEMO: StateKey[dict[str, tuple[float, list[dict[str, Any]]]]] = StateKey("models.memo")  # by upstream
LIST_TIMEOUT_S = 2.0


async def handle_models(request: web.Request) -> web.StreamResponse:
    st = request.app[APP_STATE]
    rid = request_id_of(request)
    if request.method != "GET":
        return error_response(rid, method_not_allowed(request, "GET"))
    models = await list_models(st, request)
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


async def list_models(st: AppState, request: web.Request) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {m: _entry(m, "gateway") for m in st.runtime.router.advertised_models()}
    names = [n for n, cfg in st.config.upstreams.items() if cfg.list_models and n in st.upstreams]
    results = await asyncio.gather(*(_upstream_models(st, n, request) for n in names))
    for listed in results:
        for entry in listed:
            model_id = entry.get("id")
            if isinstance(model_id, str) and model_id not in seen and st.runtime.router.resolve(model_id):
                seen[model_id] = entry
    return list(seen.values())


async def _upstream_models(st: AppState, name: str, request: web.Request) -> list[dict[str, Any]]:
    memo = st.components.setdefault(MODELS_MEMO, {})
    now = st.clock()
    hit = memo.get(name)
    if hit is not None and now - hit[0] < LIST_TTL_S:
        return hit[1]
    client = st.upstreams[name]
    headers = {"Authorization": f"Bearer {client.api_key}"} if client.api_key else (
        {"Authorization": request.headers["authorization"]} if "authorization" in request.headers else {})
    listed: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(LIST_TIMEOUT_S):
            async with client.session.get(client.base_url + "/models", headers=headers,
                                          allow_redirects=False) as resp:
                if resp.status == 200:
                    data = orjson.loads(await resp.read()).get("data")
                    listed = [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []
    except Exception as exc:  # unreachable or odd upstream: list what the routes know
        log.info("upstream model list unavailable",
                 extra={"fields": {"upstream": name, "error": type(exc).__name__}})
    memo[name] = (now, listed)
    return listed
