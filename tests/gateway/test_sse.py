"""The stream inspector: TTFT, gaps, usage, finish reasons, [DONE] and errors, across chunk splits."""
from __future__ import annotations

import itertools
import json

import orjson
import pytest

from gateway.sse import StreamInspector, one_line_events


def _event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _chat_stream() -> list[bytes]:
    chunks = [
        _event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}], "model": "m-1"})
    ]
    for word in ("Hello", " world"):
        chunks.append(_event({"choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}))
    chunks.append(_event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    chunks.append(_event({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2,
                                                   "prompt_tokens_details": {"cached_tokens": 3}}}))
    chunks.append(b"data: [DONE]\n\n")
    return chunks


def test_reads_ttft_usage_finish_and_done() -> None:
    """The role-only delta is not a token; content deltas are; usage and [DONE] are found."""
    ticks = itertools.count(1.0)
    insp = StreamInspector(clock=lambda: float(next(ticks)))
    for chunk in _chat_stream():
        insp.feed(chunk)
    assert insp.first_token_at == 1.0 and insp.content_chunks == 2 and list(insp.gaps) == [1.0]
    assert insp.usage is not None and (
        insp.usage.prompt,
        insp.usage.completion,
        insp.usage.cached_prompt,
    ) == (7, 2, 3)
    assert insp.finish_reasons == ["stop"] and insp.model == "m-1"
    assert insp.done and insp.clean_end


def test_a_long_streams_gaps_cost_eight_bytes_each() -> None:
    """Issue 21: an open stream's inter-token gaps are doubles in one buffer (8 bytes a token), not a list of
    float objects (~32 bytes a token: a 10,000-token generation held ~320 KB until its end)."""
    ticks = itertools.count(1.0)
    insp = StreamInspector(clock=lambda: float(next(ticks)))
    token = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'
    for _ in range(1001):
        insp.feed(token)
    assert len(insp.gaps) == 1000 and sum(insp.gaps) == 1000.0  # control: every gap is recorded
    assert insp.gaps.itemsize == 8 and insp.gaps.typecode == "d"


def test_events_split_across_chunks_are_reassembled() -> None:
    """Byte-at-a-time delivery finds the same usage and [DONE]."""
    insp = StreamInspector(clock=lambda: 0.5)
    for byte in b"".join(_chat_stream()):
        insp.feed(bytes([byte]))
    assert insp.usage is not None and insp.usage.prompt == 7
    assert insp.done and insp.finish_reasons == ["stop"]


def test_error_event_is_not_a_clean_end() -> None:
    """An error event means the stream failed, even if [DONE] follows."""
    insp = StreamInspector(clock=lambda: 0.0)
    insp.feed(b'data: {"error": {"message": "boom", "type": "server_error"}}\n\n')
    insp.feed(b"data: [DONE]\n\n")
    assert insp.error_event and not insp.clean_end


def test_responses_api_events() -> None:
    """Responses API: output_text.delta is a token; response.completed carries usage and ends."""
    insp = StreamInspector(clock=lambda: 2.0)
    insp.feed(b'event: response.created\ndata: {"type":"response.created","response":{"model":"m"}}\n\n')
    insp.feed(
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"Hi"}\n\n'
    )
    insp.feed(b'event: response.completed\ndata: {"type":"response.completed","response":{"model":"m",'
              b'"usage":{"input_tokens":4,"output_tokens":1,"output_tokens_details":{"reasoning_tokens":1}}}}\n\n')
    assert insp.first_token_at == 2.0
    assert insp.usage is not None and insp.usage.prompt == 4 and insp.usage.reasoning == 1
    assert insp.clean_end


def test_stream_without_done_is_not_clean() -> None:
    """A stream cut before [DONE] is not a clean end."""
    insp = StreamInspector(clock=lambda: 0.0)
    for chunk in _chat_stream()[:3]:
        insp.feed(chunk)
    assert not insp.clean_end


def _spaced(obj: object) -> bytes:
    import json
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _variants() -> dict[str, bytes]:
    """The same chat stream in the shapes providers really send."""
    compact = b"".join(_chat_stream())
    spaced = b"".join(_spaced(orjson.loads(c[6:])) if c.startswith(b"data: {") else c for c in _chat_stream())
    multi = compact.replace(b'data: {"choices"', b'data: {\ndata: "choices"')  # multi-line data fields
    return {
        "compact": compact,
        "spaced": spaced,
        "crlf": spaced.replace(b"\n", b"\r\n"),
        "cr": compact.replace(b"\n", b"\r"),
        "multiline": multi,
        "comments": b": keep-alive\n\n"
        + compact.replace(b"data: [DONE]", b"id: 9\nevent: done\n: hi\ndata: [DONE]"),
    }


def test_tolerant_reader_every_shape_and_every_split() -> None:
    """Spaced JSON, CRLF/CR line ends, multi-line data, comments and id/event lines, split at every byte."""
    for name, stream in _variants().items():
        for size in (1, 3, 7, len(stream)):
            insp = StreamInspector(clock=lambda: 1.0)
            for at in range(0, len(stream), size):
                insp.feed(stream[at : at + size])
            assert insp.content_chunks >= 1, (name, size)
            assert insp.usage is not None and (insp.usage.prompt, insp.usage.cached_prompt) == (7, 3), (
                name,
                size,
            )
            assert insp.finish_reasons == ["stop"] and insp.model == "m-1" and insp.clean_end, (name, size)


def test_token_counts_once_per_chunk_and_responses_spaced() -> None:
    """Two content events in one chunk are one token arrival; spaced Responses events are read too."""
    insp = StreamInspector(clock=lambda: 3.0)
    insp.feed(_chat_stream()[1] + _chat_stream()[2])
    assert insp.content_chunks == 1
    insp = StreamInspector(clock=lambda: 3.0)
    insp.feed(
        b'event: response.output_text.delta\r\n'
        b'data: {"type": "response.output_text.delta", "delta": "x"}\r\n\r\n'
    )
    insp.feed(
        b'event: response.completed\r\ndata: {"type": "response.completed", "response": {"model": "m", '
        b'"usage": {"input_tokens": 4, "output_tokens": 2}}}\r\n\r\n'
    )
    assert (
        insp.first_token_at == 3.0
        and insp.usage is not None
        and insp.usage.completion == 2
        and insp.clean_end
    )


def test_named_error_event_and_splitter_rest() -> None:
    """``event: error`` fails the stream; the splitter hands back an unterminated tail once."""
    from gateway.sse import EventSplitter, parse_event

    insp = StreamInspector(clock=lambda: 0.0)
    insp.feed(b'event: error\ndata: {"message": "x"}\n\n')
    assert insp.error_event
    split = EventSplitter()
    assert split.events(b"data: a\r\n\r\ndata: b\r") == [b"data: a"]
    assert split.events(b"\ndata: c\n") == []
    assert split.rest() == b"data: b\ndata: c\n" and split.rest() == b""
    assert parse_event(b"id: 1\nevent: x\ndata:a\ndata: b\n: note") == (b"x", b"a\nb")


def _spaced(obj: dict) -> bytes:  # type: ignore[type-arg]
    return b"data: " + json.dumps(obj).encode() + b"\n\n"  # Python's default: ": " and ", "


def test_spaced_json_fast_path_agrees_with_the_parser() -> None:
    """Events in ``json.dumps`` spacing: tokens, role-only deltas, finish and usage come out right,
    whether the byte short-cut or the parser handles them (mixed spacing falls back to the parser)."""
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    role = _spaced({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "finish_reason": None}]})
    word = _spaced({**head, "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
                    "usage": None})
    call = _spaced({**head, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "t"}]},
                                         "finish_reason": None}]})
    mixed = word.replace(b'"content": "hi"', b'"content":"hi"')  # finish spaced, content compact
    end = _spaced({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    usage = _spaced({**head, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    ticks = itertools.count(1.0)
    insp = StreamInspector(clock=lambda: float(next(ticks)))
    for chunk in (role, word, call, mixed, end, usage, b"data: [DONE]\n\n"):
        insp.feed(chunk)
    assert insp.content_chunks == 3 and insp.first_token_at == 1.0  # word, call, mixed; not the role delta
    assert insp.finish_reasons == ["stop"] and insp.model == "m" and insp.clean_end
    assert insp.usage is not None and (insp.usage.prompt, insp.usage.completion) == (3, 4)
    responses = StreamInspector(clock=lambda: 1.0)
    responses.feed(_spaced({"type": "response.output_text.delta", "delta": "x", "sequence_number": 3}))
    assert responses.content_chunks == 1


def _chunk(i: int, delta: dict[str, object], reason: object = None, **extra: object) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": reason}
    return _event({"id": "c", "model": "m-1", "choices": [choice], "usage": None, **extra})


BULK_BLOCKS = {
    "tokens only (the bulk path)": [_chunk(i, {"content": f" w{i}"}) for i in range(8)],
    "a role delta first": [_chunk(0, {"role": "assistant", "content": ""}),
                           *(_chunk(i, {"content": f" w{i}"}) for i in range(1, 8))],
    "a finish in the middle": [*(_chunk(i, {"content": "x"}) for i in range(4)), _chunk(4, {}, "stop"),
                               *(_chunk(i, {"content": "y"}) for i in range(5, 8))],
    "usage at the end": [*(_chunk(i, {"content": "x"}) for i in range(6)),
                         _event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 6}})],
    "an error event": [*(_chunk(i, {"content": "x"}) for i in range(6)),
                       b'event: error\ndata: {"error": {}}\n\n'],
    "[DONE] last": [*(_chunk(i, {"content": "x"}) for i in range(6)), b"data: [DONE]\n\n"],
    "spaced JSON": [b"data: " + json.dumps({"model": "m-1", "choices": [
        {"index": 0, "delta": {"content": "z"}, "finish_reason": None}]}).encode() + b"\n\n"] * 6,
    "two choices a chunk": [_event({"model": "m-1", "choices": [
        {"index": 0, "delta": {"content": "a"}, "finish_reason": None},
        {"index": 1, "delta": {"content": "b"}, "finish_reason": "stop" if i == 5 else None}]})
        for i in range(6)],
}


def _inspect(blocks: list[bytes], bulk: bool, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    if not bulk:
        monkeypatch.setattr(StreamInspector, "_bulk", lambda self, block, usage_free=False: False)
    ticks = itertools.count(1.0)
    insp = StreamInspector(clock=lambda: float(next(ticks)))
    insp.feed(_chunk(0, {"role": "assistant"}))  # the model is known before the bulk of the stream
    for block in blocks:
        insp.feed(block)
    monkeypatch.undo()
    return {name: getattr(insp, name) for name in ("first_token_at", "last_token_at", "usage", "usage_events",
            "finish_reasons", "model", "done", "error_event", "content_chunks")} | {"gaps": list(insp.gaps)}


@pytest.mark.parametrize("name", list(BULK_BLOCKS))
def test_a_chunk_of_many_events_reads_the_same_in_bulk(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk of many events (a fast provider, a slow reader) proven plain by counts is not looked at
    event by event; whatever the chunk holds, the record is the same as looking at each event."""
    events = BULK_BLOCKS[name]
    blocks = [b"".join(events), b"".join(events)]
    assert _inspect(blocks, True, monkeypatch) == _inspect(blocks, False, monkeypatch)


def test_the_bulk_path_is_taken_for_a_plain_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    original = StreamInspector._bulk

    def spy(self: StreamInspector, block: bytes, usage_free: bool = False) -> bool:
        seen.append(original(self, block, usage_free))
        return seen[-1]

    monkeypatch.setattr(StreamInspector, "_bulk", spy)
    insp = StreamInspector(clock=lambda: 1.0)
    insp.feed(_chunk(0, {"role": "assistant"}))
    insp.feed(b"".join(BULK_BLOCKS["tokens only (the bulk path)"]))
    insp.feed(b"".join(BULK_BLOCKS["a finish in the middle"]))  # control: looked at event by event
    assert seen == [True, False] and insp.content_chunks == 2 and insp.finish_reasons == ["stop"]


@pytest.mark.parametrize("spacing", ["compact", "spaced"])
def test_a_finish_before_a_null_finish_in_one_event_is_read(spacing: str) -> None:
    """Two choices in one event, the first finishing, the second still streaming: the byte short-cut must
    not take the event for a plain token (its first ``finish_reason`` is the one it checks); a finish after
    the null one (the positive control) was always read."""
    for reasons, expected in ((("stop", None), ["stop"]), ((None, "length"), ["length"])):
        obj = {"model": "m-1", "choices": [
            {"index": 0, "delta": {"content": "a"}, "finish_reason": reasons[0]},
            {"index": 1, "delta": {"content": "b"}, "finish_reason": reasons[1]}]}
        event = _event(obj) if spacing == "compact" else b"data: " + json.dumps(obj).encode() + b"\n\n"
        insp = StreamInspector(clock=lambda: 1.0)
        insp.feed(_chunk(0, {"role": "assistant"}))  # the model known: the short-cut is open
        insp.feed(event)
        assert insp.finish_reasons == expected and insp.content_chunks == 1, reasons


_STREAM_PATH = ("gateway/sse.py", "gateway/produced.py", "policies/resilience/commit.py",
                "policies/usage/layer.py", "policies/cache/canonical.py")


def _bytes_in_bytes(source: str) -> list[int]:
    """Lines testing a bytes literal with ``in``/``not in`` (CPython 3.11 builds a TypeError for each)."""
    import ast

    return [node.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Compare)
            and isinstance(node.left, ast.Constant) and isinstance(node.left.value, bytes)
            and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops)]


def test_the_stream_path_tests_no_bytes_literal_with_in() -> None:
    """Issue 21: ``b"\\r" in chunk`` costs ~1,700 instructions on CPython 3.11 (the needle is first tried as
    an integer, and the TypeError's message formatted); the per-chunk readers use ``CR in chunk`` or
    ``find``. Control: the check finds both spellings in a sample."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    assert _bytes_in_bytes('x = b"\\r" in c\ny = 1\nz = b"ab" not in c\nw = 13 in c') == [1, 3]  # the control
    found = {path: lines for path in _STREAM_PATH if (lines := _bytes_in_bytes((root / path).read_text()))}
    assert found == {}


@pytest.mark.parametrize(("block", "events"), [
    (b"data: {}\n\n", 1),
    (b"data: {}\n\ndata: {}\n\ndata: [DONE]\n\n", 3),
    (b"data: {}\n\nevent: error\ndata: {}\n\n", 0),  # a second line in an event
    (b"data: {}\n\n: a comment\n\n", 0),  # an event that is not a data line
    (b"data: {}\n\n\ndata: {}\n\n", 0),  # a blank line too many
    (b"data: {}\n\ndata: {}\n", 0),  # not ended by a blank line
    (b"data:{}\n\n", 0),  # no space: not the providers' spelling
    (b"", 0),
])
def test_one_line_events_are_counted_and_anything_else_is_not(block: bytes, events: int) -> None:
    assert one_line_events(block) == events


def _usage_read(blocks: list[bytes], vouch_each: bool) -> object:
    insp = StreamInspector(clock=lambda: 1.0)
    insp.feed(_chunk(0, {"role": "assistant"}))
    for block in blocks:
        if vouch_each:
            insp.vouched = block
        insp.feed(block)
    return insp.usage


@pytest.mark.parametrize("many", [False, True])
def test_a_vouched_chunk_is_not_searched_for_usage_and_only_that_chunk(many: bool) -> None:
    """The usage stripper vouches for the chunks it emptied of usage keys: the inspector then skips its
    search (shown by a chunk vouched for falsely: its usage is not read). The mark is for that very object,
    once: an equal chunk, or the same one fed again, is searched as before."""
    events = [_chunk(i, {"content": "x"}) for i in range(6 if many else 1)]
    block = b"".join(events).replace(b'"usage":null', b'"usage":{"prompt_tokens":3,"completion_tokens":1}')
    assert _usage_read([block], vouch_each=False) is not None  # the control: an unvouched chunk is read
    assert _usage_read([block], vouch_each=True) is None
    insp = StreamInspector(clock=lambda: 1.0)
    insp.feed(_chunk(0, {"role": "assistant"}))
    insp.vouched = bytes(bytearray(block))  # equal bytes, another object
    insp.feed(block)
    assert insp.usage is not None
    insp.usage = None
    insp.vouched = block
    insp.feed(b"data: {}\n\n")  # the next chunk was another one: the mark is gone
    insp.feed(block)
    assert insp.usage is not None


@pytest.mark.parametrize("name", list(BULK_BLOCKS))
def test_vouched_usage_free_chunks_read_as_unvouched_ones(name: str) -> None:
    """What the stripper vouches for (no usage key left) reads exactly as it does unvouched."""
    blocks = [b"".join(BULK_BLOCKS[name]).replace(b',"usage":null', b"")] * 2
    if any(b'"usage"' in block for block in blocks):
        blocks = [block for block in blocks if b'"usage"' not in block] or [b"data: {}\n\n"]

    def record(vouch_each: bool) -> dict[str, object]:
        ticks = itertools.count(1.0)
        insp = StreamInspector(clock=lambda: float(next(ticks)))
        insp.feed(_chunk(0, {"role": "assistant"}))
        for block in blocks:
            if vouch_each:
                insp.vouched = block
            insp.feed(block)
        return {name: getattr(insp, name) for name in ("first_token_at", "last_token_at", "finish_reasons",
                "model", "done", "error_event", "content_chunks")} | {"gaps": list(insp.gaps)}

    assert record(True) == record(False)
