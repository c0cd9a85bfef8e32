"""Runs of chunks that differ only in their text, parsed as one: always the answer of one-by-one parsing."""
from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.cache import chunk_runs
from policies.cache.canonical import _chat_from_chunks, _completion_from_chunks
from policies.cache.chunk_runs import Unfit, parse_chunk, parse_chunks

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}


def chunk(content: Any, **choice: Any) -> dict[str, Any]:
    return {**HEAD, "choices": [{"index": 0, "delta": {"content": content}, "logprobs": None,
                                 "finish_reason": None, **choice}]}


def dump(obj: Any, ascii_only: bool = False) -> bytes:
    """Compact JSON as providers write it: orjson's UTF-8, or Python's ``\\uXXXX`` escapes."""
    return json.dumps(obj, separators=(",", ":")).encode() if ascii_only else orjson.dumps(obj)


def one_by_one(operation: str, payloads: list[bytes]) -> Any:
    """The reference: each payload parsed on its own, then assembled."""
    try:
        events = [parse_chunk(p) for p in payloads]
    except Unfit:
        return "unfit"
    return _chat_from_chunks(events) if operation == "chat" else _completion_from_chunks(events)


def in_runs(operation: str, payloads: list[bytes]) -> Any:
    try:
        events = parse_chunks(operation, payloads)
    except Unfit:
        return "unfit"
    return _chat_from_chunks(events) if operation == "chat" else _completion_from_chunks(events)


