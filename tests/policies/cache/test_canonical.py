"""Canonical answers from upstream bodies: which are complete, and how deltas accumulate."""
from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.cache import canonical
from policies.cache.canonical import answer_from_json, answer_from_sse, finish_reasons


def sse(*events: dict) -> bytes:  # type: ignore[type-arg]
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def test_json_answers() -> None:
    """Complete answers parse; errors, truncated JSON and wrong shapes do not."""
    assert answer_from_json("chat", b'{"choices":[{"index":0}]}') is not None
    assert answer_from_json("chat", b'{"error":{"message":"x"}}') is None
    assert answer_from_json("chat", b'{"choices":[{"ind') is None
    assert answer_from_json("responses", b'{"object":"response","status":"failed"}') is None
    assert finish_reasons("responses", {"status": "incomplete"}) == ["length"]


def test_deltas_accumulate_like_the_sdk() -> None:
    """Content, reasoning and tool-call argument pieces concatenate; ids and names are kept once."""
    head = {"id": "x", "created": 1, "model": "m"}
    body = sse(
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {**head, "choices": [{"index": 0, "delta": {"reasoning_content": "hm"}}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "lo"}}]},
        {
            **head,
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": ""},
                            }
                        ]
                    },
                }
            ],
        },
        {
            **head,
            "choices": [
                {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}}
            ],
        },
        {
            **head,
            "choices": [
                {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}
            ],
        },
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {**head, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}},
    )
    obj = answer_from_sse("chat", body)
    assert obj is not None
    msg = obj["choices"][0]["message"]
    assert msg["content"] == "Hello" and msg["reasoning_content"] == "hm"
    assert msg["tool_calls"] == [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    ]
    assert obj["choices"][0]["finish_reason"] == "tool_calls"
    assert obj["usage"] == {"prompt_tokens": 1, "completion_tokens": 2}


def test_streamed_tool_call_keeps_null_content_and_ids() -> None:
    """The opening ``"content": ""`` of a tool-call stream becomes the provider's ``null``; ids survive."""
    head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    chunks = [
        {
            **head,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        },
        {
            **head,
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_A",
                                "type": "function",
                                "function": {"name": "f", "arguments": ""},
                            }
                        ]
                    },
                }
            ],
        },
        {
            **head,
            "choices": [
                {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}
            ],
        },
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    data = (
        b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks) + b"data: [DONE]\r\n\r\n"
    )
    obj = answer_from_sse("chat", data)
    assert obj is not None
    message = obj["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"][0]["id"] == "call_A"
    assert message["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}


def test_provider_extras_kept_as_a_non_stream_answer_carries_them() -> None:
    """Azure filter results, Groq ``x_groq`` (merged: id first, usage last), vLLM ``stop_reason: null``."""
    head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    verdict = {"hate": {"filtered": False, "severity": "safe"}}
    answer = answer_from_sse("chat", sse(
        {"id": "", "object": "", "created": 0, "model": "", "choices": [],
         "prompt_filter_results": [verdict]},
        {**head, "x_groq": {"id": "r1"}, "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": "hi"}, "content_filter_results": {}}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "!"}, "content_filter_results": verdict}]},
        {**head, "x_groq": {"id": "r1", "usage": {"queue_time": 0.1}},
         "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": None}]},
    ))
    assert answer is not None
    assert answer["prompt_filter_results"] == [verdict]
    assert answer["x_groq"] == {"id": "r1", "usage": {"queue_time": 0.1}}
    choice = answer["choices"][0]
    assert choice["content_filter_results"] == verdict and "stop_reason" in choice
    assert choice["stop_reason"] is None and choice["message"] == {"role": "assistant", "content": "hi!"}


