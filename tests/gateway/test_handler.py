"""gateway.handler against the real server: the in-flight gauge, the finalize step, refused requests."""
from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from openai import AsyncOpenAI

from gateway.exchange import Exchange, UpstreamResponse, Usage
from gateway.handler import handle_api, openai_errors
from tests.support.servers import InProcessGateway
from tests.support.until import until


def inflight(gw: InProcessGateway) -> float:
    value = gw.state.metrics.registry.get_sample_value("gateway_inflight_requests", {"upstream": "mock"})
    return value or 0.0


async def test_inflight_counts_a_stream_until_its_relay_ends(gw: InProcessGateway) -> None:
    """The core counts a request in while it is relayed (a stream until its last byte), and out after."""
    async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-c", max_retries=0,
                           default_headers={"x-mock-fault": "stall_after_chunks=2;stall_ms=400"}) as client:
        stream = await client.chat.completions.create(model="gpt-4o", stream=True,
                                                      messages=[{"role": "user", "content": "count"}])
        await stream.__anext__()
        assert inflight(gw) == 1  # positive control: it is counted while the answer flows
        async for _ in stream:
            pass
    await until(lambda: inflight(gw) == 0, timeout=5.0, message="the gauge is counted out after the stream")


async def test_an_open_stream_lets_go_of_the_request_bytes(gw: InProcessGateway) -> None:
    """Issue 21: once the answer is committed, an open stream keeps the parsed body (usage, limits,
    continuation read it) but not the client's bytes, which nothing forwards again."""
    seen: list[Exchange] = []
    sent: list[int] = []
    chain = gw.state.runtime.chain_for("chat")

    async def spy(ex: Exchange) -> UpstreamResponse:
        seen.append(ex)
        sent.append(len(ex.body_bytes()))
        return await chain(ex)

    gw.state.runtime.chains["chat"] = spy
    async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-c", max_retries=0,
                           default_headers={"x-mock-fault": "stall_after_chunks=2;stall_ms=400"}) as client:
        stream = await client.chat.completions.create(model="gpt-4o", stream=True,
                                                      messages=[{"role": "user", "content": "count"}])
        await stream.__anext__()
        assert sent[0] > 0  # positive control: the bytes were there for the upstream call
        ex = seen[0]
        assert ex.raw_body == b"" and ex.body is not None and ex.body["messages"][0]["content"] == "count"
        async for _ in stream:
            pass


async def test_sinks_see_the_settled_record(gw: InProcessGateway) -> None:
    """Finalizers settle usage and cost before any sink runs, so every sink reads the same figures."""
    seen: list[tuple[Usage | None, Usage | None]] = []

    def sink(ex: Exchange) -> None:
        seen.append((ex.record.usage, ex.record.reported_usage))

    gw.state.sinks.insert(0, sink)  # first in the list: it still sees the settled record
    async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-c", max_retries=0) as client:
        answer = await client.chat.completions.create(model="gpt-4o",
                                                      messages=[{"role": "user", "content": "hi"}])
    await until(lambda: bool(seen), timeout=5.0)
    usage, reported = seen[0]
    assert usage is not None and reported is not None and answer.usage is not None
    assert usage.prompt == answer.usage.prompt_tokens and usage.completion == answer.usage.completion_tokens


async def test_a_refused_request_is_recorded_once(gw: InProcessGateway) -> None:
    seen: list[Exchange] = []
    gw.state.sinks.append(seen.append)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gw.base_url}/chat/completions", data=b"{not json") as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["type"] == "invalid_request_error"
    await until(lambda: len(seen) == 1, timeout=5.0)
    assert seen[0].record.status == 400 and seen[0].record.source == "local"


def _awaiting(task: asyncio.Task[Any]) -> list[str]:
    """The names of the coroutines (and async generators) a task is suspended in, outermost first."""
    names: list[str] = []
    frame: Any = task.get_coro()
    while frame is not None:
        names.append(getattr(frame, "__qualname__", type(frame).__name__))
        frame = getattr(frame, "cr_await", None) or getattr(frame, "ag_await", None)
    return names


async def test_an_open_stream_waits_in_no_frame_of_the_middleware_or_a_helper(gw: InProcessGateway) -> None:
    """Issue 21: an idle stream holds one coroutine per level it waits in; the error middleware awaits
    ``proxy`` without a frame of its own or of ``handle_api``, and ``proxy`` relays from its own frame
    (no ``_run`` between)."""
    async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-c", max_retries=0,
                           default_headers={"x-mock-fault": "stall_after_chunks=2;stall_ms=2000"}) as client:
        stream = await client.chat.completions.create(model="gpt-4o", stream=True,
                                                      messages=[{"role": "user", "content": "count"}])
        await stream.__anext__()
        (task,) = gw.state.lifecycle.active
        names = _awaiting(task)
        assert {"proxy", "relay"} <= set(names)  # control: the chain is walked to the relay
        assert not {"openai_errors", "_openai_errors", "handle_api", "_run"} & set(names)
        await stream.close()


async def test_the_error_middleware_still_wraps_the_other_handlers(gw: InProcessGateway) -> None:
    """The control: any other handler runs inside the middleware's coroutine (its HTTP errors in JSON)."""
    async def other(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMethodNotAllowed("PUT", ["GET"])

    request = make_mocked_request("PUT", "/healthz")
    wrapped = openai_errors(request, other)
    assert getattr(wrapped, "__qualname__", "") == "_openai_errors"
    resp = await wrapped
    assert resp.status == 405 and resp.content_type == "application/json"
    get = make_mocked_request("GET", "/v1/chat/completions", app=gw.app)
    refused = await openai_errors(get, handle_api)  # the API handler's own answers, without its frame
    assert refused.status == 405 and refused.headers["allow"] == "POST"
