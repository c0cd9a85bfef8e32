"""The exact cache through the real server, with the openai SDK against the fake provider."""
from __future__ import annotations

from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from gateway.mock import MockServer
from policies.cache.runtime import COMPONENT as CACHE

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}]
MSGS = [{"role": "user", "content": "tell me something about rivers"}]


def calls(mock: MockServer, path: str = "/v1/chat/completions") -> int:
    return mock.recorder.count(path)


async def final_stream(client: AsyncOpenAI, **kw: Any) -> Any:
    async with client.chat.completions.stream(**kw) as stream:
        return await stream.get_final_completion()


def same_message(a: Any, b: Any) -> None:
    ma, mb = a.choices[0].message, b.choices[0].message
    assert ma.content == mb.content
    assert [(c.id, c.function.name, c.function.arguments) for c in ma.tool_calls or []] == \
        [(c.id, c.function.name, c.function.arguments) for c in mb.tool_calls or []]
    assert a.choices[0].finish_reason == b.choices[0].finish_reason


async def test_non_stream_hit_after_miss(client: AsyncOpenAI, mock_upstream: MockServer) -> None:
    """A repeated deterministic request is answered from the cache with the original body and usage."""
    first = await client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MSGS, temperature=0
    )
    second = await client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MSGS, temperature=0
    )
    assert first.headers["x-gateway-cache"] == "miss"
    assert second.headers["x-gateway-cache"] == "hit"
    assert int(second.headers["age"]) >= 0
    a, b = first.parse(), second.parse()
    assert b.model_dump() == a.model_dump()
    assert int(second.headers["x-gateway-cache-tokens-saved"]) == a.usage.total_tokens
    assert calls(mock_upstream) == 1


@pytest.mark.parametrize("first_stream", [True, False])
async def test_hit_across_modes_text(
    client: AsyncOpenAI, mock_upstream: MockServer, first_stream: bool
) -> None:
    """An entry made in one mode serves the other mode, and the SDK reassembles the same message."""
    kw = {"model": "gpt-4o", "messages": MSGS, "temperature": 0}
    if first_stream:
        original = await final_stream(client, **kw)
        again = await client.chat.completions.create(**kw)
    else:
        original = await client.chat.completions.create(**kw)
        again = await final_stream(client, **kw)
    same_message(original, again)
    assert calls(mock_upstream) == 1


@pytest.mark.parametrize("first_stream", [True, False])
async def test_hit_across_modes_tool_calls(
    client: AsyncOpenAI, mock_upstream: MockServer, first_stream: bool
) -> None:
    """Tool calls (ids, names, arguments) and finish_reason survive a cross-mode replay exactly."""
    kw = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "use a tool"}],
        "tools": TOOLS,
        "seed": 7,
        "extra_headers": {"x-mock-tool-calls": "2"},
    }
    if first_stream:
        original = await final_stream(client, **kw)
        again = await client.chat.completions.create(**kw)
    else:
        original = await client.chat.completions.create(**kw)
        again = await final_stream(client, **kw)
    same_message(original, again)
    assert original.choices[0].finish_reason == "tool_calls"
    assert len(again.choices[0].message.tool_calls) == 2
    assert calls(mock_upstream) == 1


