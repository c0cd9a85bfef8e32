"""Splicing a fallback's continuation into a broken chat stream, on in-memory bodies."""
from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.body import Chunks
from gateway.errors import UpstreamFailure
from gateway.exchange import UpstreamResponse
from policies.resilience.continuation import DONE, SoFar, Spliced, continuation_body
from tests.policies.resilience.test_retry_layer import Body


def ev(delta: dict[str, Any] | None = None, finish: str | None = None, cid: str = "chatcmpl-A",
       usage: dict[str, int] | None = None, model: str = "big") -> bytes:
    obj: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": 1, "model": model,
                           "choices": [] if delta is None else [{"index": 0, "delta": delta,
                                                                 "finish_reason": finish}]}
    if usage is not None:
        obj["usage"] = usage
    return b"data: " + orjson.dumps(obj) + b"\n\n"


ROLE = {"role": "assistant", "content": ""}
HEAD = [ev(ROLE), ev({"content": "Hello"}), ev({"content": " wor"})]
TAIL = [ev(ROLE, cid="chatcmpl-B", model="small"), ev({"content": "ld"}, cid="chatcmpl-B"),
        ev({}, "stop", cid="chatcmpl-B"),
        ev(None, cid="chatcmpl-B", usage={"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}),
        DONE]


class Resumer:
    def __init__(self, answer: list[bytes] | None) -> None:
        self.answer = answer
        self.asked: list[tuple[str, int]] = []
        self.reports: list[tuple[str, str]] = []

    async def resume(self, text: str, chunks: int) -> tuple[UpstreamResponse, str] | None:
        self.asked.append((text, chunks))
        if self.answer is None:
            return None
        resp = UpstreamResponse(200, {"content-type": "text/event-stream"}, Chunks(list(self.answer)))
        return resp, "backup"

    def report(self, outcome: str, upstream: str) -> None:
        self.reports.append((outcome, upstream))


async def drain(body: Spliced) -> tuple[bytes, BaseException | None]:
    out = b""
    try:
        async for chunk in body:
            out += chunk
    except UpstreamFailure as exc:
        return out, exc
    finally:
        await body.aclose()
    return out, None


def texts(raw: bytes) -> tuple[str, set[str]]:
    text, ids = "", set()
    for frame in raw.split(b"\n\n"):
        if frame.startswith(b"data: {"):
            obj = orjson.loads(frame[6:])
            ids.add(obj["id"])
            for choice in obj["choices"]:
                text += choice["delta"].get("content") or ""
    return text, ids


@pytest.mark.parametrize("broken", [
    Body(*HEAD, fail=UpstreamFailure("reset_mid_stream", "reset", committed=True)),
    Body(*HEAD),  # ends without [DONE]
    Body(*HEAD, b'data: {"error":{"message":"overloaded"}}\n\n'),
    Body(*HEAD, b'data: {"choices":[{"delta":{"content":"tr\n\n'),
])
async def test_break_is_spliced_with_the_same_id_and_no_repeat(broken: Body) -> None:
    r = Resumer(TAIL)
    raw, error = await drain(Spliced(broken, r.resume, r.report))
    text, ids = texts(raw)
    assert error is None and text == "Hello world" and ids == {"chatcmpl-A"}
    assert r.asked == [("Hello wor", 2)] and r.reports == [("continued", "backup")] and broken.closed
    frames = raw.split(b"\n\n")
    assert raw.count(b'"role"') == 1 and raw.endswith(DONE)
    assert frames[-3].startswith(b": x-gateway-continued upstream=backup after=")
    usage = orjson.loads(raw.split(b"\n\n")[-4][6:])["usage"]
    assert usage["completion_tokens"] == 3 and usage["total_tokens"] == 12 and b'"model":"small"' not in raw


async def test_whole_stream_passes_untouched_and_resume_is_not_asked() -> None:
    """Positive control: a healthy stream is relayed byte for byte."""
    r = Resumer(TAIL)
    healthy = [*HEAD, ev({}, "stop"), DONE]
    raw, error = await drain(Spliced(Body(*healthy), r.resume, r.report))
    assert error is None and raw == b"".join(healthy) and r.asked == [] and r.reports == []


async def test_finish_without_done_gets_done_without_resuming() -> None:
    r = Resumer(TAIL)
    raw, _ = await drain(Spliced(Body(*HEAD, ev({}, "stop")), r.resume, r.report))
    assert raw.endswith(DONE) and r.asked == []


async def test_no_target_raises_the_original_failure() -> None:
    r = Resumer(None)
    original = UpstreamFailure("idle_timeout", "stalled", committed=True)
    raw, error = await drain(Spliced(Body(*HEAD, fail=original), r.resume, r.report))
    assert error is original and raw == b"".join(HEAD) and r.reports == [("no_target", "")]


async def test_error_event_without_target_reaches_the_client_as_it_was() -> None:
    r = Resumer(None)
    err = b'data: {"error":{"message":"overloaded"}}\n\n'
    raw, error = await drain(Spliced(Body(*HEAD, err), r.resume, r.report))
    assert error is None and raw == b"".join(HEAD) + err


async def test_tool_call_answers_are_not_continued() -> None:
    r = Resumer(TAIL)
    tool = ev({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": ""}}]})
    raw, error = await drain(Spliced(Body(ev(ROLE), tool, fail=UpstreamFailure("reset_mid_stream", "x")),
                                     r.resume, r.report))
    assert isinstance(error, UpstreamFailure) and r.asked == [] and r.reports == [("not_plain", "")]


async def test_continuation_that_breaks_too_names_the_original_failure() -> None:
    r = Resumer([ev(ROLE, cid="B"), ev({"content": "l"}, cid="B")])  # ends without [DONE]
    raw, error = await drain(Spliced(Body(*HEAD, fail=UpstreamFailure("reset_mid_stream", "reset")),
                                     r.resume, r.report))
    assert isinstance(error, UpstreamFailure) and error.kind == "reset_mid_stream"
    assert "backup" in error.message
    assert texts(raw)[0] == "Hello worl" and r.reports == [("failed", "backup")]


def test_continuation_body() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 60, "stream": True}
    out = continuation_body(body, "Hello", 40, "prefill")
    assert out["messages"][-1] == {"role": "assistant", "content": "Hello"} and out["max_tokens"] == 20
    assert "continue_final_message" not in out and body["max_tokens"] == 60
    vllm = continuation_body(body, "Hello", 70, "continue_final_message")
    assert vllm["continue_final_message"] is True and vllm["add_generation_prompt"] is False
    assert vllm["max_tokens"] == 1


def test_so_far_reads_plain_text_and_flags_the_rest() -> None:
    so_far = SoFar()
    assert so_far.look(HEAD[1][:-2]) == "ok" and so_far.text == ["Hello"] and so_far.id == "chatcmpl-A"
    assert so_far.look(b"data: [DONE]") == "done" and so_far.look(b": comment") == "ok"
    assert so_far.look(b"data: nope") == "malformed"
    assert so_far.look(b'event: error\ndata: {"x":1}') == "error"
    assert so_far.plain
    so_far.look(ev({"reasoning_content": "hmm"})[:-2])
    assert not so_far.plain
