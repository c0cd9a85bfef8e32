"""The Responses dialect of continuation: reading the primary's events, rewriting the fallback's."""
from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import UpstreamFailure
from policies.resilience.continuation_responses import ResponsesRewrite, ResponsesSoFar


def ev(kind: str, seq: int, **fields: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, "sequence_number": seq,
                                                                   **fields})


def primary() -> ResponsesSoFar:
    so_far = ResponsesSoFar()
    events = [ev("response.created", 0, response={"id": "resp_A"}),
              ev("response.output_item.added", 1, item={"id": "msg_A", "type": "message"}),
              ev("response.output_text.delta", 2, item_id="msg_A", output_index=0, delta="Hello"),
              ev("response.output_text.delta", 3, item_id="msg_A", output_index=0, delta=" wor")]
    assert [so_far.look(e) for e in events] == ["ok"] * 4
    return so_far


def test_reader_keeps_ids_text_and_sequence() -> None:
    so_far = primary()
    assert (so_far.response_id, so_far.item_id, so_far.text, so_far.chunks, so_far.sequence) == (
        "resp_A", "msg_A", ["Hello", " wor"], 2, 3)
    assert so_far.plain and so_far.look(b"data: {nope") == "malformed"
    assert so_far.look(ev("error", 4, message="x")) == "error"
    assert so_far.look(ev("response.completed", 5, response={})) == "done" and so_far.done


def test_reader_flags_tool_calls() -> None:
    so_far = primary()
    so_far.look(ev("response.output_item.added", 4, item={"id": "fc_1", "type": "function_call"}))
    assert not so_far.plain


def test_rewrite_drops_the_opening_moves_deltas_and_closes_with_the_whole_text() -> None:
    rewrite = ResponsesRewrite(primary())
    assert rewrite.event(ev("response.created", 0, response={"id": "resp_B"})) == (b"", False)
    out, ended = rewrite.event(ev("response.output_text.delta", 3, item_id="msg_B", output_index=0,
                                  delta="ld"))
    assert not ended
    delta = orjson.loads(out.split(b"data: ")[1])
    assert delta["item_id"] == "msg_A" and delta["sequence_number"] == 4 and delta["delta"] == "ld"
    item = {"id": "msg_B", "type": "message", "content": [{"type": "output_text", "text": "ld"}]}
    out, ended = rewrite.event(ev("response.completed", 9, response={
        "id": "resp_B", "output": [item], "usage": {"output_tokens": 1, "total_tokens": 5}}))
    final = orjson.loads(out.split(b"data: ")[1])["response"]
    assert ended and final["id"] == "resp_A" and final["output"][0]["id"] == "msg_A"
    assert final["output"][0]["content"][0]["text"] == "Hello world"
    assert final["usage"] == {"output_tokens": 3, "total_tokens": 7}


def test_rewrite_refuses_a_broken_continuation() -> None:
    rewrite = ResponsesRewrite(primary())
    with pytest.raises(UpstreamFailure):
        rewrite.event(ev("error", 1, message="x"))
    with pytest.raises(UpstreamFailure):
        rewrite.event(b"data: {nope")
