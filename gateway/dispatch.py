"""The hot API operations dispatched without aiohttp's router and middleware chain (issue 21).

aiohttp's server hands every parsed request to ``Application._handle``: an awaited ``UrlDispatcher.resolve``
(a walk of the path's prefixes, a match-info object per request), the ``Expect`` check, a cached lookup of
the middleware chain, then two middleware levels (``openai_errors`` and aiohttp's own
``_fix_request_current_app``) before the handler. For ``POST`` on the four API paths without ``Expect``
none of that decides anything: the route, its handler and its answers are known. ``dispatcher`` is the
server's request handler (installed by ``gateway.server.GatewayRunner``): such a request gets its route's
match info, built once per application and frozen, and goes straight to ``start_post``; every other request
(another method or path, ``Expect: 100-continue``, a target the router would not match literally) takes
aiohttp's path unchanged, so 404/405/417 and their OpenAI shapes stay where they are.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import hdrs, web
from aiohttp.web_urldispatcher import AbstractRoute, UrlMappingMatchInfo

from gateway.appstate import APP_STATE
from gateway.handler import start_post

RequestHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiRoute:
    """One API path: its operation and the match info the router would have built for it."""

    operation: str
    match: UrlMappingMatchInfo


API_ROUTES = web.AppKey("api_routes", dict[str, ApiRoute])


def api_route(app: web.Application, route: AbstractRoute, operation: str) -> ApiRoute:
    """``route``'s match info as ``Application._handle`` leaves it (the app added, frozen), built once: it
    holds no per-request data (a plain path has no match groups), so every request may share it."""
    match = UrlMappingMatchInfo({}, route)
    match.add_app(app)
    match.freeze()
    return ApiRoute(operation=operation, match=match)


def dispatcher(app: web.Application, fallback: RequestHandler) -> RequestHandler:
    """The server's request handler for ``app`` (started: its state exists): the API operations directly,
    the rest through ``fallback`` (``app._handle``). Matched on ``rel_url.path_safe``, as the router
    matches a plain resource, so exactly the requests the router would give ``handle_api`` come here."""
    routes = app[API_ROUTES]
    st = app[APP_STATE]

    def dispatch(request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        # isinstance: the application's request factory makes a web.Request (one C call; typing.cast would
        # be a Python function call per request)
        if (request.method == "POST" and isinstance(request, web.Request)
                and hdrs.EXPECT not in request.headers):
            route = routes.get(request.rel_url.path_safe)
            if route is not None:
                request._match_info = route.match
                return start_post(request, st, route.operation)
        return fallback(request)

    return dispatch
