"""`GET /v1/models[/{id}]` and the catch-all echo endpoint.

The echo endpoint lets the gateway's tool-provider routes (`/tools/...`,
`/quotes/...`) be tested against the same mock without a second server.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web

from .context import RequestContext
from .errors import MockHTTPError, json_response

KNOWN_MODELS: tuple[str, ...] = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "o3-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
)
_CREATED = 1715367049


def _model_object(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": _CREATED, "owned_by": "mock"}


def _all_models(seen: Iterable[str]) -> list[str]:
    extra = sorted(m for m in seen if m not in KNOWN_MODELS)
    return [*KNOWN_MODELS, *extra]


async def handle_list_models(ctx: RequestContext, seen: Iterable[str]) -> web.StreamResponse:
    return json_response({"object": "list", "data": [_model_object(m) for m in _all_models(seen)]})


async def handle_get_model(ctx: RequestContext, seen: Iterable[str]) -> web.StreamResponse:
    model_id = ctx.request.path.removeprefix("/v1/models/")
    if model_id not in _all_models(seen):
        raise MockHTTPError(
            404,
            f"The model '{model_id}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    return json_response(_model_object(model_id))


async def handle_echo(ctx: RequestContext) -> web.StreamResponse:
    """200 with what was received; the body is parsed JSON when possible, else text."""
    body: Any = ctx.body
    if body is None and ctx.attempt.body:
        body = ctx.attempt.body.decode("utf-8", "replace")
    return json_response(
        {"method": ctx.request.method, "path": ctx.request.path, "query": ctx.attempt.query, "body": body}
    )
