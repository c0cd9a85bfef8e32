"""The usage policy: stream usage asked for on the client's behalf and hidden again, chunks kept, inflight."""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.exchange import Exchange, UpstreamResponse
from gateway.produced import CAPTURE_KEY
from gateway.sse import StreamInspector
from policies.usage.layer import UsagePolicy, ask_for_usage, strip_usage
from tests.support.exchange import build_exchange
from tests.support.fake_body import FakeBody

SSE = {"content-type": "text/event-stream"}


@pytest.fixture
def make_exchange() -> Callable[..., Exchange]:
    def make(body: dict[str, Any] | None = None, **kw: Any) -> Exchange:
        body = body or {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        fields: dict[str, Any] = {
            "request_id": "r1",
            "method": "POST",
            "path": "/v1/chat/completions",
            "operation": "chat",
            "headers": CIMultiDictProxy(CIMultiDict()),
            "raw_body": b"{}",
            "body": body,
            "received_at": 0.0,
            "deadline": 600.0,
            "model": body.get("model", ""),
            "upstream": "mock",
            "upstream_model": body.get("model", ""),
        }
        fields.update(kw)
        return build_exchange(**fields)

    return make


def chunk(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def provider_stream(include_usage: bool) -> list[bytes]:
    """What OpenAI sends: with include_usage every chunk has "usage":null and a final usage chunk follows."""

    def c(choices: list[Any], usage: Any = "absent") -> bytes:
        obj: dict[str, Any] = {
            "id": "x",
            "object": "chat.completion.chunk",
            "model": "gpt-4o",
            "choices": choices,
        }
        if include_usage:
            obj["usage"] = None if usage == "absent" else usage
        return chunk(obj)

    out = [c([{"index": 0, "delta": {"role": "assistant", "content": ""}}])]
    out += [c([{"index": 0, "delta": {"content": w}}]) for w in ("Hello", " there", " usage")]
    out.append(c([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    if include_usage:
        out.append(c([], {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}))
    return [*out, b"data: [DONE]\n\n"]


async def body_of(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c


def nxt(chunks: list[bytes], headers: dict[str, str] | None = None, status: int = 200):  # type: ignore[no-untyped-def]
    seen: list[Exchange] = []

    async def call(ex: Exchange) -> UpstreamResponse:
        seen.append(ex)
        return UpstreamResponse(status=status, headers=headers or SSE, body=body_of(chunks), upstream="mock")

    call.seen = seen  # type: ignore[attr-defined]
    return call


async def drain(resp: UpstreamResponse) -> bytes:
    return b"".join([c async for c in resp.body])


def stream_exchange(make_exchange: Callable[..., Exchange], body: dict[str, Any] | None = None) -> Exchange:
    body = body or {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    return make_exchange(body, raw_body=orjson.dumps(body), stream=body.get("stream") is True)


async def test_client_that_did_not_ask_sees_exactly_the_plain_stream(
    make_exchange: Callable[..., Exchange],
) -> None:
    """Usage is requested upstream, recorded, and the client's bytes equal a stream without include_usage."""
    ex = stream_exchange(make_exchange)
    resp = await UsagePolicy(inject=True)(ex, nxt(provider_stream(include_usage=True)))
    got = await drain(resp)
    assert got == b"".join(provider_stream(include_usage=False))
    assert ex.record.reported_usage is not None and (
        ex.record.reported_usage.prompt,
        ex.record.reported_usage.completion,
        ex.record.reported_usage.estimated,
    ) == (7, 3, False)
    sent = orjson.loads(ex.body_bytes())
    assert sent["stream_options"] == {"include_usage": True} and sent["messages"] == ex.body["messages"]  # type: ignore[index]


async def test_splitting_chunks_anywhere_changes_nothing(make_exchange: Callable[..., Exchange]) -> None:
    """Events cut across chunk boundaries (even inside "usage":null) are reassembled before stripping."""
    whole = b"".join(provider_stream(include_usage=True))
    for size in (1, 7, 13, 64):
        ex = stream_exchange(make_exchange)
        pieces = [whole[i : i + size] for i in range(0, len(whole), size)]
        got = await drain(await UsagePolicy(inject=True)(ex, nxt(pieces)))
        assert got == b"".join(provider_stream(include_usage=False)), size
        assert ex.record.reported_usage is not None and ex.record.reported_usage.completion == 3


async def test_client_that_asked_gets_usage_untouched(make_exchange: Callable[..., Exchange]) -> None:
    """A client that set include_usage receives the provider's stream byte for byte."""
    body = {"model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True}, "messages": []}
    ex = stream_exchange(make_exchange, body)
    chunks = provider_stream(include_usage=True)
    got = await drain(await UsagePolicy(inject=True)(ex, nxt(chunks)))
    assert got == b"".join(chunks) and not ex.modified and ex.raw_body == orjson.dumps(body)


def test_injection_splices_raw_bytes_without_reserialising(make_exchange: Callable[..., Exchange]) -> None:
    """An unmodified body gets the flag spliced in; the result is valid JSON equal to the body
    plus the flag."""
    raw = b'  {"model": "gpt-4o",\n "stream": true, "messages": [{"role": "user", "content": "caf\\u00e9"}]}'
    body = orjson.loads(raw)
    ex = make_exchange(body, raw_body=raw, stream=True)
    assert ask_for_usage(ex) is True
    assert not ex.modified and orjson.loads(ex.body_bytes()) == {
        **body,
        "stream_options": {"include_usage": True},
    }
    assert ex.body_bytes().endswith(raw[raw.index(b"{") + 1 :])


def test_injection_merges_existing_stream_options(make_exchange: Callable[..., Exchange]) -> None:
    """Other stream_options are kept; include_usage: false from the client is overridden
    upstream and hidden."""
    body = {
        "model": "m",
        "stream": True,
        "stream_options": {"include_obfuscation": False, "include_usage": False},
    }
    ex = make_exchange(body, raw_body=orjson.dumps(body), stream=True)
    assert ask_for_usage(ex) is True and ex.modified
    assert orjson.loads(ex.body_bytes())["stream_options"] == {
        "include_obfuscation": False,
        "include_usage": True,
    }


async def test_injection_off_and_non_stream_leave_the_body_alone(
    make_exchange: Callable[..., Exchange],
) -> None:
    """inject=False, or a non-stream request, forwards the client's body unchanged."""
    ex = stream_exchange(make_exchange)
    await drain(await UsagePolicy(inject=False)(ex, nxt(provider_stream(False))))
    assert not ex.modified and b"stream_options" not in ex.body_bytes()
    body = {"model": "gpt-4o", "messages": []}
    ex2 = make_exchange(body, raw_body=orjson.dumps(body))
    await drain(await UsagePolicy(inject=True)(ex2, nxt([b'{"usage":{}}'], {"content-type": "x"})))
    assert ex2.body_bytes() == orjson.dumps(body)


def test_strip_usage_keeps_choices_of_a_mixed_chunk(make_exchange: Callable[..., Exchange]) -> None:
    """A provider that puts usage on a chunk that also has choices keeps the choices, loses the usage."""
    ex = make_exchange()
    event = chunk(
        {
            "choices": [{"index": 0, "delta": {"content": "x"}}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 1},
        }
    )
    out = strip_usage(event + b"data: [DONE]\n\n", ex)
    assert b'"usage"' not in out and b'"content":"x"' in out and out.endswith(b"data: [DONE]\n\n")
    assert ex.record.reported_usage is not None and ex.record.reported_usage.prompt == 2


def test_null_usages_with_either_closer_around_a_usage_object_are_all_stripped(
    make_exchange: Callable[..., Exchange],
) -> None:
    """The stripper replaces the null usage spelling its first event shows, the other one only when the next
    usage key left is such a null: one left after a usage object still goes (the steps after the replaces)."""
    padded = chunk({"choices": [{"delta": {"content": "a"}}], "usage": None, "obfuscation": "k"})
    last = chunk({"choices": [{"delta": {"content": "b"}}], "usage": None})
    usage = chunk({"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1}})
    orders = ([padded, usage, last], [last, usage, padded], [padded, last, usage], [last, padded, usage])
    for events in orders:
        ex = make_exchange()
        out = strip_usage(b"".join(events), ex)
        assert out == b"".join(e.replace(b',"usage":null', b"") for e in events if e != usage), events
        assert ex.record.reported_usage is not None and ex.record.reported_usage.prompt == 2


def test_usage_text_inside_content_is_not_touched(make_exchange: Callable[..., Exchange]) -> None:
    """The literal text "usage":null inside a message is escaped JSON, so it survives."""
    ex = make_exchange()
    event = chunk({"choices": [{"delta": {"content": 'say ,"usage":null please'}}]})
    assert strip_usage(event, ex) == event


async def test_chunks_are_captured_and_errors_are_not(make_exchange: Callable[..., Exchange]) -> None:
    """Relayed chunks are kept for estimation; an error answer is passed through without a capture."""
    ex = stream_exchange(make_exchange)
    chunks = provider_stream(include_usage=True)
    await drain(await UsagePolicy(inject=True)(ex, nxt(chunks)))
    assert ex.state[CAPTURE_KEY].data() == b"".join(chunks)
    json_ex = make_exchange()  # a JSON answer passes unwrapped: the relay hands its chunks to the capture
    json_resp = UpstreamResponse(200, {"content-type": "application/json"}, FakeBody([b"{}"]))
    assert await UsagePolicy(inject=True)(json_ex, lambda _ex: _answer(json_resp)) is json_resp
    assert json_ex.state[CAPTURE_KEY].chunks == [] and not json_ex.state[CAPTURE_KEY].sse
    ex2 = stream_exchange(make_exchange)
    err = b'{"error": {"message": "stream_options not supported"}}'
    resp = await UsagePolicy(inject=True)(ex2, nxt([err], {"content-type": "application/json"}, 400))
    assert await drain(resp) == err and CAPTURE_KEY not in ex2.state


async def test_closing_the_wrapped_body_closes_the_upstream_body(
    make_exchange: Callable[..., Exchange],
) -> None:
    """A client gone mid-stream: aclose reaches the upstream generator, so its connection is released."""
    closed: list[bool] = []

    async def upstream_body() -> AsyncIterator[bytes]:
        try:
            for c in provider_stream(True):
                yield c
        finally:
            closed.append(True)

    async def call(ex: Exchange) -> UpstreamResponse:
        return UpstreamResponse(status=200, headers=SSE, body=upstream_body())

    ex = stream_exchange(make_exchange)
    resp = await UsagePolicy(inject=True)(ex, call)
    it = resp.body.__aiter__()
    await it.__anext__()
    await resp.body.aclose()  # type: ignore[attr-defined]
    assert closed == [True]

    class Body:
        """An upstream body that records aclose even when never iterated."""

        def __aiter__(self) -> Body:
            return self

        async def __anext__(self) -> bytes:
            raise StopAsyncIteration

        async def aclose(self) -> None:
            closed.append(True)

    async def never_read(ex: Exchange) -> UpstreamResponse:
        return UpstreamResponse(status=200, headers=SSE, body=Body())

    resp = await UsagePolicy(inject=True)(stream_exchange(make_exchange), never_read)
    await resp.body.aclose()  # type: ignore[attr-defined]  # never started: a bare generator would skip finally
    assert closed == [True, True]


@pytest.mark.parametrize("operation", ["embeddings", "responses"])
async def test_only_chat_and_completions_get_the_flag(
    make_exchange: Callable[..., Exchange], operation: str
) -> None:
    """Embeddings and the Responses API (usage always in response.completed) are never rewritten."""
    body = {"model": "m", "stream": True, "input": "x"}
    ex = make_exchange(body, raw_body=orjson.dumps(body), stream=True, operation=operation)
    await drain(await UsagePolicy(inject=True)(ex, nxt([b"data: {}\n\n"])))
    assert not ex.modified and ex.raw_body == orjson.dumps(body)


async def test_unusual_framing_is_stripped_or_relayed_untouched(
    make_exchange: Callable[..., Exchange],
) -> None:
    """CRLF/CR-framed or spaced events are stripped like compact ones (leaving with \\n line ends);
    an event with no boundary in 64 KiB passes through as it comes: never buffered."""
    import json

    for framing in (b"\r\n", b"\r"):
        crlf = [c.replace(b"\n", framing) for c in provider_stream(include_usage=True)]
        ex = stream_exchange(make_exchange)
        assert await drain(await UsagePolicy(inject=True)(ex, nxt(crlf))) == b"".join(provider_stream(False))
        assert ex.record.reported_usage is not None and ex.record.reported_usage.prompt == 7
    spaced = [
        b"data: " + json.dumps(orjson.loads(c[6:])).encode() + b"\n\n" if c.startswith(b"data: {") else c
        for c in provider_stream(include_usage=True)
    ]
    ex = stream_exchange(make_exchange)
    out = await drain(await UsagePolicy(inject=True)(ex, nxt(spaced)))
    assert b'"usage"' not in out and out.count(b"data: ") == 6 and b'"content": "Hello"' in out
    assert ex.record.reported_usage is not None and ex.record.reported_usage.completion == 3
    huge = [b"data: " + b"x" * 40_000, b"y" * 40_000, b"\n\n"]
    ex2 = stream_exchange(make_exchange)
    got = [c async for c in (await UsagePolicy(inject=True)(ex2, nxt(huge))).body]
    assert b"".join(got) == b"".join(huge) and len(got) >= 2


async def test_a_burst_of_events_is_stripped_like_single_events(
    make_exchange: Callable[..., Exchange],
) -> None:
    """Many events in one chunk (a fast provider, a whole answer read at once), with the null usage before
    another member as OpenAI sends it (``"obfuscation"``) or last: the client gets the plain stream. A spaced
    null usage in such a burst is still removed (the one case the byte checks leave to the regex)."""
    import json

    for padded in (0, 1):  # the first null usage last in its object, or before the padding
        obfuscated = [c.replace(b',"usage":null}', b',"usage":null,"obfuscation":"k"}') if i % 2 == padded
                      else c for i, c in enumerate(provider_stream(include_usage=True))]
        expected = b"".join(c.replace(b',"usage":null', b"") for c in obfuscated[:-2]) + b"data: [DONE]\n\n"
        for chunks in (obfuscated, [b"".join(obfuscated)]):
            ex = stream_exchange(make_exchange)
            assert await drain(await UsagePolicy(inject=True)(ex, nxt(chunks))) == expected
            assert ex.record.reported_usage is not None and ex.record.reported_usage.prompt == 7
    spaced = b"".join(b"data: " + json.dumps(orjson.loads(c[6:])).encode() + b"\n\n"
                      if c.startswith(b"data: {") else c for c in provider_stream(include_usage=True))
    assert b'"usage": null' in spaced  # the spelling only the regex removes
    ex = stream_exchange(make_exchange)
    out = await drain(await UsagePolicy(inject=True)(ex, nxt([spaced])))
    assert b'"usage"' not in out and out.count(b"data: ") == 6 and b'"content": "Hello"' in out
    assert ex.record.reported_usage is not None and ex.record.reported_usage.completion == 3


async def _answer(resp: UpstreamResponse) -> UpstreamResponse:
    return resp


async def test_the_inspector_is_told_which_chunks_hold_no_usage_key(
    make_exchange: Callable[..., Exchange],
) -> None:
    """Each chunk the stripper proved free of usage keys is vouched for to the exchange's inspector (which
    then does not search it again); a chunk it cannot prove so (a data line that is not JSON, keeping its
    ``"usage"`` text) is not: the inspector looks at it itself."""
    odd = b'data: not json, "usage":1\n\n'
    stream = provider_stream(include_usage=True)
    for chunks in (stream[:-1] + [odd, stream[-1]], [b"".join(stream[:-1]) + odd + stream[-1]]):
        ex = stream_exchange(make_exchange)
        view = ex.view = StreamInspector(clock=lambda: 1.0)
        vouched: list[bool] = []
        async for chunk in (await UsagePolicy(inject=True)(ex, nxt(chunks))).body:
            vouched.append(view.vouched is chunk)
            view.feed(chunk)
        assert vouched == ([True] * 5 + [False, True] if len(chunks) > 1 else [False])
        assert view.done and view.finish_reasons == ["stop"]