def test_a_provider_without_ids_gets_none_invented() -> None:
    chunk = {"object": "chat.completion.chunk", "created": 1, "model": "gemini-2.0-flash", "choices": [
        {"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
    answer = answer_from_sse("chat", sse(chunk))
    assert answer is not None and "id" not in answer
    assert answer_from_sse("chat", sse({**chunk, "id": "x"})) is not None  # positive control
    assert answer_from_sse("chat", sse({**chunk, "id": "x"}))["id"] == "x"  # type: ignore[index]


def test_a_long_stream_is_assembled_piece_by_piece() -> None:
    """Thousands of pieces of content, tool arguments, completion text and logprobs, joined once."""
    words = [f" w{i}" for i in range(3000)]
    head = {"id": "c", "object": "chat.completion.chunk", "model": "m"}
    chunks = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]}]
    chunks += [{**head, "choices": [{"index": 0, "delta": {"content": w},
                                     "logprobs": {"content": [{"token": w}]}}]} for w in words]
    first = {"id": "call", "type": "function"}
    calls = [{"index": 0, "function": {"arguments": w}, **(first if not i else {})}
             for i, w in enumerate(words)]
    chunks += [{**head, "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]} for call in calls]
    chunks.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    choice = answer_from_sse("chat", sse(*chunks))["choices"][0]  # type: ignore[index]
    assert choice["message"]["content"] == "".join(words)
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == "".join(words)
    assert choice["logprobs"]["content"] == [{"token": w} for w in words]
    text = [{"id": "c", "object": "text_completion", "choices": [{"index": 0, "text": w}]} for w in words]
    text.append({"id": "c", "object": "text_completion",
                 "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
    completion = answer_from_sse("completions", sse(*text))
    assert completion is not None and completion["choices"][0]["text"] == "".join(words)


def test_openai_padding_is_not_part_of_the_answer() -> None:
    """``obfuscation`` pads each OpenAI chunk on the wire; the stored answer (replayed to non-stream
    clients too) has none. Another provider extra is kept (control)."""
    head = {"id": "x", "created": 1, "model": "m"}
    body = sse(
        {**head, "choices": [{"index": 0, "delta": {"content": "Hi"}}], "obfuscation": "k2",
         "x_groq": {"id": "g"}},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "obfuscation": "Q"},
    )
    answer = answer_from_sse("chat", body)
    assert answer is not None and "obfuscation" not in answer and answer["x_groq"] == {"id": "g"}
    assert answer["choices"][0]["message"]["content"] == "Hi"


@pytest.mark.parametrize("body", [
    b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n',  # the usual: the fast path
    b'data:{"a":1}\n\ndata:  {"b":2}  \n\ndata: [DONE]',  # no space, spaces, no final blank line
    b'data: {"a":1}\r\n\r\ndata: [DONE]\r\n\r\n',  # CRLF
    b': keep-alive\n\ndata: {"a":1}\n\ndata: [DONE]\n\n',  # a comment
    b'event: error\ndata: {"error":{}}\n\n',  # a named error event
    b'data: {"a":\ndata: 1}\n\ndata: [DONE]\n\n',  # one payload on two data lines
    b'data: {"a":1}\n\n\ndata: [DONE]\n\n',  # three newlines
    b'\xef\xbb\xbfdata: {"a":1}\n\ndata: [DONE]\n\n',  # a byte order mark
    b'\n\ndata: {"a":1}\n\n',  # a leading blank line
    b'data: {"a":1}\n\ndata:\n\ndata: [DONE]\n\ndata: {"late":1}\n\n',  # empty data, an event after [DONE]
    b'id: 7\ndata: {"a":1}\n\n',  # another field
    b'data:  [DONE] \n\ndata: \t\n\ndata: {"a":1} \n\ndata:  {"b":2}\n\n',  # padding strip() takes off
    b'data: \n\ndata: {"a":1}\n\n\n\ndata: [DONE]\n\n',  # an empty payload, a blank event
    b'',
])
def test_payloads_are_read_as_the_sse_grammar_says(body: bytes) -> None:
    """The C-speed path for one-line ``data:`` events and the grammar's event-by-event path agree."""
    assert canonical._payloads(body) == canonical.grammar_payloads(body)


_event = st.builds(lambda pre, payload, post: b"data:" + pre + payload + post + b"\n\n",
                   st.sampled_from([b" ", b" ", b"", b"  ", b" \t"]),
                   st.sampled_from([b'{"a":1}', b'{"b": 2}', b"[DONE]", b""]),
                   st.sampled_from([b"", b"", b"", b" ", b"\x0b"]))
_other = st.sampled_from([b": c\n\n", b"\n", b"event: error\n", b"\r\n", b"\xef\xbb\xbf", b"id: 1\n",
                          b"data: x"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_event, _event, _event, _event, _other), max_size=30))
def test_any_body_reads_as_the_sse_grammar_says(parts: list[bytes]) -> None:
    body = b"".join(parts)
    assert canonical._payloads(body) == canonical.grammar_payloads(body)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_event, _event, _event, _event, _other), max_size=30), st.integers(1, 64))
