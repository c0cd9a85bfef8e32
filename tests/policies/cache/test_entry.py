"""The shared store's entry format: small answers as they are, larger ones compressed; both read back."""
from __future__ import annotations

import zlib

import orjson

from policies.cache.entry import COMPRESS_MIN_BYTES, CachedAnswer

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
