"""The core proxy end to end: the openai SDK through the real gateway to the fake provider."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from openai import AsyncOpenAI

from gateway.mock import MockServer
from tests.support.servers import InProcessGateway, gateway_config, start_gateway
from tests.support.until import until

CHAT = [{"role": "user", "content": "Tell me about sidecars"}]


async def test_non_stream_chat_matches_direct(client: AsyncOpenAI, direct: AsyncOpenAI) -> None:
    """A non-streamed answer through the gateway has the same content as from the provider directly."""
    via = await client.chat.completions.create(model="gpt-4o", messages=CHAT)
    raw = await direct.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert via.choices[0].message.content == raw.choices[0].message.content
    assert via.choices[0].message.content
    assert via.usage is not None and via.usage.total_tokens == raw.usage.total_tokens  # type: ignore[union-attr]


async def test_stream_chat_matches_direct(client: AsyncOpenAI, direct: AsyncOpenAI) -> None:
    """Streamed deltas through the gateway concatenate to the provider's answer."""
    async def collect(c: AsyncOpenAI) -> tuple[str, list[str | None]]:
        stream = await c.chat.completions.create(model="gpt-4o", messages=CHAT, stream=True)
        text, reasons = "", []
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                reasons.append(chunk.choices[0].finish_reason)
        return text, reasons

    via, raw = await collect(client), await collect(direct)
    assert via == raw and via[0] and via[1][-1] == "stop"


async def test_tool_call_deltas_reassemble(client: AsyncOpenAI) -> None:
    """Tool-call argument pieces arrive intact and join into valid JSON."""
    tools = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
    stream = await client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "use a tool"}], tools=tools, stream=True,
        tool_choice="required")
    name, args, pieces, finish = "", "", 0, None
    async for chunk in stream:
        if not chunk.choices:
            continue
        for call in chunk.choices[0].delta.tool_calls or []:
            name += call.function.name or "" if call.function else ""
            if call.function and call.function.arguments:
                args += call.function.arguments
                pieces += 1
        finish = chunk.choices[0].finish_reason or finish
    assert name == "search" and finish == "tool_calls" and pieces > 1
    assert isinstance(json.loads(args), dict)


async def test_embeddings_completions_models(client: AsyncOpenAI, direct: AsyncOpenAI) -> None:
    """Embeddings (base64 via the SDK), completions and model listing work through the gateway."""
    emb = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    raw = await direct.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert [e.embedding for e in emb.data] == [e.embedding for e in raw.data]
    comp = await client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi")
    assert comp.choices[0].text
    models = await client.models.list()
    assert "gpt-4o" in {m.id for m in models.data}
    assert (await client.models.retrieve("gpt-4o")).id == "gpt-4o"


async def test_responses_api_stream_and_not(client: AsyncOpenAI, direct: AsyncOpenAI) -> None:
    """The Responses API works in both modes and gives the provider's text."""
    via = await client.responses.create(model="gpt-4o", input="hello there")
    raw = await direct.responses.create(model="gpt-4o", input="hello there")
    assert via.output_text == raw.output_text and via.output_text
    text = ""
    async with client.responses.stream(model="gpt-4o", input="hello there") as stream:
        async for event in stream:
            if event.type == "response.output_text.delta":
                text += event.delta
        final = await stream.get_final_response()
    assert text == raw.output_text == final.output_text


async def test_first_chunk_arrives_while_provider_holds_the_rest(gateway: InProcessGateway,
                                                                 mock_upstream: MockServer) -> None:
    """Streaming is not buffered: the first content chunk arrives while the provider is still stalled."""
    async with AsyncOpenAI(base_url=gateway.base_url, api_key="k", max_retries=0,
                           default_headers={"x-mock-fault": "stall_after_chunks=3;stall_ms=20000"}) as c:
        stream = await c.chat.completions.create(model="gpt-4o", messages=CHAT, stream=True)
        got_content = False
        async with asyncio.timeout(10):
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    got_content = True
                    break
        assert got_content
        assert mock_upstream.recorder.attempts[-1].outcome not in ("completed",)
        await stream.close()


async def _wait_outcome(mock: MockServer, outcome: str, within_s: float) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    await until(lambda: mock.recorder.attempts[-1].outcome == outcome, timeout=within_s,
                message=f"upstream attempt outcome {outcome!r}")
    return loop.time() - start


async def test_client_disconnect_cancels_upstream(gateway: InProcessGateway,
                                                  mock_upstream: MockServer) -> None:
    """Closing the client mid-stream makes the provider see the disconnect within 1 s."""
    async with aiohttp.ClientSession() as session:
        resp = await session.post(gateway.base_url + "/chat/completions",
                                  json={"model": "gpt-4o", "messages": CHAT, "stream": True},
                                  headers={"x-mock-fault": "stall_after_chunks=2;stall_ms=30000"})
        await resp.content.readline()
        resp.close()
    assert await _wait_outcome(mock_upstream, "client_disconnected",
                               5.0) < 2.0  # typically ~ms; 1 s promise, slack for a loaded CI


async def test_mid_stream_reset_ends_with_error_event(gateway: InProcessGateway) -> None:
    """An upstream reset mid-stream ends the client's stream with an error event and no [DONE]."""
    async with aiohttp.ClientSession() as session:
        async with session.post(gateway.base_url + "/chat/completions",
                                json={"model": "gpt-4o", "messages": CHAT, "stream": True},
                                headers={"x-mock-fault": "reset_after_chunks=3"}) as resp:
            assert resp.status == 200
            body = (await resp.read()).decode()
    events = [e for e in body.split("\n\n") if e.strip()]
    assert "[DONE]" not in body
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["error"]["code"] == "reset_mid_stream"
    assert len(events) == 4


