"""Tests for gateway.decode: small bodies on the loop, large ones in the fair work pool, refusals kept."""
from __future__ import annotations

import asyncio
import threading

import orjson
import pytest

import gateway.decode as decode_module
from gateway.decode import DECODE_INLINE_MAX_BYTES, decode, decode_body
from gateway.errors import LocalReply
from gateway.received import Received
from gateway.telemetry.metrics import Metrics
from gateway.tokens.pool import WorkPool
from tests.gateway.tokens.test_pool import outcomes
from tests.support.until import until


def chat_body(size: int) -> bytes:
    text = "word " * (size // 5)
    return orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]})


SMALL = chat_body(1_000)
LARGE = chat_body(DECODE_INLINE_MAX_BYTES + 1_000)


async def test_a_small_body_is_decoded_on_the_loop() -> None:
    metrics = Metrics()
    pool = WorkPool(threads=1, metrics=metrics)
    raw, body, blobs = await decode_body(pool, "t", SMALL, "chat")
    assert raw is SMALL and body["model"] == "gpt-4o" and blobs is None
    assert outcomes(metrics, "decode") == {}  # no pool job
    pool.close()


async def test_a_large_body_is_decoded_in_the_pool() -> None:
    metrics = Metrics()
    pool = WorkPool(threads=1, metrics=metrics)
    raw, body, _ = await decode_body(pool, "t", LARGE, "chat")
    assert raw is LARGE and body == decode(LARGE, "chat")[0]
    assert outcomes(metrics, "decode") == {"done": 1.0}
    pool.close()


async def test_a_large_body_in_pieces_is_joined_in_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """The received pieces of a large body are joined by the pool's thread, not on the loop; a small one
    in pieces is joined and decoded inline (control)."""
    metrics = Metrics()
    pool = WorkPool(threads=1, metrics=metrics)
    joined_on: list[str] = []
    pieces = [LARGE[:100_000], LARGE[100_000:200_000], LARGE[200_000:]]
    original = decode_module._joined

    def spying(raw: bytes | list[bytes]) -> bytes:
        joined_on.append(threading.current_thread().name)
        return original(raw)

    monkeypatch.setattr(decode_module, "_joined", spying)
    raw, body, _ = await decode_body(pool, "t", pieces, "chat")
    small_raw, small, _ = await decode_body(pool, "t", [SMALL[:10], SMALL[10:]], "chat")
    assert raw == LARGE and body == decode(LARGE, "chat")[0]
    assert small_raw == SMALL and small["model"] == "gpt-4o"
    assert joined_on[0] != threading.current_thread().name  # the large one: in the pool's thread
    assert joined_on[1] == threading.current_thread().name  # the small one: inline
    assert outcomes(metrics, "decode") == {"done": 1.0}
    pool.close()


@pytest.mark.parametrize(("raw", "code"), [
    (b"{" + b" " * DECODE_INLINE_MAX_BYTES, "invalid_json"),
    (b'{"model": 1, "pad": "' + b"x" * DECODE_INLINE_MAX_BYTES + b'"}', "invalid_type"),
])
async def test_a_refusal_found_in_the_pool_is_the_same_400(raw: bytes, code: str) -> None:
    metrics = Metrics()
    pool = WorkPool(threads=1, metrics=metrics)
    with pytest.raises(LocalReply) as exc:
        await decode_body(pool, "t", raw, "chat")
    assert (exc.value.status, exc.value.code) == (400, code)
    assert outcomes(metrics, "decode") == {"done": 1.0}  # the job ran; its answer was the refusal
    pool.close()


async def test_a_tenant_past_its_queue_gets_503_and_another_tenant_is_decoded() -> None:
    metrics = Metrics()
    pool = WorkPool(threads=1, max_queued=1, budget_s=30, metrics=metrics)
    gate = threading.Event()
    blocker = asyncio.ensure_future(pool.run("a", "other", lambda: gate.wait(10), lambda: False))
    await until(lambda: pool.busy == 1)
    queued = asyncio.ensure_future(decode_body(pool, "a", LARGE, "chat"))
    await until(lambda: pool.queued("a") == 1)
    with pytest.raises(LocalReply) as exc:  # a's queue is full: answered at once
        await decode_body(pool, "a", LARGE, "chat")
    assert (exc.value.status, exc.value.code) == (503, "gateway_busy")
    assert exc.value.headers["retry-after"] == "1"
    other = asyncio.ensure_future(decode_body(pool, "b", LARGE, "chat"))  # the control: b still queues
    await until(lambda: pool.queued("b") == 1)
    gate.set()
    assert (await other)[1]["model"] == "gpt-4o"
    assert (await queued)[1]["model"] == "gpt-4o"
    await blocker
    assert outcomes(metrics, "decode") == {"queue_full": 1.0, "done": 2.0}
    pool.close()


async def test_over_the_budget_is_503_not_a_wait() -> None:
    metrics = Metrics()
    pool = WorkPool(threads=1, budget_s=0.05, metrics=metrics)
    gate = threading.Event()
    blocker = asyncio.ensure_future(pool.run("a", "other", lambda: gate.wait(10), lambda: False))
    await until(lambda: pool.busy == 1)
    with pytest.raises(LocalReply) as exc:
        await decode_body(pool, "a", LARGE, "chat")
    assert exc.value.status == 503
    gate.set()
    await blocker
    assert (await decode_body(pool, "a", LARGE, "chat"))[1]["model"] == "gpt-4o"  # the control
    assert outcomes(metrics, "decode") == {"over_budget": 1.0, "done": 1.0}
    pool.close()


async def test_a_failure_in_the_pool_is_raised_as_on_the_loop_not_a_busy_503(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in decoding is the handler's 500 (logged), wherever it ran; the 503 says "busy", not "broken"."""
    import gateway.decode as module

    def broken(raw: bytes, operation: str) -> module.Decoded:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(module, "decode", broken)
    metrics = Metrics()
    pool = WorkPool(threads=1, metrics=metrics)
    with pytest.raises(ZeroDivisionError):
        await decode_body(pool, "t", LARGE, "chat")
    with pytest.raises(ZeroDivisionError):  # control: the same error inline
        await decode_body(pool, "t", SMALL, "chat")
    assert outcomes(metrics, "decode") == {"done": 1.0}
    pool.close()


async def test_a_body_received_into_a_buffer_is_taken_and_decoded_in_the_pool() -> None:
    """A ``Received`` buffer (``read_large``): its bytes taken out (the buffer unmapped) and decoded in the
    pool, as the same body whole."""
    metrics = Metrics()
    pool = WorkPool(threads=1, metrics=metrics)
    received = Received(len(LARGE))
    for start in range(0, len(LARGE), 65536):
        assert received.add(LARGE[start:start + 65536])
    raw, body, _ = await decode_body(pool, "t", received, "chat")
    assert raw == LARGE and body == decode(LARGE, "chat")[0] and received.buffer.closed
    assert outcomes(metrics, "decode") == {"done": 1.0}
    pool.close()
