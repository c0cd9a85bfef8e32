"""The shared store's entry format: small answers as they are, larger ones compressed; both read back."""
from __future__ import annotations

import zlib

import orjson

from policies.cache.entry import COMPRESS_MIN_BYTES, RAW_MAX_BYTES, CachedAnswer

USAGE = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}


def answer(content: str) -> CachedAnswer:
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
    obj = {"id": "c1", "object": "chat.completion", "model": "m", "choices": [choice], "usage": USAGE}
    found = CachedAnswer.from_obj("chat", obj, created=12.5)
    found.text = "the question"
    return found


def test_small_answers_are_stored_plain_and_read_back() -> None:
    small = answer("hi")
    data = small.encode()
    assert len(small.body) < COMPRESS_MIN_BYTES and data.startswith(b"GWC0") and small.body in data
    back = CachedAnswer.decode(data)
    assert back is not None and back.body == small.body and back.created == 12.5
    assert back.text == "the question" and back.usage is not None and back.usage.total == 4


def test_large_answers_are_compressed_and_read_back() -> None:
    large = answer("word " * 2000)
    data = large.encode()
    assert data.startswith(b"GWC1") and len(data) < len(large.body) // 4
    back = CachedAnswer.decode(data)
    assert back is not None and back.body == large.body and back.usage is not None


def test_entries_written_compressed_before_are_still_read() -> None:
    """Entries from an older gateway (every size compressed) stay readable during a rolling upgrade."""
    small = answer("hi")
    head = orjson.dumps({"op": "chat", "created": 1.0, "ct": "application/json", "text": "", "tok": None})
    old = b"GWC1" + zlib.compress(head + b"\n" + small.body, 3)
    back = CachedAnswer.decode(old)
    assert back is not None and back.body == small.body


def test_damaged_or_foreign_data_is_a_miss() -> None:
    assert CachedAnswer.decode(b"GWC1not zlib") is None
    assert CachedAnswer.decode(b"GWC0{not json\n{}") is None
    assert CachedAnswer.decode(b"GWC0" + orjson.dumps({"no": "op"}) + b"\n{}") is None
    assert CachedAnswer.decode(b'{"id":"x"}') is None


def test_an_entry_holds_about_what_the_cache_counts() -> None:
    """The exact cache's byte bound bounds its memory: a small answer's entry (its bytes, the object, its
    usage) holds less than its ``size`` (which also counts the key and the store's slot). Before
    ``right_sized`` its body alone held orjson's 4 KiB buffer, ~5x what was counted."""
    import tracemalloc

    obj = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "message": {
        "role": "assistant", "content": "a short answer"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [CachedAnswer.from_obj("chat", obj, 0.0) for _ in range(1000)]
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / 1000
    finally:
        tracemalloc.stop()
    assert len(kept[0].body) < 300 < per_entry  # control: the object and its usage are measured
    assert per_entry < kept[0].size


def _stream(content: str, finish: str = "stop", usage: bool = True) -> bytes:
    head = {"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "m"}
    events = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None}]}]
    events += [{**head, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
               for word in content.split(" ")]
    events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    if usage:
        events.append({**head, "choices": [], "usage": USAGE})
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def test_a_raw_stream_is_assembled_on_first_use_to_the_body_an_eager_fill_stored() -> None:
    from policies.cache.canonical import answer_from_sse

    for content in ("hello there", "word " * 30):
        data = _stream(content)
        entry = CachedAnswer.from_stream("chat", data, ["stop"], 3.0)
        assert entry.body == b"" and entry.usage is None and entry.raw == data and not entry.packed
        assert entry.size == len(data) + 900
        assert entry.ready() and entry.ready()
        eager = CachedAnswer.from_obj("chat", answer_from_sse("chat", data) or {}, 3.0)
        assert entry.body == eager.body and entry.usage == eager.usage and entry.tokens == 4
        assert entry.raw is None and entry.size == eager.size  # once assembled: what an eager store held


def test_a_raw_stream_that_does_not_assemble_as_read_is_not_ready() -> None:
    assert not CachedAnswer.from_stream("chat", _stream("hi"), ["length"], 0.0).ready()  # another reason
    broken = _stream("hi").replace(b'"content":"hi"', b'"content":"hi')
    assert not CachedAnswer.from_stream("chat", broken, ["stop"], 0.0).ready()
    assert CachedAnswer.from_stream("chat", _stream("hi"), ["stop"], 0.0).ready()  # the control


def test_raw_streams_are_encoded_raw_and_read_back_raw() -> None:
    """A plain head, then the stream: as is below 4 KiB (``GWC2``), compressed from there (``GWC3``, read
    back compressed and inflated by the first hit). Read back, assembled on first use. An assembled entry
    is written in the canonical form, which gateways before raw entries read too."""
    for content, magic in (("hi", b"GWC2"), ("word " * 30, b"GWC3")):
        entry = CachedAnswer.from_stream("chat", _stream(content), ["stop"], 5.0)
        entry.text = "q"
        data = entry.encode()
        assert data.startswith(magic)
        back = CachedAnswer.decode(data)
        assert back is not None and back.stream() == entry.stream() and back.body == b""
        assert back.reasons == ("stop",) and back.packed == (magic == b"GWC3")
        assert entry.raw is not None and data.endswith(b"\n" + entry.raw) == (magic == b"GWC2")
        assert entry.encode().startswith(magic)  # written raw until assembled
        assert back.text == "q" and back.created == 5.0 and back.ready() and back.usage is not None
        assert back.encode().startswith((b"GWC0", b"GWC1"))  # assembled: the canonical form
        assert CachedAnswer.decode(back.encode()) is not None


def test_damaged_raw_entries_are_a_miss() -> None:
    good = CachedAnswer.from_stream("chat", _stream("hi"), ["stop"], 0.0).encode()
    head, _, body = good[4:].partition(b"\n")
    assert CachedAnswer.decode(good) is not None  # the control
    for old, new in ((b'"fr":["stop"]', b'"fr":"stop"'), (b'"op":"chat"', b'"op":"responses"')):
        assert CachedAnswer.decode(b"GWC2" + head.replace(old, new) + b"\n" + body) is None
    assert CachedAnswer.decode(b"GWC2" + head + b"\n" + b" " * (RAW_MAX_BYTES + 1)) is None  # never written
    packed = zlib.compress(body)
    assert CachedAnswer.decode(b"GWC3" + head + b"\n" + packed).ready()  # type: ignore[union-attr]
    for bad in (b"not zlib", zlib.compress(b" " * (RAW_MAX_BYTES + 1)), packed[:-3]):  # damaged, a bomb, cut
        back = CachedAnswer.decode(b"GWC3" + head + b"\n" + bad)
        assert back is not None and not back.ready()  # a miss at its hit (``dropped_unassemblable``)
    assert not CachedAnswer.decode(b"GWC2" + head + b"\n" + body[:-3]).ready()  # type: ignore[union-attr]
