"""The gateway's own answers: one exception type, always the OpenAI error shape."""
from __future__ import annotations

import orjson
import pytest

from gateway.errors import LocalReply, UpstreamFailure, bad_request, error_body, sse_error_event


def test_local_reply_body_is_the_openai_error_shape() -> None:
    reply = LocalReply(429, "Slow down.", type="rate_limit_error", code="rate_limited", param="model",
                       headers={"retry-after": "3"})
    assert (reply.status, str(reply), reply.message) == (429, "Slow down.", "Slow down.")
    assert orjson.loads(reply.body()) == {"error": {"message": "Slow down.", "type": "rate_limit_error",
                                                    "code": "rate_limited", "param": "model"}}
    assert reply.headers == {"retry-after": "3"}


def test_local_reply_defaults_and_owns_its_headers() -> None:
    given = {"x-a": "1"}
    reply = LocalReply(400, "no", headers=given)
    given["x-b"] = "2"  # the caller's dict is copied, not kept
    assert reply.headers == {"x-a": "1"}
    assert (reply.type, reply.code, reply.param) == ("invalid_request_error", None, None)
    assert LocalReply(400, "no").headers == {}
    assert orjson.loads(reply.body())["error"] == {"message": "no", "type": "invalid_request_error",
                                                   "code": None, "param": None}


def test_bad_request_is_a_400_invalid_request() -> None:
    reply = bad_request("Missing model.", param="model", code="missing_model")
    assert isinstance(reply, LocalReply)
    assert (reply.status, reply.type, reply.code, reply.param) == (400, "invalid_request_error",
                                                                   "missing_model", "model")


def test_error_body_escapes_text() -> None:
    body = error_body('quote " and \n newline', "server_error")
    assert orjson.loads(body) == {"error": {"message": 'quote " and \n newline', "type": "server_error",
                                            "code": None, "param": None}}


def test_sse_error_event_is_one_complete_data_event() -> None:
    event = sse_error_event("upstream reset", code="reset_mid_stream")
    assert event.startswith(b"data: ") and event.endswith(b"\n\n") and event.count(b"\n") == 2
    assert orjson.loads(event[len(b"data: "):]) == {"error": {"message": "upstream reset",
                                                              "type": "upstream_error",
                                                              "code": "reset_mid_stream", "param": None}}


@pytest.mark.parametrize(("kind", "status", "type_"), [
    ("connect_error", 502, "upstream_error"),
    ("reset_before_response", 502, "upstream_error"),
    ("reset_mid_stream", 502, "upstream_error"),
    ("timeout_before_first_byte", 504, "timeout_error"),
    ("idle_timeout", 504, "timeout_error"),
    ("total_timeout", 504, "timeout_error"),
])
def test_upstream_failure_maps_to_502_or_504(kind: str, status: int, type_: str) -> None:
    failure = UpstreamFailure(kind, "it broke", upstream="mock")
    assert failure.is_timeout is (status == 504)
    assert (failure.upstream, failure.committed, str(failure)) == ("mock", False, "it broke")
    reply = failure.to_reply()
    assert (reply.status, reply.type, reply.code, reply.message) == (status, type_, kind, "it broke")


def test_upstream_failure_remembers_a_committed_stream() -> None:
    assert UpstreamFailure("reset_mid_stream", "cut", committed=True).committed
