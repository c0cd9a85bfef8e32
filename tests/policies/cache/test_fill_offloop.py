"""policies.cache.fill: answers are assembled at a clean end; large ones off the event loop."""
from __future__ import annotations

import threading
from collections.abc import Callable

import orjson

from gateway.exchange import Exchange
from policies.cache.entry import CachedAnswer
from policies.cache.fill import INLINE_FILL_BYTES, Fill, FillBudget
from tests.support.until import until


def answer(text: str) -> bytes:
    return orjson.dumps({"id": "c1", "object": "chat.completion", "model": "gpt-4o", "created": 1,
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": text}}]})


def filled(make_exchange: Callable[..., Exchange], text: str) -> tuple[Fill, list[tuple[CachedAnswer, int]]]:
    got: list[tuple[CachedAnswer, int]] = []
    fill = Fill(operation="chat", sse=False, limit=32 * 1024 * 1024,
                callbacks=[lambda _ex, a, _r: got.append((a, threading.get_ident()))])
    data = answer(text)
    for i in range(0, len(data), 65536):
        fill.add(data[i:i + 65536])
    fill.complete(make_exchange())
    return fill, got


async def test_a_small_answer_is_stored_at_once(make_exchange: Callable[..., Exchange]) -> None:
    _, got = filled(make_exchange, "short")
    assert len(got) == 1 and got[0][1] == threading.get_ident()


async def test_a_large_answer_is_assembled_off_the_loop_then_stored_on_it(
        make_exchange: Callable[..., Exchange]) -> None:
    fill, got = filled(make_exchange, "word " * 200_000)
    assert fill.size > INLINE_FILL_BYTES and got == []  # not parsed on the loop, in the callback
    await until(lambda: got)
    assert got[0][1] == threading.get_ident()  # the stores are touched on the loop's thread only
    assert b"word word" in got[0][0].body


async def test_answers_being_collected_share_a_byte_budget(make_exchange: Callable[..., Exchange]) -> None:
    """Past the shared budget an answer gives up caching (and its bytes); ending returns what it held."""
    budget = FillBudget(max_bytes=100)
    first = Fill(operation="chat", sse=False, limit=1000, budget=budget)
    second = Fill(operation="chat", sse=False, limit=1000, budget=budget)
    first.add(b"x" * 60)
    second.add(b"y" * 30)
    assert budget.used == 90 and not second.overflow
    second.add(b"y" * 30)  # 120 > 100: this answer will not be cached
    assert second.overflow and second.chunks == [] and budget.used == 60
    first.release()  # the first body ended (any way)
    assert budget.used == 0
    third = Fill(operation="chat", sse=False, limit=1000, budget=budget)
    third.add(b"z" * 90)  # control: room again
    assert not third.overflow and budget.used == 90


async def stored_large(make_exchange: Callable[..., Exchange],
                       shared: bool) -> tuple[bytes | None, CachedAnswer]:
    """A large answer through a fill; what ``encoded`` the storer saw, and the answer after the callbacks."""
    kept: list[tuple[bytes | None, CachedAnswer]] = []
    fill = Fill(operation="chat", sse=False, limit=32 * 1024 * 1024, budget=FillBudget(shared=shared),
                callbacks=[lambda _ex, a, _r: kept.append((a.encoded, a))])
    fill.add(answer("word " * 200_000))
    fill.complete(make_exchange())
    await until(lambda: kept)
    return kept[0]


async def test_with_a_shared_store_a_large_answer_is_also_encoded_off_the_loop(
        make_exchange: Callable[..., Exchange]) -> None:
    """Redis behind the stores: the assembler's thread also encodes the entry (zlib), so the store's
    ``set`` on the loop only sends it; the copy is dropped after the callbacks. Without Redis (control),
    nothing is encoded for nobody."""
    encoded, after = await stored_large(make_exchange, shared=True)
    assert encoded is not None and CachedAnswer.decode(encoded) is not None and after.encoded is None
    encoded, _ = await stored_large(make_exchange, shared=False)
    assert encoded is None
