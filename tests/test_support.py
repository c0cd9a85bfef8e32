"""The shared test kit behaves as the tests relying on it assume."""
from __future__ import annotations

import asyncio
import gc
import weakref

import aiohttp
import pytest

from gateway.mock import MockServer
from tests.support.fake_body import BodyFailed, FakeBody
from tests.support.sdk_oracle import differences
from tests.support.servers import gateway_config, start_gateway
from tests.support.until import until


async def test_until_returns_once_a_sync_predicate_holds() -> None:
    ticks = []
    await until(lambda: ticks.append(1) or len(ticks) >= 3, timeout=1, interval=0)
    assert len(ticks) == 3


async def test_until_awaits_an_async_predicate() -> None:
    flag = asyncio.Event()
    asyncio.get_running_loop().call_soon(flag.set)

    async def is_set() -> bool:
        return flag.is_set()

    await until(is_set, timeout=1)


async def test_until_fails_with_the_message_after_the_timeout() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(AssertionError, match="the queue drained"):
        await until(lambda: False, timeout=0.05, message="the queue drained")
    assert 0.05 <= loop.time() - started < 1.0


async def test_until_looks_once_more_at_the_deadline() -> None:
    calls = []
    await until(lambda: calls.append(1) or len(calls) > 1, timeout=0, interval=1)
    assert len(calls) == 2


async def test_fake_body_yields_its_chunks_and_records_close() -> None:
    body = FakeBody([b"a", b"b"])
    assert [c async for c in body] == [b"a", b"b"] and body.sent == 2 and not body.closed
    await body.aclose()
    await body.aclose()
    assert body.closed and body.close_calls == 2


async def test_fake_body_fails_after_n_chunks() -> None:
    body = FakeBody([b"a", b"b", b"c"], fail_after=2)
    got = []
    with pytest.raises(BodyFailed):
        async for chunk in body:
            got.append(chunk)
    assert got == [b"a", b"b"] and body.sent == 2
    with pytest.raises(TimeoutError):
        await FakeBody([b"a"], fail_after=0, error=TimeoutError()).read()
    assert await FakeBody([b"a", b"b"],
                          fail_after=5).read() == b"ab"  # fewer chunks than fail_after: a clean end


_ANSWER = {"id": "c1", "object": "chat.completion", "model": "m", "x_groq": {"id": "r1"}, "choices": [
    {"index": 0, "finish_reason": "tool_calls", "logprobs": None, "content_filter_results": {},
     "message": {"role": "assistant", "content": None, "tool_calls": [
         {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]}


def test_sdk_oracle_tolerates_only_the_stream_accumulation_artifacts() -> None:
    streamed = {**_ANSWER, "choices": [{**_ANSWER["choices"][0], "message": {
        **_ANSWER["choices"][0]["message"], "role": "assistantassistant",
        "tool_calls": [{**_ANSWER["choices"][0]["message"]["tool_calls"][0], "index": 0}]}}]}
    richer = {**_ANSWER, "x_groq": {"id": "r1", "usage": {}}, "timings": {"n": 1},
              "choices": [{**_ANSWER["choices"][0], "content_filter_results": {"hate": {}}}]}
    assert differences(streamed, richer) == []


@pytest.mark.parametrize("change", [
    {"id": "c2"},
    {"x_groq": {"id": "other"}},
    {"choices": []},
    {"choices": [{**_ANSWER["choices"][0], "message": {**_ANSWER["choices"][0]["message"], "content": ""}}]},
    {"choices": [{**_ANSWER["choices"][0], "finish_reason": "stop"}]},
])
def test_sdk_oracle_reports_what_a_client_would_see(change: dict[str, object]) -> None:
    assert differences(_ANSWER, {**_ANSWER, **change}) != []


@pytest.mark.blocks_loop("checks that the watchdog sees a gateway callback that blocks the loop")
async def test_loop_watchdog_catches_a_gateway_callback_and_spares_others() -> None:
    import time

    from gateway.tokens.tokenizer import Tokenizer
    from tests.support.loop_watchdog import THRESHOLD_S, LoopWatchdog

    tokenizer = Tokenizer()
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def test_code() -> None:  # CPU on the loop, but not the gateway's: not an offence
        end = time.monotonic() + 0.15
        while time.monotonic() < end:
            pass

    with LoopWatchdog(threshold_s=THRESHOLD_S).watching() as watchdog:
        loop.call_soon(test_code)
        loop.call_soon(tokenizer.count_text, "gpt-4o", "word " * 400_000)  # loads an encoding + 400k tokens
        loop.call_soon(done.set)
        await done.wait()
    assert [o.what for o in watchdog.offences] == ["Tokenizer.count_text"]
    assert watchdog.offences[0].cpu_s > 0.1


async def test_hang_report_names_where_a_pending_task_waits() -> None:
    from tests.support.hang_report import pending_tasks_report

    gate = asyncio.Event()

    async def stuck_on_the_gate() -> None:
        await gate.wait()

    task = asyncio.get_running_loop().create_task(stuck_on_the_gate())
    await asyncio.sleep(0)
    try:
        report = pending_tasks_report()
        assert ", in stuck_on_the_gate\n" in report and "gate.wait()" in report
    finally:
        gate.set()
        await task
    assert ", in stuck_on_the_gate\n" not in pending_tasks_report()  # a finished task is not listed


def test_hang_report_fires_only_when_the_block_outlives_its_time() -> None:
    import threading

    from tests.support import hang_report

    class Stderr:  # the report's destination: set once the report is written, not when it starts
        def __init__(self) -> None:
            self.text: list[str] = []
            self.written = threading.Event()

        def write(self, text: str) -> int:
            self.text.append(text)
            self.written.set()
            return len(text)

    called = threading.Event()
    original = hang_report.pending_tasks_report

    def spy() -> str:
        called.set()
        return original()

    stderr = Stderr()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hang_report, "LEAD_S", 0.0)
        mp.setattr(hang_report, "pending_tasks_report", spy)
        mp.setattr(hang_report.sys, "stderr", stderr)
        with hang_report.reporting_hangs(0.01):
            # the report walks gc.get_objects(): slow in a big test process, so wait for its write
            assert stderr.written.wait(30.0)
        called.clear()
        with hang_report.reporting_hangs(30.0):
            pass
        assert not called.wait(0.1)
    assert "pending asyncio tasks" in "".join(stderr.text)


async def test_a_closed_in_process_gateway_is_freed(mock_upstream: MockServer) -> None:
    """aiohttp memoises middleware chains by application: without ``forget_applications`` every closed
    gateway stayed alive (with the semantic cache: its ~94 MB model each; the suite grew to ~4 GB)."""
    gw = await start_gateway(gateway_config(mock_upstream.url))
    app = weakref.ref(gw.app)
    async with aiohttp.ClientSession() as http:
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        async with http.post(gw.base_url + "/chat/completions", json=body) as resp:
            assert resp.status == 200
    gc.collect()
    assert app() is not None  # control: alive while open (and in aiohttp's memo once it served)
    await gw.close()
    del gw
    gc.collect()
    assert app() is None
