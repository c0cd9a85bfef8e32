"""The commit point: which first events are meaningful, and replaying what was peeked."""
from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from gateway.errors import UpstreamFailure
from policies.resilience.commit import MAX_PEEK_EVENTS, Replay, classify_event, peek


def chat(delta: dict[str, object] | None, finish: str | None = None, **extra: object) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    chunk = {"id": "c", "object": "chat.completion.chunk", "choices": choices, **extra}
    return b"data: " + orjson.dumps(chunk)


@pytest.mark.parametrize(("event", "kind"), [
    (chat({"role": "assistant", "content": ""}), "skip"),
    (chat({"role": "assistant", "content": None, "refusal": None}), "skip"),
    (b'data: {"choices": [{"delta": {"role": "assistant", "content": ""}}]}', "skip"),
    (b": keep-alive", "skip"),
    (chat({"content": "Hi"}), "meaningful"),
    (b'data: {"choices": [{"delta": {"content": "Hi"}}]}', "meaningful"),
    (chat({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": ""}}]}), "meaningful"),
    (chat({}, "stop"), "meaningful"),
    (chat(None, usage={"prompt_tokens": 1}), "meaningful"),
    (b'data: {"choices":[{"text":"Hello","index":0}]}', "meaningful"),
    (b"data: [DONE]", "done"),
    (b'data: {"error": {"message": "overloaded"}}', "error"),
    (b'event: error\ndata: {"type":"error","message":"x"}', "error"),
    (b'event: response.created\ndata: {"type":"response.created","response":{"error":null}}', "skip"),
    (b'event: response.in_progress\ndata: {"type":"response.in_progress"}', "skip"),
    (b'event: x\ndata: {"type":"response.output_text.delta","delta":"Hi"}', "meaningful"),
    (b'event: response.failed\ndata: {"type":"response.failed"}', "error"),
])
def test_classify(event: bytes, kind: str) -> None:
    """Role-only deltas and lifecycle events are skipped; content, tools, finish, errors are not."""
    assert classify_event(event) == kind


async def body_of(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_peek_stops_at_first_content_across_split_chunks() -> None:
    """Events split across chunks are reassembled; reading stops at the first content event."""
    role = chat({"role": "assistant", "content": ""}) + b"\n\n"
    content = chat({"content": "Hi"}) + b"\n\n"
    rest = chat({"content": " there"}) + b"\n\ndata: [DONE]\n\n"
    body = body_of(role[:10], role[10:] + content[:5], content[5:], rest)
    peeked = await peek(body, sse=True)
    assert peeked.verdict == "commit" and len(peeked.chunks) == 3
    replay = Replay(peeked.chunks, body)
    # the peeked chunks leave as one (one write to the client), then the rest as it comes
    assert [c async for c in replay] == [role + content, rest]


async def test_replay_hands_on_a_single_peeked_chunk_as_it_is() -> None:
    """The control: nothing to join, the one chunk is the one read (no copy)."""
    head = b'{"a": 1}'
    replay = Replay([head], body_of(b"more"))
    chunks = [c async for c in replay]
    assert chunks == [head, b"more"] and chunks[0] is head


async def test_peek_error_event_first_and_crlf() -> None:
    """An error as the first meaningful event is reported, CRLF framing included."""
    body = body_of(chat({"role": "assistant", "content": ""}).replace(b"\n", b"\r\n") + b"\r\n\r\n",
                   b'data: {"error": {"message": "boom"}}\r\n\r\n')
    assert (await peek(body, sse=True)).verdict == "error_event"


async def test_peek_ended_and_non_stream() -> None:
    """A stream that ends before any meaningful event is 'ended'; a JSON body commits on its first chunk."""
    assert (await peek(body_of(chat({"role": "assistant"}) + b"\n\n"), sse=True)).verdict == "ended"
    peeked = await peek(body_of(b'{"a":', b"1}"), sse=False)
    assert peeked.verdict == "commit" and peeked.chunks == [b'{"a":']
    assert (await peek(body_of(), sse=False)).verdict == "ended"


async def test_peek_is_bounded() -> None:
    """An unknown format commits after MAX_PEEK_EVENTS skippable events instead of buffering."""
    events = [b": ping\n\n"] * (MAX_PEEK_EVENTS + 10)
    peeked = await peek(body_of(*events), sse=True)
    assert peeked.verdict == "commit" and len(peeked.chunks) == MAX_PEEK_EVENTS


async def test_peek_propagates_body_failures() -> None:
    """A reset while peeking reaches the caller (the retry policy decides)."""
    async def broken() -> AsyncIterator[bytes]:
        yield chat({"role": "assistant", "content": ""}) + b"\n\n"
        raise UpstreamFailure("reset_mid_stream", "gone", committed=True)

    with pytest.raises(UpstreamFailure):
        await peek(broken(), sse=True)


class Tracked:
    def __init__(self, *chunks: bytes, fail: UpstreamFailure | None = None) -> None:
        self.chunks = list(chunks)
        self.fail = fail
        self.closed = False

    def __aiter__(self) -> Tracked:
        return self

    async def __anext__(self) -> bytes:
        if self.chunks:
            return self.chunks.pop(0)
        if self.fail is not None:
            raise self.fail
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closed = True


async def test_replay_close_and_failures_pass_through() -> None:
    """Replay closes the upstream body even unread; failures of the rest reach the reader unchanged."""
    unread = Tracked(b"x")
    await Replay([b"head"], unread).aclose()
    assert unread.closed
    failing = Replay([b"head"], Tracked(b"more", fail=UpstreamFailure("idle_timeout", "stall")))
    got = [await failing.__anext__(), await failing.__anext__()]
    with pytest.raises(UpstreamFailure):
        await failing.__anext__()
    assert got == [b"head", b"more"]
    ended = Replay([b"all"], Tracked(b"never"), ended=True)
    assert [c async for c in ended] == [b"all"]


async def test_peek_cr_line_ends_split_inside_a_line_end() -> None:
    """``\\r`` and ``\\r\\n`` line ends, a ``\\r\\n`` split across chunks: the role delta is still skipped."""
    role = b'data: {"choices": [{"delta": {"role": "assistant", "content": ""}}]}\r\n\r'
    content = b'\ndata: {"choices": [{"delta": {"content": "Hi"}}]}\r\r'
    peeked = await peek(body_of(role, content), sse=True)
    assert peeked.verdict == "commit" and len(peeked.chunks) == 2
    peeked = await peek(body_of(role, b"\n: ping\r\r"), sse=True)
    assert peeked.verdict == "ended"
