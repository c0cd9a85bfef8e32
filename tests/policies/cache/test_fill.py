"""The cache fill collector: stores a clean answer once, and never keeps a finished exchange alive."""
from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import orjson
import pytest

from gateway.body import Chunks
from gateway.exchange import Exchange, StateKey, UpstreamResponse, Usage
from policies.cache.entry import CachedAnswer
from policies.cache.fill import attach_fill
from tests.support.exchange import build_exchange

ANSWER = orjson.dumps({"id": "c1", "object": "chat.completion", "model": "gpt-4o",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})


class Sentinel:
    """Lives in ``ex.state`` exactly as long as the exchange."""


SENTINEL: StateKey[Sentinel] = StateKey("test.sentinel")


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Only reference counting frees objects while a test runs: what a cycle keeps alive stays alive."""
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


async def _serve_once(stored: list[CachedAnswer], closes_over_exchange: bool,
                      read_to_end: bool = True) -> weakref.ref[Sentinel]:
    ex: Exchange | None = build_exchange()
    assert ex is not None
    sentinel = Sentinel()
    ex.state.set(SENTINEL, sentinel)
    ref = weakref.ref(sentinel)
    del sentinel

    captured = ex if closes_over_exchange else None  # the old shape of the storers: a closure over ex

    def store(_ex: Exchange, answer: CachedAnswer, _reasons: list[str]) -> None:
        stored.append(answer)
        assert captured is None or captured is _ex

    resp: UpstreamResponse | None = UpstreamResponse(200, {"content-type": "application/json"},
                                                     Chunks([ANSWER[:20], ANSWER[20:]]))
    assert resp is not None
    resp = attach_fill(ex, resp, store, 1 << 20)
    if read_to_end:
        assert b"".join([chunk async for chunk in resp.body]) == ANSWER
    else:  # the client went away after the first chunk: nothing is stored
        assert await resp.body.__anext__() == ANSWER[:20]
        await resp.body.aclose()
    del resp, ex, store
    return ref


@pytest.mark.parametrize("read_to_end", [True, False])
async def test_a_finished_fill_is_freed_by_reference_counting(no_gc: None, read_to_end: bool) -> None:
    stored: list[CachedAnswer] = []
    ref = await _serve_once(stored, closes_over_exchange=False, read_to_end=read_to_end)
    assert [a.body for a in stored] == ([ANSWER] if read_to_end else [])
    assert ref() is None  # no cycle: freed without the cyclic collector


async def test_positive_control_a_callback_closing_over_the_exchange_is_a_cycle(no_gc: None) -> None:
    stored: list[CachedAnswer] = []
    ref = await _serve_once(stored, closes_over_exchange=True, read_to_end=False)
    assert stored == []
    assert ref() is not None  # ex -> state -> fill -> callback -> ex: only the collector can free it
    gc.collect()
    assert ref() is None


async def test_a_second_layer_joins_the_first_collector_and_each_callback_runs_once() -> None:
    ex = build_exchange()
    calls: list[str] = []
    resp = UpstreamResponse(200, {"content-type": "application/json"}, Chunks([ANSWER]))
    resp = attach_fill(ex, resp, lambda _ex, _a, _r: calls.append("exact"), 1 << 20)
    resp = attach_fill(ex, resp, lambda _ex, _a, _r: calls.append("semantic"), 1 << 20)
    assert b"".join([chunk async for chunk in resp.body]) == ANSWER
    assert calls == ["exact", "semantic"]


async def test_an_answer_over_the_limit_is_not_stored() -> None:
    ex = build_exchange()
    calls: list[CachedAnswer] = []
    resp = UpstreamResponse(200, {"content-type": "application/json"}, Chunks([ANSWER]))
    resp = attach_fill(ex, resp, lambda _ex, a, _r: calls.append(a), len(ANSWER) - 1)
    assert b"".join([chunk async for chunk in resp.body]) == ANSWER
    assert calls == []


def test_an_entry_keeps_bytes_and_renders_its_replay_once() -> None:
    answer = CachedAnswer.from_obj("chat", orjson.loads(ANSWER), 0.0)
    renders: list[bool] = []

    def render(_op: str, obj: dict[str, object], include_usage: bool) -> bytes:
        renders.append(include_usage)
        return orjson.dumps(obj) + (b"u" if include_usage else b"")

    assert not hasattr(answer, "__dict__") and answer.obj() == orjson.loads(ANSWER)
    assert answer.sse(True, render).endswith(b"u") and answer.sse(True, render).endswith(b"u")
    assert not answer.sse(False, render).endswith(b"u")
    assert renders == [True, False]


async def test_each_layer_hears_why_an_answer_was_not_stored() -> None:
    """Too large for the collector: ``not_stored_too_large``; a stream that did not end cleanly (no
    ``[DONE]``): ``not_stored_incomplete``; each layer that asked hears it once. A stored answer: nothing
    (control)."""
    async def serve(body: bytes, content_type: str, limit: int) -> tuple[list[str], int]:
        ex = build_exchange()
        heard: list[str] = []
        stored: list[CachedAnswer] = []
        resp = UpstreamResponse(200, {"content-type": content_type}, Chunks([body]))
        for layer in ("exact", "semantic"):
            resp = attach_fill(ex, resp, lambda _ex, a, _r: stored.append(a), limit,
                               refused=lambda decision, layer=layer: heard.append(f"{layer}:{decision}"))
        assert b"".join([chunk async for chunk in resp.body]) == body
        return heard, len(stored)

    assert await serve(ANSWER, "application/json", 1 << 20) == ([], 2)
    assert await serve(ANSWER, "application/json", len(ANSWER) - 1) == (
        ["exact:not_stored_too_large", "semantic:not_stored_too_large"], 0)
    cut = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'  # no [DONE]
    assert await serve(cut, "text/event-stream", 1 << 20) == (
        ["exact:not_stored_incomplete", "semantic:not_stored_incomplete"], 0)


async def test_a_stored_json_answer_reports_its_usage_once_parsed() -> None:
    """The parse the entry needs gives the provider's usage to the record (the relay then does not search
    the bytes again); a usage already recorded is kept (control: a stream's usage stays the inspector's)."""
    ex = build_exchange()
    resp = attach_fill(ex, UpstreamResponse(200, {"content-type": "application/json"}, Chunks([ANSWER])),
                       lambda _ex, _a, _r: None, 1 << 20)
    assert ex.record.reported_usage is None
    assert b"".join([chunk async for chunk in resp.body]) == ANSWER
    usage = ex.record.reported_usage
    assert usage is not None and (usage.prompt, usage.completion) == (3, 1)
    known = build_exchange()
    known.record.reported_usage = first = Usage(prompt=9)
    resp = attach_fill(known, UpstreamResponse(200, {"content-type": "application/json"}, Chunks([ANSWER])),
                       lambda _ex, _a, _r: None, 1 << 20)
    assert b"".join([chunk async for chunk in resp.body]) == ANSWER
    assert known.record.reported_usage is first


async def test_a_json_answer_is_stored_as_its_bytes_came() -> None:
    """A JSON answer's entry is the provider's bytes (spacing included), checked and read once, not serialised
    again; its usage and finish reasons are read from that parse. The control: a stream's entry is the
    assembly's own serialisation."""
    spaced = orjson.dumps(orjson.loads(ANSWER), option=orjson.OPT_INDENT_2)
    ex, stored = build_exchange(), list[tuple[CachedAnswer, list[str]]]()
    resp = attach_fill(ex, UpstreamResponse(200, {"content-type": "application/json"},
                                            Chunks([spaced[:30], spaced[30:]])),
                       lambda _ex, a, reasons: stored.append((a, reasons)), 1 << 20)
    assert b"".join([chunk async for chunk in resp.body]) == spaced
    [(answer, reasons)] = stored
    assert answer.body == spaced != ANSWER and reasons == ["stop"]
    assert answer.usage is not None and (answer.usage.prompt, answer.usage.completion) == (3, 1)
    assert orjson.loads(answer.body) == orjson.loads(ANSWER)
    streamed, _ = await _fill_stream(STREAM)
    assert streamed.ready() and streamed.body == orjson.dumps(orjson.loads(streamed.body))


