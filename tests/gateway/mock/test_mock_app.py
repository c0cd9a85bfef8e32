"""The mock upstream behaves like OpenAI for the official SDK, and its faults/quota/recording work.

Everything runs over real loopback sockets: the mock is what the gateway's
resilience tests trust, so it is itself tested end to end.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from gateway.mock import MockConfig, MockServer, parse_fault_spec, start_mock
from gateway.mock.quota import format_duration

pytestmark = pytest.mark.asyncio

CHAT = [{"role": "user", "content": "Tell me something about rivers."}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
            },
        },
    },
    {"type": "function", "function": {"name": "get_weather", "parameters": {}}},
]


class FakeClock:
    """Injected quota clock: tests move time instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture
async def server() -> AsyncIterator[MockServer]:
    srv = await start_mock(MockConfig(seed=7))
    try:
        yield srv
    finally:
        await srv.close()


@pytest_asyncio.fixture
async def client(server: MockServer) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=server.url, api_key="x", max_retries=0) as c:
        yield c


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def read_sse(resp: aiohttp.ClientResponse) -> tuple[list[str], Exception | None]:
    """Data payloads of an SSE response, plus the error that cut it short (if any)."""
    data: list[str] = []
    try:
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                data.append(line.removeprefix("data: "))
    except aiohttp.ClientPayloadError as exc:
        return data, exc
    return data, None


async def read_event(resp: aiohttp.ClientResponse) -> bytes:
    """One SSE frame (up to and including its blank line)."""
    frame = b""
    while (line := await resp.content.readline()) not in (b"\n", b""):
        frame += line
    return frame


async def post(
    http: aiohttp.ClientSession, server: MockServer, path: str, body: Any, **headers: str
) -> aiohttp.ClientResponse:
    return await http.post(server.url + path, json=body, headers=headers)


# --- chat -----------------------------------------------------------------------


async def test_chat_non_stream_shape_and_usage(client: AsyncOpenAI, server: MockServer) -> None:
    resp = await client.chat.completions.create(model="my-model", messages=CHAT)
    assert resp.id.startswith("chatcmpl-")
    assert resp.model == "my-model"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].message.role == "assistant"
    content = resp.choices[0].message.content or ""
    assert len(content.split(" ")) == 16
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 16
    assert resp.usage.prompt_tokens == len(CHAT[0]["content"]) // 4 + 4
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 16
    assert resp.usage.prompt_tokens_details.cached_tokens == 0
    assert resp.usage.completion_tokens_details.reasoning_tokens == 0
    attempt = server.recorder.attempts[-1]
    assert (attempt.outcome, attempt.status, attempt.json["model"]) == ("completed", 200, "my-model")