async def test_upstream_key_replaces_client_key(client: AsyncOpenAI, mock_upstream: MockServer) -> None:
    """With an upstream api_key, the client's key never reaches the provider."""
    await client.chat.completions.create(model="gpt-4o", messages=CHAT)
    headers = mock_upstream.recorder.attempts[-1].headers
    assert headers["authorization"] == "Bearer sk-upstream-secret"
    assert "sk-client-secret" not in json.dumps(headers)


async def test_client_key_forwarded_when_upstream_has_none(make_gateway,
                                                           mock_upstream: MockServer) -> None:  # type: ignore[no-untyped-def]
    """Without an upstream key, the client's Authorization is forwarded (passthrough auth)."""
    gw = await make_gateway(upstreams={"mock": {"base_url": mock_upstream.url}})
    async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-own", max_retries=0) as c:
        await c.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert mock_upstream.recorder.attempts[-1].headers["authorization"] == "Bearer sk-own"


async def test_hop_by_hop_headers_stripped(gateway: InProcessGateway, mock_upstream: MockServer) -> None:
    """Connection-named and hop-by-hop request headers never reach the provider."""
    async with aiohttp.ClientSession() as session:
        async with session.post(gateway.base_url + "/chat/completions",
                                json={"model": "gpt-4o", "messages": CHAT},
                                headers={"Connection": "keep-alive, X-Hop-Secret", "X-Hop-Secret": "1",
                                         "Proxy-Authorization": "Basic eA==", "TE": "trailers",
                                         "X-Kept": "yes"}) as resp:
            assert resp.status == 200
            assert "keep-alive" not in {k.lower() for k in resp.headers if k.lower() == "keep-alive"}
    headers = mock_upstream.recorder.attempts[-1].headers
    assert headers.get("x-kept") == "yes"
    for name in ("x-hop-secret", "proxy-authorization", "te"):
        assert name not in headers


async def test_redirect_is_not_followed(gateway: InProcessGateway, mock_upstream: MockServer) -> None:
    """A 302 from the provider becomes a 502; the Location is never fetched."""
    async with aiohttp.ClientSession() as session:
        async with session.post(gateway.base_url + "/chat/completions",
                                json={"model": "gpt-4o", "messages": CHAT},
                                headers={"x-mock-fault": "redirect=302"}, allow_redirects=False) as resp:
            assert resp.status == 502
            assert (await resp.json())["error"]["code"] == "upstream_redirect"
    assert len(mock_upstream.recorder.attempts) == 1


async def test_request_id_and_upstream_headers(gateway: InProcessGateway) -> None:
    """x-request-id is echoed (or made) and x-gateway-upstream names the upstream."""
    async with aiohttp.ClientSession() as session:
        body = {"model": "gpt-4o", "messages": CHAT}
        async with session.post(gateway.base_url + "/chat/completions", json=body,
                                headers={"x-request-id": "req-123"}) as resp:
            assert resp.headers["x-request-id"] == "req-123"
            assert resp.headers["x-gateway-upstream"] == "mock"
        async with session.post(gateway.base_url + "/chat/completions", json=body) as resp:
            assert len(resp.headers["x-request-id"]) >= 16


async def test_upstream_4xx_passes_through_unchanged(gateway: InProcessGateway) -> None:
    """A provider 400 reaches the client with its status and body."""
    async with aiohttp.ClientSession() as session:
        async with session.post(gateway.base_url + "/chat/completions",
                                json={"model": "gpt-4o", "messages": CHAT},
                                headers={"x-mock-fault": "status=400"}) as resp:
            assert resp.status == 400
            body = await resp.json()
            assert "error" in body


async def test_unreachable_upstream_is_502_and_stall_is_504(mock_upstream: MockServer) -> None:
    """Connection refused answers 502; no first byte within first_byte_s answers 504."""
    from tests.support.servers import free_port

    dead = await start_gateway(gateway_config(f"http://127.0.0.1:{free_port()}/v1"), env={})
    slow = await start_gateway(gateway_config(mock_upstream.url, upstreams={"mock": {
        "base_url": mock_upstream.url, "timeouts": {"first_byte_s": 0.3}}}), env={})
    try:
        async with aiohttp.ClientSession() as session:
            body = {"model": "gpt-4o", "messages": CHAT}
            async with session.post(dead.base_url + "/chat/completions", json=body) as resp:
                assert resp.status == 502
                assert (await resp.json())["error"]["code"] == "connect_error"
            async with session.post(slow.base_url + "/chat/completions", json=body,
                                    headers={"x-mock-fault": "stall_before_first_byte_ms=5000"}) as resp:
                assert resp.status == 504
                assert (await resp.json())["error"]["type"] == "timeout_error"
    finally:
        await dead.close()
        await slow.close()


async def test_health_and_readiness(gateway: InProcessGateway) -> None:
    """/healthz and /readyz answer 200 while serving."""
    async with aiohttp.ClientSession() as session:
        for path in ("/healthz", "/readyz"):
            async with session.get(gateway.url + path) as resp:
                assert resp.status == 200


@pytest.mark.parametrize("passthrough", [False, True])
async def test_other_paths_404_or_passthrough(make_gateway, mock_upstream: MockServer,
                                              passthrough: bool) -> None:  # type: ignore[no-untyped-def]
    """Unknown paths are 404 in the OpenAI shape, unless passthrough forwards them unchanged."""
    gw = await make_gateway(passthrough=passthrough)
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.base_url + "/files?limit=2") as resp:
            body = await resp.json()
            if passthrough:
                assert (
                    resp.status == 200 and body["path"].endswith("/files") and body["query"] == {"limit": "2"}
                )
            else:
                assert resp.status == 404 and body["error"]["type"] == "invalid_request_error"
