"""gateway.right_size: bytes kept beyond a request hold no more memory than their length."""
from __future__ import annotations

import tracemalloc

import orjson

from gateway.right_size import right_sized

ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}


def held(make: object) -> float:
    """Bytes allocated per object by ``make()``, 2,000 objects kept."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [make() for _ in range(2000)]  # type: ignore[operator]
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(kept) == 2000
    return (after - before) / 2000


def test_a_small_result_is_copied_into_its_own_size() -> None:
    raw = orjson.dumps(ANSWER)
    assert right_sized(raw) == raw and right_sized(raw) is not raw
    assert held(lambda: right_sized(orjson.dumps(ANSWER))) < len(raw) + 120


def test_orjson_keeps_a_4_kib_buffer_for_a_small_result() -> None:
    """The control: what ``right_sized`` is for (orjson 3.12+). If a later orjson sizes its results, this
    fails, and ``right_sized`` may go."""
    assert len(orjson.dumps(ANSWER)) < 250
    assert held(lambda: orjson.dumps(ANSWER)) > 4000