async def test_stream_matches_non_stream_and_usage_only_when_asked(client: AsyncOpenAI) -> None:
    full = await client.chat.completions.create(model="gpt-4o", messages=CHAT)
    stream = await client.chat.completions.create(model="gpt-4o", messages=CHAT, stream=True)
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].object == "chat.completion.chunk"
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == full.choices[0].message.content
    )
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)

    stream = await client.chat.completions.create(
        model="gpt-4o", messages=CHAT, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == full.usage.total_tokens  # type: ignore[union-attr]


async def test_stream_raw_wire_format(http: aiohttp.ClientSession, server: MockServer) -> None:
    body = {"model": "gpt-4o", "messages": CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with await post(http, server, "/chat/completions", body) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert int(resp.headers["x-ratelimit-limit-requests"]) > 0
        data, err = await read_sse(resp)
    assert err is None and data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 16
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all(c["choices"][0]["logprobs"] is None for c in chunks[:-1])
    # OpenAI's padding, on by default: a string of varying length on every delta chunk, not on usage
    pads = [c["obfuscation"] for c in chunks[:-1]]
    assert all(isinstance(p, str) and p for p in pads) and len({len(p) for p in pads}) > 3
    assert "obfuscation" not in chunks[-1] and list(chunks[0])[-1] == "obfuscation"


async def test_stream_padding_can_be_turned_off(http: aiohttp.ClientSession, server: MockServer) -> None:
    body = {"model": "gpt-4o", "messages": CHAT, "stream": True,
            "stream_options": {"include_obfuscation": False}}
    async with await post(http, server, "/chat/completions", body) as resp:
        data, err = await read_sse(resp)
    assert err is None and len(data) > 3
    assert not any("obfuscation" in json.loads(d) for d in data[:-1])


async def test_finish_reason_length_and_token_headers(client: AsyncOpenAI) -> None:
    resp = await client.chat.completions.create(model="gpt-4o", messages=CHAT, max_tokens=3)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 3
    stream = await client.chat.completions.create(
        model="gpt-4o", messages=CHAT, max_completion_tokens=4, stream=True
    )
    chunks = [c async for c in stream]
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 4
    assert chunks[-1].choices[0].finish_reason == "length"
    # x-mock-tokens shortens the answer (finish stop); x-mock-no-usage drops usage.
    resp = await client.chat.completions.create(
        model="gpt-4o",
        messages=CHAT,
        max_tokens=50,
        extra_headers={"x-mock-tokens": "5", "x-mock-no-usage": "1"},
    )
    assert resp.choices[0].finish_reason == "stop"
    assert len((resp.choices[0].message.content or "").split(" ")) == 5
    assert resp.usage is None


async def test_determinism_by_seed_and_prompt() -> None:
    async def answer(seed: int, prompt: str) -> str:
        srv = await start_mock(MockConfig(seed=seed))
        async with srv, AsyncOpenAI(base_url=srv.url, api_key="x", max_retries=0) as c:
            r = await c.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}])
            return r.choices[0].message.content or ""

    assert await answer(1, "hello") == await answer(1, "hello")
    assert await answer(1, "hello") != await answer(2, "hello")
    assert await answer(1, "hello") != await answer(1, "goodbye")


# --- tool calls -----------------------------------------------------------------


async def test_tool_call_stream_reassembles_to_non_stream(client: AsyncOpenAI) -> None:
    kwargs: dict[str, Any] = {"model": "gpt-4o", "messages": CHAT, "tools": TOOLS}
    headers = {"x-mock-tool-calls": "2"}
    full = await client.chat.completions.create(**kwargs, extra_headers=headers)
    assert full.choices[0].finish_reason == "tool_calls"
    assert full.choices[0].message.content is None
    calls = full.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["search", "search"]  # type: ignore[union-attr]

    stream = await client.chat.completions.create(**kwargs, stream=True, extra_headers=headers)
    chunks = [c async for c in stream]
    args: dict[int, str] = {}
    deltas_per_call: dict[int, int] = {}
    for chunk in chunks:
        for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if tc.id is not None:
                assert tc.type == "function" and tc.function and tc.function.name == "search"
            else:
                assert tc.function is not None and tc.function.name is None
            args[tc.index] = args.get(tc.index, "") + (tc.function.arguments or "" if tc.function else "")
            deltas_per_call[tc.index] = deltas_per_call.get(tc.index, 0) + 1
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert all(n >= 3 for n in deltas_per_call.values())  # arguments really arrive split
    for i, call in enumerate(calls):
        parsed = json.loads(args[i])
        assert set(parsed) == {"query", "limit"} and isinstance(parsed["limit"], int)
        assert args[i] == call.function.arguments  # type: ignore[union-attr]
    assert full.usage is not None and full.usage.completion_tokens == sum(deltas_per_call.values()) - 2


async def test_tool_call_triggers(client: AsyncOpenAI) -> None:
    async def calls(messages: list[dict[str, Any]], **kw: Any) -> list[str]:
        r = await client.chat.completions.create(model="gpt-4o", messages=messages, tools=TOOLS, **kw)
        return [c.function.name for c in r.choices[0].message.tool_calls or []]  # type: ignore[union-attr]

    assert await calls(CHAT) == []  # auto, no trigger -> text
    assert await calls([{"role": "user", "content": "please use a tool"}]) == ["search"]
    assert await calls(CHAT, tool_choice="required") == ["search"]
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert await calls(CHAT, tool_choice=named) == ["get_weather"]
    assert await calls([{"role": "user", "content": "tool"}], tool_choice="none") == []


# --- completions, embeddings, responses, models, echo ---------------------------


