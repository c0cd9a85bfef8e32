"""The in-memory vector index: per-namespace cosine search, TTLs, a global bound."""
from __future__ import annotations

import numpy as np

from policies.cache.entry import CachedAnswer
from policies.cache.guards import question_digest
from policies.cache.vector_index import VectorIndex


def unit(*v: float) -> np.ndarray:
    a = np.array(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def ans(tag: str) -> CachedAnswer:
    return CachedAnswer(operation="chat", body=tag.encode(), created=0.0)


def test_search_is_per_namespace_and_best_first() -> None:
    """Only the namespace's own vectors are candidates, best score first."""
    now = [0.0]
    index = VectorIndex(100, lambda: now[0])
    index.add("a", unit(1, 0, 0), ans("x"), "x", 10)
    index.add("a", unit(1, 1, 0), ans("y"), "y", 10)
    index.add("b", unit(1, 0, 0), ans("z"), "z", 10)
    found = list(index.candidates("a", unit(1, 0.1, 0)))
    assert [i.text for _, i in found] == ["x", "y"] and found[0][0] > 0.99
    assert list(index.candidates("c", unit(1, 0, 0))) == []
    now[0] = 11
    assert list(index.candidates("a", unit(1, 0, 0))) == [] and len(index) == 1


def test_global_bound_evicts_oldest() -> None:
    """Past max_entries the oldest entry goes, whatever its namespace; rows are reused."""
    index = VectorIndex(2, lambda: 0.0)
    for i, ns in enumerate("aab"):
        index.add(ns, unit(1, i, 0), ans(str(i)), str(i), 10)
    assert len(index) == 2
    assert [i.text for _, i in index.candidates("a", unit(1, 0, 0))] == ["1"]


def test_candidates_go_past_top_k_when_asked() -> None:
    """Ten near-duplicates scoring higher (the guards would veto them) do not hide the 11th entry:
    a caller that keeps reading gets every entry, best first, each once."""
    index = VectorIndex(100, lambda: 0.0)
    for i in range(10):
        index.add("a", unit(1, 0.01 * i, 0), ans(f"dup{i}"), f"dup{i}", 10)
    index.add("a", unit(1, 0.5, 0), ans("right"), "right", 10)
    found = [i.text for _, i in index.candidates("a", unit(1, 0, 0))]
    assert found == [f"dup{i}" for i in range(10)] + ["right"]
    first = next(iter(index.candidates("a", unit(1, 0, 0))))  # control: lazily, the best comes first
    assert first[1].text == "dup0"


def test_bounded_in_bytes_and_long_questions_kept_cut() -> None:
    """Past max_bytes the oldest entries go; a 1 MB question is kept as 4 KiB plus its digest,
    and ``bytes`` (gateway_cache_bytes{kind="semantic"}) reports what is held."""
    reported: list[tuple[int, int]] = []
    index = VectorIndex(100, lambda: 0.0, max_bytes=30_000)
    index.on_change = lambda n, size: reported.append((n, size))
    long_question = "why " * 250_000
    index.add("a", unit(1, 0, 0), ans("big"), long_question, 10)
    item = next(i for _, i in index.candidates("a", unit(1, 0, 0)))
    assert len(item.text) == 4096 and item.digest == question_digest(long_question)
    assert question_digest(long_question + "?") != item.digest  # the layer's check: the very same question
    assert 4096 < index.bytes < 6000 and reported[-1] == (1, index.bytes)
    for i in range(10):
        index.add("b", unit(1, i, 0), ans(str(i)), "q" * 3000, 10)
    assert index.bytes <= 30_000 and len(index) < 11
    assert list(index.candidates("a", unit(1, 0, 0))) == []  # the oldest went first
    index.clear()
    assert index.bytes == 0 and reported[-1] == (0, 0)
