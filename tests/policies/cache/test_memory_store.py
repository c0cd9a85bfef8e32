"""The in-memory LRU: bounded by entries and bytes, honours TTLs, evicts least recently used first."""
from __future__ import annotations

from policies.cache.entry import CachedAnswer
from policies.cache.keys import CacheKey
from policies.cache.memory_store import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def answer(size: int = 10) -> CachedAnswer:
    return CachedAnswer(operation="chat", body=b"x" * size, created=0.0)


def test_ttl_and_lru_eviction() -> None:
    """Expired entries vanish; past max_entries the least recently used goes."""
    clock = Clock()
    store = MemoryStore(2, 10**6, clock)
    a, b, c = (CacheKey("t:x", d) for d in "abc")
    store.set(a, answer(), 10)
    store.set(b, answer(), 100)
    assert store.get(a) is not None  # a is now most recent
    store.set(c, answer(), 100)
    assert store.get(b) is None and store.get(a) is not None
    clock.now = 11
    assert store.get(a) is None and len(store) == 1


def test_byte_bound() -> None:
    """The byte bound holds, counting the memoised SSE renderings too; an oversized entry is refused."""
    store = MemoryStore(100, 4000, Clock())  # an entry counts its bytes + ENTRY_OVERHEAD (900)
    store.set(CacheKey("n", "big"), answer(5000), 10)
    assert len(store) == 0
    keys = [CacheKey("n", str(i)) for i in range(5)]
    for key in keys:
        store.set(key, answer(200), 10)
    assert store.bytes <= 4000 and len(store) == 3
    found = store.get(keys[-1])
    assert found is not None
    found[0]._sse_usage = b"y" * 1500  # 3 x 1,100 + 1,500: past the bound once re-measured
    store.get(keys[-1])
    assert store.bytes <= 4000 and len(store) == 2


def test_encode_round_trip() -> None:
    """The Redis encoding is compressed and decodes to the same answer; garbage decodes to None."""
    original = CachedAnswer.from_obj(
        "chat", {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}}, 9.5
    )
    data = original.encode()
    back = CachedAnswer.decode(data)
    assert back is not None and back.body == original.body and back.created == 9.5 and back.tokens == 5
    assert CachedAnswer.decode(b"nope") is None and CachedAnswer.decode(data[:10]) is None


def _raw_stream(content: str) -> bytes:
    head = b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
    return (head + b'"delta":{"content":"' + content.encode() + b'"},"finish_reason":null}]}\n\n'
            + head + b'"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')


def test_a_raw_stream_is_assembled_at_its_first_hit_and_measured_at_once() -> None:
    """The byte count follows the assembly on the hit that made it (the raw bytes out, the body in), not
    at a later touch."""
    store = MemoryStore(100, 10**6, Clock())
    key = CacheKey("n", "raw")
    raw = CachedAnswer.from_stream("chat", _raw_stream("hi"), ["stop"], 0.0)
    packed = len(raw.raw or b"")
    store.set(key, raw, 10)
    before = store.bytes
    found = store.get(key)
    assert found is not None and found[0].body and found[0].raw is None
    assert store.bytes == found[0].size == before - packed + len(found[0].body)


def test_a_raw_stream_that_does_not_assemble_is_dropped_and_counted() -> None:
    store = MemoryStore(100, 10**6, Clock())
    dropped: list[int] = []
    store.on_unusable = lambda: dropped.append(1)
    broken, good = CacheKey("n", "broken"), CacheKey("n", "good")
    store.set(broken, CachedAnswer.from_stream("chat", _raw_stream('bad"'), ["stop"], 0.0), 10)
    store.set(good, CachedAnswer.from_stream("chat", _raw_stream("ok"), ["stop"], 0.0), 10)
    assert store.get(good) is not None and dropped == []  # the control
    assert store.get(broken) is None and dropped == [1] and len(store) == 1
    assert store.bytes == store.get(good)[0].size  # type: ignore[index]