async def test_completions(client: AsyncOpenAI) -> None:
    resp = await client.completions.create(model="gpt-3.5-turbo-instruct", prompt=["a", "b"], max_tokens=4)
    assert resp.object == "text_completion"
    assert [c.index for c in resp.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in resp.choices)
    assert resp.usage is not None and resp.usage.completion_tokens == 8
    stream = await client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="a", max_tokens=4, stream=True
    )
    text = "".join([c.choices[0].text async for c in stream if c.choices])
    assert text == resp.choices[0].text


async def test_embeddings_float_base64_and_stability(
    client: AsyncOpenAI, http: aiohttp.ClientSession, server: MockServer
) -> None:
    default = await client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
    floats = await client.embeddings.create(
        model="text-embedding-3-small", input=["beta", "alpha"], encoding_format="float"
    )
    assert len(default.data[0].embedding) == 1536
    assert default.data[0].embedding == floats.data[1].embedding  # same input, other position
    assert default.data[1].embedding == floats.data[0].embedding
    assert default.data[0].embedding != default.data[1].embedding
    assert math.isclose(math.fsum(v * v for v in default.data[0].embedding), 1.0, rel_tol=1e-5)
    assert default.usage.prompt_tokens == default.usage.total_tokens > 0
    assert server.recorder.attempts[0].json["encoding_format"] == "base64"  # the SDK's default

    body = {"model": "text-embedding-3-large", "input": "alpha", "dimensions": 8, "encoding_format": "base64"}
    async with await post(http, server, "/embeddings", body) as resp:
        raw = (await resp.json())["data"][0]["embedding"]
    vec = struct.unpack("<8f", base64.b64decode(raw))
    assert math.isclose(math.fsum(v * v for v in vec), 1.0, rel_tol=1e-5)
    large = await client.embeddings.create(model="text-embedding-3-large", input="x", encoding_format="float")
    assert len(large.data[0].embedding) == 3072


async def test_responses_non_stream_and_stream(client: AsyncOpenAI) -> None:
    resp = await client.responses.create(model="gpt-4o", input="Say something", instructions="Be brief")
    assert resp.status == "completed" and resp.output_text
    assert resp.usage is not None and resp.usage.output_tokens == 16
    assert resp.usage.total_tokens == resp.usage.input_tokens + 16
    stream = await client.responses.create(
        model="gpt-4o", input="Say something", instructions="Be brief", stream=True
    )
    events = [e async for e in stream]
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert deltas == final.output_text == resp.output_text
    items = [{"role": "user", "content": [{"type": "input_text", "text": "use the tool"}]}]
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}]
    called = await client.responses.create(model="gpt-4o", input=items, tools=tools)  # type: ignore[arg-type]
    assert called.output[0].type == "function_call" and called.output[0].name == "lookup"


async def test_responses_raw_events_have_event_lines(http: aiohttp.ClientSession, server: MockServer) -> None:
    body = {"model": "gpt-4o", "input": "hi", "stream": True, "max_output_tokens": 3}
    async with await post(http, server, "/responses", body) as resp:
        text = (await resp.read()).decode()
    frames = [f for f in text.split("\n\n") if f]
    for frame in frames:
        event_line, data_line = frame.split("\n")
        assert event_line.removeprefix("event: ") == json.loads(data_line.removeprefix("data: "))["type"]
    last = json.loads(frames[-1].split("\n")[1].removeprefix("data: "))
    assert last["type"] == "response.incomplete"  # max_output_tokens reached, like OpenAI
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


async def test_models_and_404(client: AsyncOpenAI) -> None:
    await client.chat.completions.create(model="custom-model", messages=CHAT)
    ids = [m.id async for m in client.models.list()]
    assert {"gpt-4o", "gpt-4o-mini", "text-embedding-3-small", "custom-model"} <= set(ids)
    assert (await client.models.retrieve("gpt-4o")).id == "gpt-4o"
    with pytest.raises(openai.NotFoundError) as info:
        await client.models.retrieve("nope")
    assert info.value.body["code"] == "model_not_found"  # type: ignore[index]