def test_a_run_becomes_one_chunk_with_the_same_answer() -> None:
    """Positive control: a role chunk, 500 text chunks, a finish chunk -> 4 events, the same answer."""
    payloads = [dump(chunk("", delta={"role": "assistant", "content": ""}))]
    payloads += [dump(chunk(f" tok{i} \"q\" \\ é\n")) for i in range(500)]
    payloads.append(dump({**HEAD, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    events = parse_chunks("chat", payloads)
    assert len(events) == 4  # role, the template's own chunk, the other 499 as one, finish
    assert in_runs("chat", payloads) == one_by_one("chat", payloads)
    assert in_runs("chat", payloads)["choices"][0]["message"]["content"].count("tok") == 500


def test_pieces_in_doubt_are_parsed_one_by_one() -> None:
    """A piece ending in a lone backslash would escape the separator's quote: the run is not merged
    but parsed chunk by chunk, which fails as it always did."""
    good = dump(chunk("a"))
    head, tail = good.split(b'"a"')
    bad = head + b'"x\\' + b'"' + tail  # {"content":"x\"...: not JSON
    assert in_runs("chat", [good, good, bad, good]) == "unfit" == one_by_one("chat", [good, good, bad, good])
    invalid_utf8 = head + b'"\xff"' + tail
    assert in_runs("chat", [good, good, invalid_utf8]) == "unfit"


def test_a_piece_ending_in_a_backslash_is_parsed_alone() -> None:
    """A text ending in a backslash (``\\\\`` in JSON) puts a backslash before a separator's quote: that chunk
    is parsed on its own, the chunks before and after it still as runs."""
    payloads = [dump(chunk(t)) for t in ["a", "b", "c", "C:\\", "d", "e", "f"]]
    payloads.append(dump(chunk("", finish_reason="stop")))
    assert len(parse_chunks("chat", payloads)) == 5  # a, (b c), C:\, (d e f), the finish
    assert in_runs("chat", payloads) == one_by_one("chat", payloads)
    assert in_runs("chat", payloads)["choices"][0]["message"]["content"] == "abcC:\\def"


def test_a_marker_inside_another_string_is_not_a_template() -> None:
    """``"content":"`` first found in a provider extra before the choices: the sentinel probe shows it
    is not the text, so nothing is learnt."""
    obj = {"meta": {"content": "x"}, **chunk("x")}
    payload = dump(obj)
    assert payload.find(b'"content":"') < payload.find(b'"choices"')  # the first marker is the extra's
    parser = chunk_runs._Parser("chat")
    parser.add(payload)
    assert parser.learn_for(payload) is None and parser.template is None
    assert in_runs("chat", [payload] * 3) == one_by_one("chat", [payload] * 3)
    parser.add(dump(chunk("x")))  # the control: a plain chunk, followed by one like it, is a template
    assert parser.learn_for(dump(chunk("y"))) is not None
    assert in_runs("chat", [payload] * 3) == one_by_one("chat", [payload] * 3)


def test_chunks_that_differ_elsewhere_back_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A per-chunk field that is not a hole (a trace id): two templates that match nothing, then 32
    chunks parsed without learning; the answer is the same."""
    payloads = [dump({**chunk(f"t{i}"), "x_trace": i}) for i in range(100)]
    learnt = []
    original = chunk_runs._learn

    def counting(*args: Any) -> Any:
        learnt.append(1)
        return original(*args)

    monkeypatch.setattr(chunk_runs, "_learn", counting)
    assert in_runs("chat", payloads) == one_by_one("chat", payloads)
    assert 6 <= len(learnt) <= 10  # not once per chunk (100)


def test_a_template_is_learnt_only_when_the_next_chunk_may_follow(monkeypatch: pytest.MonkeyPatch) -> None:
    """A short answer (a role chunk, text chunks, a finish chunk) learns once: from the first text chunk,
    when the second one starts like it; the role chunk and the finish chunk, followed by chunks that start
    otherwise (or by nothing), teach nothing (issue 21: each learning parses a probe). The control: the
    run is still found, and the answer is the one-by-one answer."""
    learnt: list[bytes] = []
    original = chunk_runs._learn

    def counting(operation: str, payload: bytes, obj: dict[str, Any]) -> Any:
        learnt.append(payload)
        return original(operation, payload, obj)

    monkeypatch.setattr(chunk_runs, "_learn", counting)
    payloads = [dump(chunk("", delta={"role": "assistant", "content": ""}))]
    payloads += [dump({**chunk(f"t{i}"), "obfuscation": "x" * (i % 5)}) for i in range(18)]
    payloads.append(dump({**HEAD, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    assert len(parse_chunks("chat", payloads)) == 4  # role, the template's own chunk, the run, the finish
    assert learnt == [payloads[1]]
    assert in_runs("chat", payloads) == one_by_one("chat", payloads)


def test_openai_padding_is_a_second_hole() -> None:
    """OpenAI's chunks end with random padding (``obfuscation``, on by default): still one run, with the
    last chunk's padding; the assembled answer has none (a non-stream answer never does)."""
    payloads = [dump({**chunk(f" w{i}"), "usage": None, "obfuscation": "xyz"[: i % 4]}) for i in range(200)]
    payloads.append(dump({**chunk("", finish_reason="stop"), "usage": None, "obfuscation": "Q"}))
    events = parse_chunks("chat", payloads)
    assert len(events) == 3  # the template's chunk, the other 199, the finish
    assert events[1]["obfuscation"] == "xyz"[: 199 % 4]
    assert in_runs("chat", payloads) == one_by_one("chat", payloads)
    assert "obfuscation" not in in_runs("chat", payloads)
    # the padding before the text: not a hole, the chunks are parsed one by one (and agree)
    early = [dump({"obfuscation": "ab"[: i % 3], **chunk(f"t{i}")}) for i in range(20)]
    assert in_runs("chat", early) == one_by_one("chat", early)


@pytest.mark.parametrize("delta", [
    {"content": "a", "tool_calls": [{"index": 0, "function": {"arguments": "{"}}]},
    {"content": "a", "reasoning_content": "hm"},
    {"content": "a", "audio": ["x"]},
])
def test_deltas_that_accumulate_elsewhere_are_not_merged(delta: dict[str, Any]) -> None:
    payloads = [dump({**HEAD, "choices": [{"index": 0, "delta": delta}]})] * 5
    assert len(parse_chunks("chat", payloads)) == 5
    assert in_runs("chat", payloads) == one_by_one("chat", payloads)


def test_logprobs_and_two_choices_are_not_merged() -> None:
    logprobs = [dump(chunk("a", logprobs={"content": [{"token": "a", "logprob": -1}]}))] * 4
    two = [dump({**HEAD, "choices": [{"index": 0, "delta": {"content": "a"}},
                                     {"index": 1, "delta": {"content": "b"}}]})] * 4
    for payloads in (logprobs, two):
        assert len(parse_chunks("chat", payloads)) == 4
        assert in_runs("chat", payloads) == one_by_one("chat", payloads)


def test_completions_text_runs() -> None:
    payloads = [dump({"id": "c", "object": "text_completion", "choices": [{"index": 0, "text": f"w{i} ",
                                                                          "finish_reason": None}]})
                for i in range(50)]
    payloads.append(dump({"id": "c", "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}))
    assert len(parse_chunks("completions", payloads)) == 3
    assert in_runs("completions", payloads) == one_by_one("completions", payloads)


def test_responses_events_are_parsed_one_by_one() -> None:
    payloads = [dump({"type": "response.output_text.delta", "delta": "x"})] * 3
    assert len(parse_chunks("responses", payloads)) == 3


texts = st.text(alphabet=st.sampled_from(list('ab "\\\n/é\u2028😀\x00')), max_size=6)
plain = st.builds(lambda t, a: dump(chunk(t), a), texts, st.booleans())
padded = st.builds(lambda t, p, a: dump({**chunk(t), "obfuscation": p}, a), texts, texts, st.booleans())
other = st.one_of(
    st.builds(lambda t: dump(chunk(t, finish_reason="stop")), texts),
    st.builds(lambda t: dump({**chunk(t), "usage": {"total_tokens": 3}}), texts),
    st.builds(lambda t, i: dump({**chunk(t), "obfuscation": i}), texts, st.text(max_size=3)),
    st.builds(lambda t, i: dump({**chunk(t), "obfuscation": i, "usage": None}), texts, texts),
    st.builds(lambda t: dump({**HEAD, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                          "content": t}}]}), texts),
    st.builds(lambda t: dump(chunk(t, logprobs={"content": [{"token": t}]})), texts),
)


def splice(text: str, junk: bytes) -> bytes:
    """A plain chunk with ``junk`` put at the start of its text, as raw bytes."""
    return dump(chunk(text)).replace(b'"content":"', b'"content":"' + junk, 1)


# Escapes that keep the chunk valid, and bytes that break it (quotes, lone backslashes, bad UTF-8).
valid_splice = st.builds(splice, texts, st.sampled_from([b"\\\\", b"\\n", b'\\"', b"\\u00e9", b"\\/"]))
broken = st.one_of(
    st.builds(splice, texts, st.sampled_from([b"\\", b'"', b"\\u12", b"\xff", b'\\\\"'])),
    st.sampled_from([b'{"choices":[', b"[1]", b'{"error":{"message":"x"}}', b"null"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(plain, plain, plain, plain, other, valid_splice), max_size=80),
       st.just("chat"))
def test_the_same_answer_as_one_by_one(payloads: list[bytes], operation: str) -> None:
    assert in_runs(operation, payloads) == one_by_one(operation, payloads)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(plain, valid_splice, padded), min_size=2, max_size=80))
def test_long_runs_the_same_answer(payloads: list[bytes]) -> None:
    finish = dump(chunk("", finish_reason="stop"))
    assert in_runs("chat", [*payloads, finish]) == one_by_one("chat", [*payloads, finish])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(plain, plain, plain, valid_splice, broken), max_size=20))
def test_the_same_failure_as_one_by_one(payloads: list[bytes]) -> None:
    assert in_runs("chat", payloads) == one_by_one("chat", payloads)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(plain, valid_splice, padded, broken), min_size=2, max_size=80), st.integers(1, 7))
def test_runs_decoded_in_batches_read_the_same(payloads: list[bytes], batch: int) -> None:
    """A long run's pieces are decoded a batch at a time (the fill's thread holds the GIL in short calls):
    any batch size gives the answer, or the failure, of parsing each chunk."""
    finish = dump(chunk("", finish_reason="stop"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(chunk_runs, "_DECODE_PIECES", batch)
        assert in_runs("chat", [*payloads, finish]) == one_by_one("chat", [*payloads, finish])