STREAM = (b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":'
          b'{"content":"hi"},"finish_reason":null}]}\n\ndata: {"id":"c","object":"chat.completion.chunk",'
          b'"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\ndata: [DONE]\n\n')


async def _fill_stream(data: bytes, body: dict[str, object] | None = None) -> tuple[CachedAnswer, list[str]]:
    ex = build_exchange(body) if body is not None else build_exchange()
    stored: list[tuple[CachedAnswer, list[str]]] = []
    resp = UpstreamResponse(200, {"content-type": "text/event-stream"}, Chunks([data[:50], data[50:]]))
    resp = attach_fill(ex, resp, lambda _ex, a, reasons: stored.append((a, reasons)), 1 << 20)
    assert b"".join([chunk async for chunk in resp.body]) == data
    assert len(stored) == 1
    return stored[0]


async def test_a_usual_stream_is_stored_raw_with_its_finish_reason_and_not_assembled() -> None:
    answer, reasons = await _fill_stream(STREAM)
    assert answer.stream() == STREAM and answer.body == b""
    assert reasons == ["length"] and answer.reasons == ("length",)


async def test_streams_the_bytes_cannot_tell_are_assembled_at_once_as_before() -> None:
    """Several choices asked for (``n``), or a form ``stream_reasons`` does not read: the canonical body now.
    The control: the same stream with one choice is stored raw."""
    chat = [{"role": "user", "content": "hi"}]
    several, _ = await _fill_stream(STREAM, {"model": "m", "messages": chat, "n": 2})
    assert several.raw is None and b'"finish_reason":"length"' in several.body
    crlf, reasons = await _fill_stream(STREAM.replace(b"\n", b"\r\n"))
    assert crlf.raw is None and crlf.body and reasons == ["length"]
    one, _ = await _fill_stream(STREAM, {"model": "m", "messages": chat, "n": 1})
    assert one.stream() == STREAM


async def test_a_stream_past_the_raw_bound_is_assembled_at_the_store_as_before() -> None:
    """Past ``RAW_MAX_BYTES`` (~25 chunks) a stream is not stored raw: assembled at the store, as before
    (its raw bytes, ~15x the answer, would cut what the cache holds). The control, just under it, is raw."""
    from policies.cache.entry import RAW_MAX_BYTES
    from policies.cache.fill import FillBudget
    from tests.support.until import until

    one = STREAM.split(b"\n\n")[0] + b"\n\n"
    budget = FillBudget()
    stored: list[CachedAnswer] = []

    async def fill(repeat: int) -> CachedAnswer:
        data = one * repeat + STREAM
        resp = UpstreamResponse(200, {"content-type": "text/event-stream"}, Chunks([data]))
        resp = attach_fill(build_exchange(), resp, lambda _ex, a, _r: stored.append(a), 1 << 22, budget)
        assert b"".join([chunk async for chunk in resp.body]) == data
        await until(lambda: bool(stored), timeout=10)
        return stored.pop()

    try:
        long = await fill(RAW_MAX_BYTES // len(one) + 1)
        short = await fill(RAW_MAX_BYTES // len(one) - 4)
    finally:
        await budget.close()
    assert long.raw is None and long.body and short.raw is not None and not short.body