def test_a_body_split_in_steps_reads_the_same(parts: list[bytes], step: int) -> None:
    """A large answer is split into its events a step at a time (the fill's thread holds the GIL in short
    calls): any step, down to a byte, gives what the grammar reads."""
    body = b"".join(parts)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(canonical, "_SPLIT_BYTES", step)
        assert canonical._payloads(body) == canonical.grammar_payloads(body)


def test_one_line_events_take_the_fast_path() -> None:
    """Positive control: the usual body is read by ``_data_lines``; a multi-line event is not."""
    assert canonical._data_lines(b'data: {"a":1}\n\ndata: [DONE]\n\n') == [b'{"a":1}', b"[DONE]"]
    assert canonical._data_lines(b'data: {"a":\ndata: 1}\n\n') is None


def _chunk(content: str | None, finish: str | None = None, **extra: object) -> dict:  # type: ignore[type-arg]
    delta = {} if content is None else {"content": content}
    return {"id": "x", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


def test_stream_reasons_reads_the_usual_stream_from_its_bytes() -> None:
    """A one-choice stream in the providers' form: its finish reason, from the bytes, with text that spells
    a finish reason in between (quotes in a string are escaped: never read as a key)."""
    body = sse(_chunk("say \"finish_reason\":\"length\" "), _chunk("ok"), _chunk(None, "stop"),
               {"id": "x", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}})
    assert canonical.stream_reasons(body) == ["stop"]
    assert finish_reasons("chat", answer_from_sse("chat", body) or {}) == ["stop"]
    assert canonical.stream_reasons(sse(_chunk("a"), _chunk(None, "length"))) == ["length"]
    spaced_nulls = sse(_chunk("a"), _chunk(None, "stop"), _chunk(None)).replace(b'"finish_reason":null',
                                                                              b'"finish_reason": null')
    assert canonical.stream_reasons(spaced_nulls) == ["stop"] == finish_reasons(
        "chat", answer_from_sse("chat", spaced_nulls) or {})


@pytest.mark.parametrize("body", [
    sse(_chunk("a"), _chunk(None, "stop"))[:-len(b"data: [DONE]\n\n")],  # no [DONE]
    sse(_chunk("a"))[:-len(b"data: [DONE]\n\n")] + b"data: [DONE]\n\n" + b"data: {}\n\n",  # [DONE] not last
    sse(_chunk("a"), {"error": {"message": "overloaded"}}, _chunk(None, "stop")),  # an error object
    sse(_chunk("a"), _chunk(None, "error")),  # an error finish
    sse(_chunk("a")),  # no finish at all
    sse(_chunk("a"), _chunk(None, "")),  # an empty finish
    sse(_chunk("a"), _chunk(None, "stop"), _chunk(None)).replace(b'"finish_reason":null}]}\n\ndata: [DONE]',
                                                            b'"finish_reason": "length"}]}\n\ndata: [DONE]'),
    b"event: message\n" + sse(_chunk("a"), _chunk(None, "stop")),  # another line than data
    sse(_chunk("a"), _chunk(None, "stop")).replace(b"\n\ndata: {", b"\n\nevent: error\ndata: {", 1),
    b"data: [1]\n\n" + sse(_chunk("a"), _chunk(None, "stop")),  # a line that is not an object
    b": keep-alive\n\n" + sse(_chunk("a"), _chunk(None, "stop")),  # a comment
    sse(_chunk("a"), _chunk(None, "stop")).replace(b"\n", b"\r\n"),
])
def test_stream_reasons_leaves_any_other_form_to_the_assembly(body: bytes) -> None:
    assert canonical.stream_reasons(body) is None


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.text(alphabet='ab"\\:,{}_ ' + "\u00e9", max_size=12), max_size=5),
       finish=st.sampled_from(["stop", "length", "tool_calls", None]), extra_finish=st.booleans())
def test_stream_reasons_agrees_with_the_assembly_whenever_it_answers(pieces: list[str], finish: str | None,
                                                                    extra_finish: bool) -> None:
    """What the bytes say is what the assembly finds: text full of quotes, backslashes and key-like
    spellings never moves it. (A second finish chunk: the last one wins in both.)"""
    chunks = [_chunk(p) for p in pieces] + [_chunk(None, finish)]
    if extra_finish:
        chunks.append(_chunk('"finish_reason":"length"', "stop"))
    body = sse(*chunks)
    found = canonical.stream_reasons(body)
    assembled = answer_from_sse("chat", body)
    if found is not None:
        assert assembled is not None and finish_reasons("chat", assembled) == found
    else:
        assert finish is None and not extra_finish  # the positive control: every finished stream is read
