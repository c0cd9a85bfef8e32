"""policies.cache.fill: answers are assembled at a clean end; large ones off the event loop."""
from __future__ import annotations

import threading
from collections.abc import Callable

import orjson

from gateway.exchange import Exchange
from policies.cache.entry import CachedAnswer
from policies.cache.fill import INLINE_FILL_BYTES, Fill
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
