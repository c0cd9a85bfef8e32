"""gateway.dispatch on the real server: the API operations skip aiohttp's router and middleware chain, every
other request still takes them (404/405/417 and 100-continue unchanged)."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.web_urldispatcher import UrlDispatcher
from openai import AsyncOpenAI

from gateway.dispatch import API_ROUTES
from gateway.handler import OPERATIONS
from tests.support.servers import InProcessGateway


@pytest.fixture
def resolved(monkeypatch: pytest.MonkeyPatch) -> list[tuple[UrlDispatcher, str]]:
    """The paths aiohttp's routers resolved, each with its router (the fake provider runs in this process
    too): ``resolve`` wrapped for the test."""
    seen: list[tuple[UrlDispatcher, str]] = []
    resolve: Callable[[UrlDispatcher, web.Request], Awaitable[Any]] = UrlDispatcher.resolve

    async def counting(self: UrlDispatcher, request: web.Request) -> Any:
        seen.append((self, request.path))
        return await resolve(self, request)

    monkeypatch.setattr(UrlDispatcher, "resolve", counting)
    return seen


def gateway_resolved(gw: InProcessGateway, seen: list[tuple[UrlDispatcher, str]]) -> list[str]:
    return [path for router, path in seen if router is gw.app.router]


async def test_an_api_call_is_answered_without_the_router(gw: InProcessGateway,
                                                          resolved: list[tuple[UrlDispatcher, str]]) -> None:
    async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-c", max_retries=0) as client:
        answer = await client.chat.completions.create(model="gpt-4o",
                                                      messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content
        stream = await client.chat.completions.create(model="gpt-4o", stream=True,
                                                      messages=[{"role": "user", "content": "count"}])
        assert [chunk async for chunk in stream]
        models = await client.models.list()  # the control: another route goes through the router
        assert models.data
    assert gateway_resolved(gw, resolved) == ["/v1/models"]


async def test_the_others_keep_the_routers_answers(gw: InProcessGateway,
                                                   resolved: list[tuple[UrlDispatcher, str]]) -> None:
    """Another method on an API path (405), an encoded path the router does not match literally, and
    ``Expect: 100-continue`` (answered by the route's expect handler) all go through the router as before."""
    url = f"{gw.url}/v1/chat/completions"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            assert resp.status == 405 and resp.headers["allow"] == "POST"
            assert (await resp.json())["error"]["code"] == "method_not_allowed"
        async with session.post(f"{gw.url}/v1/chat%2Fcompletions", json={"model": "gpt-4o"}) as resp:
            assert resp.status != 200
        chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(url, json=chat, expect100=True) as resp:
            assert resp.status == 200 and (await resp.json())["choices"]
    assert gateway_resolved(gw, resolved) == ["/v1/chat/completions", "/v1/chat/completions",
                                              "/v1/chat/completions"]


async def test_every_operation_has_a_frozen_match_of_its_route(gw: InProcessGateway) -> None:
    """What a dispatched request's ``match_info`` says is what the router would have said."""
    routes = gw.app[API_ROUTES]
    assert {path: route.operation for path, route in routes.items()} == OPERATIONS
    for path, route in routes.items():
        match = route.match
        assert match.route.resource is not None and match.route.resource.canonical == path
        assert match.current_app is gw.app and match.apps == (gw.app,)
        with pytest.raises(RuntimeError):
            match.add_app(gw.app)  # frozen: shared by every request of the path