async def test_echo_and_bad_json(http: aiohttp.ClientSession, server: MockServer) -> None:
    async with http.post(server.base_url + "/tools/weather?city=Oslo", json={"unit": "C"}) as resp:
        assert resp.status == 200
        assert await resp.json() == {
            "method": "POST",
            "path": "/tools/weather",
            "query": {"city": "Oslo"},
            "body": {"unit": "C"},
        }
    async with http.get(server.base_url + "/quotes/abc") as resp:
        assert (await resp.json())["method"] == "GET"
    async with http.post(server.url + "/chat/completions", data=b"{not json") as resp:
        assert resp.status == 400
        err = (await resp.json())["error"]
        assert set(err) == {"message", "type", "code", "param"} and err["type"] == "invalid_request_error"
    assert server.recorder.attempts[-1].outcome == "bad_request"


# --- faults -----------------------------------------------------------------------


async def test_status_fault_with_retry_after(
    http: aiohttp.ClientSession, server: MockServer, client: AsyncOpenAI
) -> None:
    fault = "status=503;retry_after=2;retry_after_ms=1500"
    async with await post(
        http, server, "/chat/completions", {"model": "m", "messages": CHAT}, **{"x-mock-fault": fault}
    ) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "2" and resp.headers["retry-after-ms"] == "1500"
        assert (await resp.json())["error"]["type"] == "server_error"
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(
            model="m", messages=CHAT, extra_headers={"x-mock-fault": "status=429"}
        )
    assert info.value.body["type"] == "rate_limit_exceeded"  # type: ignore[index]
    assert [a.outcome for a in server.recorder.attempts] == ["fault:status", "fault:status"]
    assert server.recorder.attempts[0].fault == fault


async def test_reset_before_headers(client: AsyncOpenAI, server: MockServer) -> None:
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(
            model="m", messages=CHAT, extra_headers={"x-mock-fault": "reset_before_headers"}
        )
    attempt = server.recorder.attempts[-1]
    assert attempt.outcome == "fault:reset_before_headers" and attempt.status is None
    ok = await client.chat.completions.create(model="m", messages=CHAT)  # the mock keeps serving
    assert ok.choices[0].message.content


async def test_reset_after_chunks_delivers_exactly_n(http: aiohttp.ClientSession, server: MockServer) -> None:
    body = {"model": "m", "messages": CHAT, "stream": True}
    async with await post(
        http, server, "/chat/completions", body, **{"x-mock-fault": "reset_after_chunks=3"}
    ) as r:
        data, err = await read_sse(r)
    assert len(data) == 3 and err is not None
    assert server.recorder.attempts[-1].outcome == "fault:reset_after_chunks"
    assert server.recorder.attempts[-1].events_sent == 3


