from __future__ import annotations

from policies.mcp.store import TtlStore, canonical, catalog_key, result_key


def test_ttl_expiry_and_prefix_drop() -> None:
    now = [0.0]
    store = TtlStore(lambda: now[0], max_entries=2)
    store.put(("s", "t", "a"), 1, 10)
    store.put(("s", "t", "b"), 2, 0)  # ttl 0: not stored
    assert store.get(("s", "t", "a")) == 1 and store.get(("s", "t", "b")) is None
    now[0] = 11
    assert store.get(("s", "t", "a")) is None
    store.put(("s", "t", "a"), 1, 10)
    store.put(("o", "t", "a"), 1, 10)
    assert store.drop_prefix(("s",)) == 1 and store.get(("o", "t", "a")) == 1


def test_lru_bound() -> None:
    store = TtlStore(lambda: 0.0, max_entries=2)
    for i in range(3):
        store.put((str(i),), i, 10)
    assert store.get(("0",)) is None and store.get(("2",)) == 2


def test_keys_canonical_and_namespaced() -> None:
    assert canonical({"b": 1, "a": 2}) == canonical({"a": 2, "b": 1})
    assert result_key("s", "t1", "q", {"a": 1}) != result_key("s", "t2", "q", {"a": 1})
    assert result_key("s", "t", "q", {"a": 1}) != result_key("s", "t", "r", {"a": 1})
    assert catalog_key("s", "t", "tools/list", {}) != catalog_key("s2", "t", "tools/list", {})


def test_bounded_by_bytes() -> None:
    """Values count their JSON size: a store of 4 KiB keeps the newest small results, refuses a value of
    more than a quarter of it, and evicts the oldest when the bytes run out (count alone: 4096 entries of
    any size)."""
    store = TtlStore(lambda: 0.0, max_bytes=4096)
    assert store.put(("s", "t", "small0"), {"text": "x" * 100}, 10)  # control: a small value is kept
    assert not store.put(("s", "t", "big"), {"text": "x" * 2000}, 10)  # > 4096 / 4: not kept
    assert store.get(("s", "t", "big")) is None
    for i in range(1, 10):
        store.put(("s", "t", f"small{i}"), {"text": "x" * 100}, 10)
    assert store.bytes <= 4096
    assert store.get(("s", "t", "small0")) is None and store.get(("s", "t", "small9")) is not None
    store.drop_prefix(("s",))
    assert store.bytes == 0


def test_a_key_keeps_a_digest_of_the_arguments() -> None:
    """A tool called with a megabyte of arguments: its cache key holds 64 characters of them."""
    key = result_key("s", "t", "q", {"blob": "x" * (1 << 20)})
    assert sum(map(len, key)) < 200
    assert key != result_key("s", "t", "q", {"blob": "x" * (1 << 20) + "y"})  # still one key per arguments
