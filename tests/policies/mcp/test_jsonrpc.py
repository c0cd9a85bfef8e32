from __future__ import annotations

import orjson
import pytest

from policies.mcp import jsonrpc as rpc


def test_message_parsing() -> None:
    msg = rpc.message({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "q"}})
    assert msg.is_request and msg.tool == "q"
    note = rpc.message({"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert not note.is_request and note.tool is None
    for bad in ({"id": 1}, {"jsonrpc": "2.0", "method": 3}, {"jsonrpc": "2.0", "method": "x", "params": []},
                {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}}):
        with pytest.raises(rpc.BadMessage) as info:
            rpc.message(bad)
        assert info.value.code == rpc.INVALID_REQUEST
    with pytest.raises(rpc.BadMessage) as info:
        rpc.parse(b"{nope")
    assert info.value.code == rpc.PARSE_ERROR


def test_answers() -> None:
    assert orjson.loads(rpc.fallback(3, "down")) == {
        "jsonrpc": "2.0", "id": 3, "result": {"content": [{"type": "text", "text": "down"}], "isError": True}}
    assert orjson.loads(rpc.error(None, -1, "x"))["error"] == {"code": -1, "message": "x"}


def test_sse_reader_handles_split_events() -> None:
    reader = rpc.SseReader()
    assert reader.feed(b"event: message\r\ndata: {\"a\"") == []
    assert reader.feed(b": 1}\r\n\r\nid: 2\ndata: nope\n\n: comment\n\n") == [{"a": 1}]
    assert rpc.SseReader().feed(rpc.sse_event(b'{"x":1}')) == [{"x": 1}]


def test_json_reader_reads_a_whole_body_once() -> None:
    reader = rpc.JsonReader()
    assert reader.feed(b'{"jsonrpc": "2.0", "id": 1, ') == []
    assert reader.feed(b'"result": {}}') == []
    assert reader.end() == [{"jsonrpc": "2.0", "id": 1, "result": {}}]
    batch = rpc.JsonReader()
    batch.feed(b'[{"id": 1}, {"id": 2}]')
    assert batch.end() == [{"id": 1}, {"id": 2}]
    big = rpc.JsonReader(limit=4)
    big.feed(b'{"id": 1}')  # past the limit: not kept, not read
    assert big.end() == []
    bad = rpc.JsonReader()
    bad.feed(b"{nope")
    assert bad.end() == []