async def test_error_event_first(
    client: AsyncOpenAI, http: aiohttp.ClientSession, server: MockServer
) -> None:
    headers = {"x-mock-fault": "error_event_first"}
    async with await post(
        http, server, "/chat/completions", {"model": "m", "messages": CHAT, "stream": True}, **headers
    ) as resp:
        assert resp.status == 200
        data, err = await read_sse(resp)
    assert err is None and len(data) == 1 and "error" in json.loads(data[0])
    stream = await client.chat.completions.create(
        model="m", messages=CHAT, stream=True, extra_headers=headers
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    assert server.recorder.attempts[-1].outcome == "fault:error_event_first"


async def test_redirect_not_followed(http: aiohttp.ClientSession, server: MockServer) -> None:
    async with http.post(
        server.url + "/chat/completions",
        json={"model": "m", "messages": CHAT},
        headers={"x-mock-fault": "redirect=302"},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "http://127.0.0.1:1/elsewhere"


async def test_malformed_sse_line_is_sent_and_sdk_survives(
    client: AsyncOpenAI, http: aiohttp.ClientSession, server: MockServer
) -> None:
    body = {"model": "m", "messages": CHAT, "stream": True}
    async with await post(
        http, server, "/chat/completions", body, **{"x-mock-fault": "malformed_sse"}
    ) as resp:
        text = (await resp.read()).decode()
    assert "this is not an sse line" in text and text.endswith("data: [DONE]\n\n")
    assert server.recorder.attempts[-1].outcome == "fault:malformed_sse"
    headers = {"x-mock-fault": "malformed_sse"}
    stream = await client.chat.completions.create(
        model="m", messages=CHAT, stream=True, extra_headers=headers
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    full = await client.chat.completions.create(model="m", messages=CHAT)
    assert text == full.choices[0].message.content  # the SDK skips the garbage line


async def test_stall_and_pacing_faults(http: aiohttp.ClientSession, server: MockServer) -> None:
    loop = asyncio.get_running_loop()
    body = {"model": "m", "messages": CHAT, "stream": True}
    fault = "stall_after_chunks=2;stall_ms=250"
    async with await post(http, server, "/chat/completions", body, **{"x-mock-fault": fault}) as resp:
        await read_event(resp)
        await read_event(resp)
        t0 = loop.time()
        await read_event(resp)  # the third event waits for the stall
        assert loop.time() - t0 >= 0.2
        await resp.read()
    t0 = loop.time()
    async with await post(
        http, server, "/chat/completions", {"model": "m", "messages": CHAT}, **{"x-mock-fault": "ttft_ms=150"}
    ) as resp:
        await resp.read()
    assert loop.time() - t0 >= 0.14


async def test_client_disconnect_is_recorded_while_streaming(
    http: aiohttp.ClientSession, server: MockServer
) -> None:
    body = {"model": "m", "messages": CHAT, "stream": True}
    resp = await post(http, server, "/chat/completions", body, **{"x-mock-fault": "tokens_per_s=5"})
    first = await read_event(resp)
    assert b'"role":"assistant"' in first
    attempt = server.recorder.attempts[-1]
    assert attempt.outcome is None  # the mock is still holding the rest of the stream
    resp.close()
    await server.recorder.wait_for(lambda: attempt.outcome is not None, timeout_s=3)
    assert attempt.outcome == "client_disconnected"


async def test_control_fifo_times_and_match(
    http: aiohttp.ClientSession, server: MockServer, client: AsyncOpenAI
) -> None:
    faults = {
        "faults": [
            {
                "fault": "status=503;retry_after=1",
                "times": 2,
                "match": {"path": "/v1/chat/completions", "model": "gpt-4o"},
            },
            {"fault": "status=500", "times": 1},
        ]
    }
    async with http.post(server.base_url + "/_mock/faults", json=faults) as resp:
        assert (await resp.json())["queued"] == 2

    async def status(model: str) -> int:
        try:
            await client.chat.completions.create(model=model, messages=CHAT)
        except openai.APIStatusError as exc:
            return exc.status_code
        return 200

    assert await status("gpt-4o-mini") == 500  # only the unmatched entry applies
    assert [await status("gpt-4o") for _ in range(3)] == [503, 503, 200]
    async with http.post(
        server.base_url + "/_mock/faults", json={"fault": "stall_before_first_byte_ms=120", "times": -1}
    ) as resp:
        assert resp.status == 200
    loop = asyncio.get_running_loop()
    for _ in range(2):
        t0 = loop.time()
        assert await status("gpt-4o") == 200
        assert loop.time() - t0 >= 0.1
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(model="m", messages=CHAT, timeout=0.03)
    await server.recorder.wait_for(lambda: server.recorder.attempts[-1].outcome is not None)
    assert server.recorder.attempts[-1].outcome == "client_disconnected"
    async with http.delete(server.base_url + "/_mock/faults") as resp:
        assert resp.status == 200
    assert await status("gpt-4o") == 200
    async with http.post(server.base_url + "/_mock/faults", json={"fault": "bogus=1"}) as resp:
        assert resp.status == 400


async def test_recording_and_control_endpoints(http: aiohttp.ClientSession, server: MockServer) -> None:
    async with http.post(
        server.url + "/chat/completions",
        json={"model": "m", "messages": CHAT},
        headers={"X-Custom": "v", "x-mock-fault": "status=502"},
    ) as resp:
        assert resp.status == 502
    big = {"model": "m", "input": "x" * (70 * 1024)}
    async with http.post(server.url + "/embeddings", json=big) as resp:
        assert resp.status == 200
    assert server.recorder.count() == 2 and server.recorder.count("/v1/embeddings") == 1
    first = server.recorder.attempts[0]
    assert first.headers["x-custom"] == "v" and first.json["model"] == "m" and first.fault == "status=502"
    async with http.get(server.base_url + "/_mock/requests") as resp:
        listed = (await resp.json())["requests"]
    assert listed[0]["json"]["messages"] == CHAT and listed[0]["outcome"] == "fault:status"
    assert "body" not in listed[1] and "json" not in listed[1] and listed[1]["body_size"] > 64 * 1024
    async with http.get(server.base_url + "/_mock/stats") as resp:
        stats = await resp.json()
    assert stats["by_path"] == {"/v1/chat/completions": 1, "/v1/embeddings": 1}
    assert stats["by_outcome"] == {"fault:status": 1, "completed": 1}
    async with http.delete(server.base_url + "/_mock/requests"):
        pass
    assert server.recorder.count() == 0  # control calls themselves are never recorded


async def test_advertised_limits_without_a_quota(http: aiohttp.ClientSession) -> None:
    """With no quota set the headers advertise ``advertised_rpm``/``_tpm`` (a bench agreeing with its
    gateway's config); a default mock advertises a high tier's 10,000 rpm (the control)."""
    body = {"model": "m", "messages": CHAT, "max_tokens": 5}
    for cfg, rpm, tpm in ((MockConfig(advertised_rpm=10**8, advertised_tpm=10**11), 10**8, 10**11),
                          (MockConfig(), 10_000, 10_000_000)):
        async with await start_mock(cfg) as srv, await post(http, srv, "/chat/completions", body) as resp:
            assert resp.status == 200
            assert resp.headers["x-ratelimit-limit-requests"] == str(rpm)
            assert resp.headers["x-ratelimit-remaining-requests"] == str(rpm - 1)
            assert resp.headers["x-ratelimit-limit-tokens"] == str(tpm)


async def test_quota_sliding_window_with_injected_clock(http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    async with await start_mock(MockConfig(), clock=clock) as srv:
        async with http.post(srv.base_url + "/_mock/quota", json={"rpm": 2}) as resp:
            assert resp.status == 200
        body = {"model": "m", "messages": CHAT, "max_tokens": 5}
        for remaining in ("1", "0"):
            async with await post(http, srv, "/chat/completions", body) as resp:
                assert resp.status == 200
                assert resp.headers["x-ratelimit-limit-requests"] == "2"
                assert resp.headers["x-ratelimit-remaining-requests"] == remaining
                assert resp.headers["x-ratelimit-reset-requests"] == "1m0s"
        async with await post(http, srv, "/chat/completions", body) as resp:
            assert resp.status == 429 and resp.headers["Retry-After"] == "60"
            assert (await resp.json())["error"]["type"] == "rate_limit_exceeded"
            assert resp.headers["x-ratelimit-remaining-requests"] == "0"
        clock.now += 45
        async with await post(http, srv, "/chat/completions", body) as resp:
            assert resp.status == 429 and resp.headers["Retry-After"] == "15"
        clock.now += 15
        async with await post(http, srv, "/chat/completions", body) as resp:
            assert resp.status == 200
        assert [a.outcome for a in srv.recorder.attempts].count("quota_429") == 2

        per_request = len(CHAT[0]["content"]) // 4 + 4 + 5
        async with http.post(srv.base_url + "/_mock/quota", json={"tpm": per_request * 2 + 1}) as resp:
            assert resp.status == 200
        statuses = []
        for _ in range(3):
            async with await post(http, srv, "/chat/completions", body) as resp:
                statuses.append(resp.status)
        assert statuses == [200, 200, 429]
        async with http.delete(srv.base_url + "/_mock/quota"):
            pass
        async with await post(http, srv, "/chat/completions", body) as resp:
            assert resp.status == 200


async def test_fault_spec_grammar() -> None:
    spec = parse_fault_spec(" status=429 ; retry_after=1.5;reset_before_headers ")
    assert (spec.status, spec.retry_after, spec.reset_before_headers) == (429, 1.5, True)
    assert spec.describe() == "status=429;retry_after=1.5;reset_before_headers"
    for bad in ("nope", "status=abc", "status=42", "drip_ms=-1", "stall_after_chunks=2", "redirect=200"):
        with pytest.raises(ValueError):
            parse_fault_spec(bad)
    assert [format_duration(s) for s in (0.02, 1, 1.5, 360)] == ["20ms", "1s", "1.5s", "6m0s"]


async def test_status_fault_with_error_code(client: AsyncOpenAI) -> None:
    """``error_code`` sets the error body's code (and a provider-like message for known codes)."""
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="m", messages=CHAT,
            extra_headers={"x-mock-fault": "status=400;error_code=context_length_exceeded"})
    assert info.value.code == "context_length_exceeded" and "maximum context length" in info.value.message


async def test_prefill_continues_the_same_answer(client: AsyncOpenAI) -> None:
    """A conversation ending with the first part of an answer gets exactly the rest of that answer."""
    whole = await client.chat.completions.create(model="m", messages=CHAT, max_tokens=12)
    text = whole.choices[0].message.content or ""
    words = text.split(" ")
    head = " ".join(words[:5])
    rest = await client.chat.completions.create(
        model="other", messages=[*CHAT, {"role": "assistant", "content": head}], max_tokens=7)
    assert head + (rest.choices[0].message.content or "") == text
    assert rest.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(
            model="m", messages=[*CHAT, {"role": "assistant", "content": head}],
            extra_headers={"x-mock-fault": "reject_prefill"})


@pytest.mark.parametrize(("fault", "outcome"), [("error_after_chunks=3", "fault:error_after_chunks"),
                                                ("end_after_chunks=3", "fault:end_after_chunks"),
                                                ("malformed_after_chunks=3", "fault:malformed_after_chunks")])
async def test_mid_stream_faults(http: aiohttp.ClientSession, server: MockServer, fault: str,
                                 outcome: str) -> None:
    body = {"model": "m", "messages": CHAT, "stream": True}
    async with await post(http, server, "/chat/completions", body, **{"x-mock-fault": fault}) as resp:
        raw = (await resp.read()).decode()
    frames = [f for f in raw.split("\n\n") if f]
    assert "[DONE]" not in raw if fault != "malformed_after_chunks=3" else raw.endswith("data: [DONE]\n\n")
    assert ('"error"' in frames[3]) if fault.startswith("error") else True
    assert len(frames) == 3 if fault.startswith("end") else True
    assert frames[3].startswith('data: {"choices"') if fault.startswith("malformed") else True
    assert server.recorder.attempts[-1].outcome == outcome


async def test_responses_prefill_continues_the_same_answer(client: AsyncOpenAI) -> None:
    whole = await client.responses.create(model="m", input="Say hello", max_output_tokens=12)
    words = whole.output_text.split(" ")
    head = " ".join(words[:5])
    rest = await client.responses.create(
        model="m", input=[{"role": "user", "content": "Say hello"}, {"role": "assistant", "content": head}],
        max_output_tokens=7)
    assert head + rest.output_text == whole.output_text


async def test_prompt_cache_reports_a_seen_prefix_as_cached() -> None:
    """With prompt_cache_min_tokens, the leading messages seen before come back as cached_tokens."""
    server = await start_mock(MockConfig(prompt_cache_min_tokens=50))
    system = {"role": "system", "content": "You are a careful agent. " * 40}
    try:
        async with AsyncOpenAI(base_url=server.url, api_key="k", max_retries=0) as c:
            first = await c.chat.completions.create(model="m", messages=[system, user("a")])
            again = await c.chat.completions.create(model="m", messages=[system, user("b")])
            other = await c.chat.completions.create(model="m", messages=[
                {"role": "system", "content": "Another prompt. " * 40}, user("a")])
    finally:
        await server.close()
    assert first.usage and again.usage and other.usage
    assert first.usage.prompt_tokens_details.cached_tokens == 0  # type: ignore[union-attr]
    cached = again.usage.prompt_tokens_details.cached_tokens  # type: ignore[union-attr]
    assert 50 <= cached < again.usage.prompt_tokens
    assert other.usage.prompt_tokens_details.cached_tokens == 0  # type: ignore[union-attr]


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}