async def test_stream_replay_has_chunks_usage_and_done(gateway: Any, client: AsyncOpenAI) -> None:
    """A streamed hit is a real SSE stream: role delta, several content deltas, usage chunk when asked,
    [DONE]."""
    body = {"model": "gpt-4o", "messages": MSGS, "temperature": 0}
    await client.chat.completions.create(**body)
    async with aiohttp.ClientSession() as http, http.post(gateway.base_url + "/chat/completions", json={
            **body, "stream": True, "stream_options": {"include_usage": True}},
            headers={"authorization": "Bearer sk-client-secret"}) as resp:
        text = await resp.text()
    assert resp.headers["x-gateway-cache"] == "hit"
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = [e for e in text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert '"role":"assistant"' in events[0]
    assert sum('"content":"' in e for e in events[1:]) >= 3
    assert '"usage":{' in events[-2] and '"choices":[]' in events[-2]


async def test_responses_api_across_modes(client: AsyncOpenAI, mock_upstream: MockServer) -> None:
    """The Responses API is cached too: a streamed hit ends with the same final response."""
    first = await client.responses.create(model="gpt-4o", input="describe a harbor", temperature=0)
    async with client.responses.stream(model="gpt-4o", input="describe a harbor", temperature=0) as stream:
        async for _ in stream:
            pass
        again = await stream.get_final_response()
    assert again.output_text == first.output_text
    assert again.id == first.id
    assert mock_upstream.recorder.count("/v1/responses") == 1


async def test_nondeterministic_not_cached(client: AsyncOpenAI, mock_upstream: MockServer) -> None:
    """Without temperature 0 or a seed the answer is not cached (deterministic_only)."""
    for _ in range(2):
        resp = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSGS)
        assert resp.headers["x-gateway-cache"] == "bypass"
    assert calls(mock_upstream) == 2


async def test_truncated_answer_not_stored(client: AsyncOpenAI, mock_upstream: MockServer) -> None:
    """An answer cut by max_tokens (finish_reason length) is not stored unless cache_truncated."""
    for _ in range(2):
        out = await client.chat.completions.create(model="gpt-4o", messages=MSGS, temperature=0, max_tokens=3)
        assert out.choices[0].finish_reason == "length"
    assert calls(mock_upstream) == 2


async def test_truncated_answer_stored_when_allowed(make_gateway: Any, mock_upstream: MockServer) -> None:
    """With cache_truncated: true a length-limited answer is stored."""
    gw = await make_gateway(cache={"exact": {"cache_truncated": True}})
    async with AsyncOpenAI(base_url=gw.base_url, api_key="k", max_retries=0) as client:
        for _ in range(2):
            await client.chat.completions.create(model="gpt-4o", messages=MSGS, temperature=0, max_tokens=3)
    assert calls(mock_upstream) == 1


@pytest.mark.parametrize("fault", ["reset_after_chunks=3", "error_event_first"])
async def test_broken_stream_never_stored(client: AsyncOpenAI, mock_upstream: MockServer, fault: str) -> None:
    """A stream cut mid-way or ending in an error event is not stored: the next request goes upstream."""
    kw = {"model": "gpt-4o", "messages": MSGS, "temperature": 0, "stream": True}
    with pytest.raises(openai.APIError):
        stream = await client.chat.completions.create(**kw, extra_headers={"x-mock-fault": fault})
        async for _ in stream:
            pass
    healthy = await client.chat.completions.with_raw_response.create(**kw)
    assert healthy.headers["x-gateway-cache"] == "miss"


async def test_error_answer_never_stored(client: AsyncOpenAI, mock_upstream: MockServer) -> None:
    """A non-200 answer is not stored."""
    with pytest.raises(openai.APIError):
        await client.chat.completions.create(model="gpt-4o", messages=MSGS, temperature=0,
                                             extra_headers={"x-mock-fault": "status=400"})
    ok = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSGS, temperature=0)
    assert ok.headers["x-gateway-cache"] == "miss"


async def test_tenants_never_share(make_gateway: Any, mock_upstream: MockServer) -> None:
    """Two tenants (keys mode) asking the same thing each get their own entry."""
    gw = await make_gateway(
        auth={"mode": "keys", "keys": [{"key": "ka", "tenant": "a"}, {"key": "kb", "tenant": "b"}]}
    )
    results = []
    for key in ("ka", "kb", "ka", "kb"):
        async with AsyncOpenAI(base_url=gw.base_url, api_key=key, max_retries=0) as c:
            resp = await c.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=MSGS, temperature=0
            )
            results.append(resp.headers["x-gateway-cache"])
    assert results == ["miss", "miss", "hit", "hit"]
    assert calls(mock_upstream) == 2


