"""What the relay records of an answer it saw (``_record_outcome``); the relay itself runs against the
real server in ``test_handler.py`` and the e2e streaming tests."""
from __future__ import annotations

import orjson

from gateway.exchange import UpstreamResponse, Usage
from gateway.relay import _record_outcome, _response_headers
from gateway.sse import StreamInspector
from tests.support.exchange import build_exchange
from tests.support.fake_body import FakeBody

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


def test_response_headers_name_the_request_and_the_upstream() -> None:
    ex = build_exchange(request_id="req-1")
    ex.response_headers["x-gateway-attempts"] = "2"
    headers = _response_headers(ex, answer())
    assert headers == {"content-type": "application/json", "x-gateway-attempts": "2",
                       "x-request-id": "req-1", "x-gateway-upstream": "a"}
