"""What the relay records of an answer it saw (``_record_outcome``) and how its first bytes leave (on a
recording transport); the relay runs against the real server in ``test_handler.py`` and the e2e
streaming tests."""
from __future__ import annotations

import asyncio
import gc
import types
from collections.abc import AsyncIterator
from unittest import mock

import orjson
from aiohttp.http_writer import StreamWriter
from aiohttp.test_utils import make_mocked_request

from gateway.appstate import AppState
from gateway.exchange import Exchange, UpstreamResponse, Usage
from gateway.produced import CAPTURE_KEY, Capture
from gateway.relay import _record_outcome, _response_headers, relay
from gateway.response_writer import LeanResponse
from gateway.sse import StreamInspector
from tests.support.exchange import build_exchange
from tests.support.fake_body import FakeBody
from tests.support.until import until

USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def sse(payload: object) -> bytes:
    return b"data: " + (payload if isinstance(payload, bytes) else orjson.dumps(payload)) + b"\n\n"


def answer(status: int = 200, sse_stream: bool = False) -> UpstreamResponse:
    ctype = "text/event-stream" if sse_stream else "application/json"
    return UpstreamResponse(status, {"content-type": ctype}, FakeBody(), "upstream", "a")


def test_a_stream_records_what_its_inspector_saw() -> None:
    ex = build_exchange()
    view = StreamInspector(clock=lambda: 5.0)
    for event in ({"model": "gpt-4o-2024", "choices": [{"index": 0, "delta": {"content": "hi"}}]},
                  {"model": "gpt-4o-2024", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                  {"model": "gpt-4o-2024", "choices": [], "usage": USAGE}):
        view.feed(sse(event))
    view.feed(sse(b"[DONE]"))
    _record_outcome(ex, view, [], answer(sse_stream=True))
    rec = ex.record
    assert rec.first_token_at == 5.0 and rec.finish_reasons == ["stop"]
    assert rec.response_model == "gpt-4o-2024"
    assert rec.reported_usage == Usage(prompt=7, completion=3) and rec.stream_outcome == "done"


def test_a_stream_without_done_is_not_recorded_as_done() -> None:
    ex = build_exchange()
    view = StreamInspector(clock=lambda: 1.0)
    view.feed(sse({"choices": [{"index": 0, "delta": {"content": "hi"}}]}))
    _record_outcome(ex, view, [], answer(sse_stream=True))
    assert ex.record.stream_outcome == "" and ex.record.reported_usage is None


def test_a_json_answer_gives_its_usage_and_an_error_does_not() -> None:
    body = orjson.dumps({"id": "c", "choices": [], "usage": USAGE})
    ok = build_exchange()
    _record_outcome(ok, None, [body[:10], body[10:]], answer())
    assert ok.record.reported_usage == Usage(prompt=7, completion=3)
    failed = build_exchange()  # the control: a 5xx body's usage-like field is not the answer's usage
    _record_outcome(failed, None, [body], answer(status=500))
    assert failed.record.reported_usage is None


def test_a_json_answers_chunks_go_to_the_usage_capture_and_a_streams_do_not() -> None:
    """The usage layer leaves a JSON answer unwrapped: the relay hands it the chunks it kept (a stream's
    capture is fed by the layer's own wrapper, chunk by chunk, so the relay adds nothing to it)."""
    body = orjson.dumps({"id": "c", "choices": [], "usage": USAGE})
    ex = build_exchange()
    ex.state.set(CAPTURE_KEY, capture := Capture(sse=False))
    _record_outcome(ex, None, [body[:10], body[10:]], answer())
    assert capture.data() == body
    streamed = build_exchange()
    streamed.state.set(CAPTURE_KEY, stream_capture := Capture(sse=True))
    _record_outcome(streamed, StreamInspector(clock=lambda: 1.0), [], answer(sse_stream=True))
    assert stream_capture.chunks == []


def test_response_headers_name_the_request_and_the_upstream() -> None:
    ex = build_exchange(request_id="req-1")
    ex.response_headers["x-gateway-attempts"] = "2"
    headers = _response_headers(ex, answer())
    assert headers == {"content-type": "application/json", "x-gateway-attempts": "2",
                       "x-request-id": "req-1", "x-gateway-upstream": "a"}


def test_the_upstreams_content_length_is_not_the_clients() -> None:
    """The writer frames what it sends (a layer may have changed the body); the upstream's other headers
    pass (the control)."""
    up = UpstreamResponse(200, {"content-type": "application/json", "content-length": "12", "x-a": "1"},
                          FakeBody(), "upstream", "a")
    headers = _response_headers(build_exchange(), up)
    assert "content-length" not in headers and headers["x-a"] == "1"


class Wire:
    """The client's side of the socket: one entry per transport write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, chunks: list[bytes]) -> None:
        self.writes.append(b"".join(chunks))

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


async def relayed(body: AsyncIterator[bytes], wire: Wire, ex: Exchange | None = None,
                  content_type: str = "text/event-stream") -> None:
    protocol = mock.Mock(transport=wire, _paused=False)
    writer = StreamWriter(protocol, asyncio.get_running_loop())
    request = make_mocked_request("POST", "/v1/chat/completions", writer=writer, transport=wire,
                                  protocol=protocol)
    up = UpstreamResponse(200, {"content-type": content_type}, body, "upstream", "a")
    await relay(request, AppState(runtime=mock.Mock()), ex or build_exchange(), up)


async def test_a_streams_first_chunk_in_hand_leaves_with_its_headers() -> None:
    """Issue 21: one write, not two, for the status and the first token (the commit point holds it)."""
    wire = Wire()
    await relayed(FakeBody([sse({"choices": [{"delta": {"content": "hi"}}]}), sse(b"[DONE]")]), wire)
    assert wire.writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and b'"content":"hi"' in wire.writes[0]
    assert len(wire.writes) == 3  # + [DONE], the chunked end


async def test_a_json_answer_read_whole_leaves_in_one_write_with_its_length() -> None:
    """Issue 21: a JSON answer (a cache hit, an upstream's answer) goes out as head and body in one write,
    framed by Content-Length."""
    wire = Wire()
    body = orjson.dumps({"id": "c", "choices": [], "usage": USAGE})
    await relayed(FakeBody([body]), wire, content_type="application/json")
    assert len(wire.writes) == 1
    assert wire.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: %d\r\n" % len(body) in wire.writes[0].lower()
    assert b"transfer-encoding" not in wire.writes[0].lower() and wire.writes[0].endswith(b"\r\n\r\n" + body)


async def test_a_json_answer_in_pieces_leaves_whole_at_its_end() -> None:
    """Pieces are joined in order and sent once the last has come, nothing lost or reordered (a stream's
    chunks are never held, see above); the usage reader gets the body once, joined."""
    wire = Wire()
    ex = build_exchange()
    ex.state.set(CAPTURE_KEY, capture := Capture(sse=False))
    await relayed(FakeBody([b'{"id":', b'"c",', b'"choices":[]}']), wire, ex, content_type="application/json")
    assert len(wire.writes) == 1
    assert wire.writes[0].endswith(b'Content-Length: 23\r\n\r\n{"id":"c","choices":[]}')
    assert capture.chunks == [b'{"id":"c","choices":[]}']


async def test_a_stream_not_yet_started_sends_its_headers_first() -> None:
    """The control: while the first chunk is still awaited, the client gets the status on its own."""
    wire = Wire()
    first = asyncio.Event()

    async def later() -> AsyncIterator[bytes]:
        await first.wait()
        yield sse({"choices": [{"delta": {"content": "hi"}}]})

    task = asyncio.create_task(relayed(later(), wire))
    await until(lambda: wire.writes, message="the headers are sent before the first chunk exists")
    assert wire.writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and b"data:" not in wire.writes[0]
    first.set()
    await task
    assert b'"content":"hi"' in wire.writes[1]


async def test_a_token_is_written_before_the_inspector_reads_it() -> None:
    """Issue 21: the stream inspector (TTFT, usage, finish reasons) looks at a chunk once it left, not in
    front of it. Its clock here is the number of writes the client got: the first token is stamped after
    the write that carried it (1), not before (0)."""
    wire = Wire()
    ex = build_exchange(view=StreamInspector(clock=lambda: float(len(wire.writes))))
    await relayed(FakeBody([sse({"choices": [{"delta": {"content": "hi"}}]}), sse(b"[DONE]")]), wire, ex)
    assert ex.record.first_token_at == 1.0 and ex.record.stream_outcome == "done"


class Failing(Wire):
    """A client that is gone by its ``fail_at``-th write."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at

    def write(self, data: bytes) -> None:
        self.writelines([data])

    def writelines(self, chunks: list[bytes]) -> None:
        if len(self.writes) == self.fail_at:
            raise ConnectionResetError
        super().writelines(chunks)


async def test_a_chunk_whose_write_failed_is_still_inspected() -> None:
    """The provider's usage in the chunk the client never got still reaches the record (the ledger counts
    what the provider billed)."""
    wire = Failing(fail_at=1)
    ex = build_exchange(view=StreamInspector(clock=lambda: 1.0))
    usage = sse({"model": "m", "choices": [], "usage": USAGE})
    await relayed(FakeBody([sse({"choices": [{"delta": {"content": "hi"}}]}), usage]), wire, ex)
    assert len(wire.writes) == 1 and ex.record.stream_outcome == "client_gone"
    assert ex.record.reported_usage == Usage(prompt=7, completion=3)


class Stalling:
    """A stream body that hands out ``chunk`` (keeping no reference to it) and then waits until closed."""

    def __init__(self, chunk: bytes) -> None:
        self.chunk: bytes | None = chunk
        self.closed = asyncio.Event()
        self.waiting = False

    def __aiter__(self) -> Stalling:
        return self

    async def __anext__(self) -> bytes:
        chunk, self.chunk = self.chunk, None
        if chunk is not None:
            return chunk
        self.waiting = True
        await self.closed.wait()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closed.set()


def relay_holds(obj: object) -> bool:
    """Whether a suspended ``relay`` coroutine refers to ``obj`` (one of its locals)."""
    return any(isinstance(r, types.CoroutineType) and r.cr_code is relay.__code__
               for r in gc.get_referrers(obj))


async def test_an_idle_stream_keeps_neither_its_last_chunk_nor_its_response_headers() -> None:
    """Issue 21: a stream stalled after its first token holds what it needs for the next one, not the chunk
    already written nor the header multidict already serialised."""
    chunk = sse({"choices": [{"delta": {"content": "hi"}}]})
    wire, body = Wire(), Stalling(chunk)
    task = asyncio.create_task(relayed(body, wire))
    await until(lambda: body.waiting, message="the relay waits for the second chunk")
    assert chunk in wire.writes[0] and b"x-request-id" in wire.writes[0].lower()  # headers and chunk sent
    (resp,) = [o for o in gc.get_objects() if isinstance(o, LeanResponse)]
    assert relay_holds(resp)  # control: the probe does see the waiting relay's locals
    assert not relay_holds(chunk)
    assert len(resp.headers) == 0 and resp.prepared
    await body.aclose()
    await task
    assert wire.writes[-1] == b"0\r\n\r\n"  # the stream still ends normally