async def test_passthrough_keys_never_share(gateway: Any, mock_upstream: MockServer) -> None:
    """In passthrough mode two different client keys never share an entry."""
    for key in ("sk-one", "sk-two"):
        async with AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0) as c:
            resp = await c.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=MSGS, temperature=0
            )
            assert resp.headers["x-gateway-cache"] == "miss"
    assert calls(mock_upstream) == 2


async def _send(client: AsyncOpenAI, headers: dict[str, str] | None = None) -> str:
    resp = await client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MSGS, temperature=0, extra_headers=headers or {}
    )
    return resp.headers["x-gateway-cache"]


async def test_control_no_store(client: AsyncOpenAI, mock_upstream: MockServer) -> None:
    """Cache-Control: no-store neither reads nor writes."""
    assert await _send(client, {"cache-control": "no-store"}) == "bypass"
    assert await _send(client) == "miss"
    assert await _send(client, {"cache-control": "no-store"}) == "bypass"
    assert calls(mock_upstream) == 3


async def test_control_no_cache_refreshes(client: AsyncOpenAI, mock_upstream: MockServer) -> None:
    """Cache-Control: no-cache skips the lookup but refreshes the entry."""
    assert await _send(client, {"cache-control": "no-cache"}) == "miss"
    assert await _send(client, {"cache-control": "no-cache"}) == "miss"
    assert await _send(client) == "hit"
    assert calls(mock_upstream) == 2


@pytest.mark.parametrize("value,first,then", [("bypass", "bypass", "miss"), ("refresh", "miss", "hit"),
                                               ("read-only", "miss", "miss")])
async def test_control_x_gateway_cache(client: AsyncOpenAI, value: str, first: str, then: str) -> None:
    """x-gateway-cache: bypass reads/writes nothing, refresh writes, read-only never writes."""
    assert await _send(client, {"x-gateway-cache": value}) == first
    assert await _send(client) == then


async def test_control_read_only_reads(client: AsyncOpenAI) -> None:
    """x-gateway-cache: read-only still reads an existing entry."""
    await _send(client)
    assert await _send(client, {"x-gateway-cache": "read-only"}) == "hit"


async def test_control_ttl_only_shortens(client: AsyncOpenAI, gateway: Any) -> None:
    """x-gateway-cache-ttl shortens the stored TTL and on reads refuses older entries; it never lengthens."""
    await _send(client, {"x-gateway-cache-ttl": "0"})
    assert await _send(client) == "miss"  # stored with ttl 0: not stored at all
    assert await _send(client, {"x-gateway-cache-ttl": "999999999"}) == "hit"
    store = gateway.state.components[CACHE].exact.memory
    (slot,) = store._slots.values()
    assert slot.expires - gateway.state.clock() <= 3600


async def test_route_override_disables_cache(make_gateway: Any, mock_upstream: MockServer) -> None:
    """A route's cache block overrides the global one."""
    gw = await make_gateway(
        routes=[{"match": {"model": "*"}, "upstream": "mock", "cache": {"exact": {"enabled": False}}}]
    )
    async with AsyncOpenAI(base_url=gw.base_url, api_key="k", max_retries=0) as c:
        for _ in range(2):
            resp = await c.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=MSGS, temperature=0
            )
            assert "x-gateway-cache" not in resp.headers
    assert calls(mock_upstream) == 2


async def test_metrics_and_record(gateway: Any, client: AsyncOpenAI) -> None:
    """Hits are counted in gateway_cache_requests_total and the exchange record says source=cache."""
    seen: list[Any] = []
    gateway.state.sinks.append(lambda ex: seen.append((ex.record.source, ex.record.cache_result,
                                                       ex.record.first_token_at > 0)))
    await _send(client)
    await _send(client)
    assert seen[-1] == ("cache", "hit", True)
    registry = gateway.state.metrics.registry
    assert registry.get_sample_value("gateway_cache_requests_total", {"kind": "exact", "result": "hit"}) == 1
    assert registry.get_sample_value("gateway_cache_entries", {"kind": "exact"}) == 1
    assert (
        registry.get_sample_value("gateway_cache_tokens_saved_total", {"kind": "exact", "model": "other"}) > 0
    )
