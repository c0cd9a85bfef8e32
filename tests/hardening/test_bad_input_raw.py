"""Framing, header and protocol abuse and slow clients, on raw sockets:
a clean OpenAI-style 4xx every time."""

from __future__ import annotations

import asyncio

import pytest

from tests.hardening.bad_cases import KEY, VALID
from tests.hardening.bad_raw_cases import CLOSED, RAW_CASES, START, RawCase
from tests.hardening.conftest import MODULE_LOOP, Env
from tests.hardening.rawhttp import RawResponse, read_response


async def send_case(port: int, case: RawCase) -> RawResponse | None:
    """The answer to ``case``, or None when the gateway closed the connection without one."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(10):
            for i, piece in enumerate(case.pieces):
                if i and case.gap_s:
                    await asyncio.sleep(case.gap_s)
                try:
                    writer.write(piece)
                    await writer.drain()
                except ConnectionError:
                    break  # answered early and closed: read what it said
            if case.half_close:
                writer.write_eof()
            try:
                return await read_response(reader)
            except asyncio.IncompleteReadError as exc:
                assert exc.partial == b""  # closed before a single byte: never half an answer
                return None
    finally:
        writer.close()


def test_raw_catalogue_is_named_and_distinct() -> None:
    """Every raw case has a unique name (so a failure names its case)."""
    names = [c.name for c in RAW_CASES]
    assert len(names) >= 60 and len(set(names)) == len(names)


@MODULE_LOOP
@pytest.mark.parametrize("case", RAW_CASES, ids=[c.name for c in RAW_CASES])
async def test_raw_bad_request_gets_a_clean_4xx(env: Env, case: RawCase) -> None:
    """Exact status and code in the OpenAI JSON shape; no upstream call; no ERROR log line."""
    before, logged = env.upstream_calls(), len(env.errors.records)
    resp = await send_case(env.gateway.port, case)
    if case.status == CLOSED:
        assert resp is None
        assert env.upstream_calls() == before and env.errors.records[logged:] == []
        return
    assert resp is not None and resp.status == case.status, resp
    assert resp.headers.get("content-type", "").startswith("application/json")
    error = resp.json()["error"]
    assert set(error) >= {"message", "type", "code", "param"}
    assert error["code"] == case.code and error["type"] == "invalid_request_error", error
    assert env.upstream_calls() == before
    assert [r.getMessage() for r in env.errors.records[logged:]] == []


@MODULE_LOOP
async def test_a_header_trickler_does_not_hold_up_others(env: Env) -> None:
    """While one client sends its headers a byte every 50 ms, 20 normal requests are answered at once."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", env.gateway.port)

    async def trickle() -> None:
        for b in START:
            writer.write(bytes([b]))
            await writer.drain()
            await asyncio.sleep(0.05)

    trickler = asyncio.create_task(trickle())
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        for _ in range(20):
            async with env.session.post(env.gateway.url + "/v1/chat/completions", data=VALID,
                                        headers={"Authorization": f"Bearer {KEY}"}) as resp:
                assert resp.status == 200
        assert loop.time() - started < 5.0 and not trickler.done()
    finally:
        trickler.cancel()
        writer.close()


@pytest.mark.slow
@MODULE_LOOP
async def test_a_stalled_request_head_is_answered_408_and_closed(env: Env) -> None:
    """Half a request head and then silence: the gateway answers 408 and closes the connection after
    ``server.header_timeout_s`` (10 s by default), not after aiohttp's 75 s keep-alive."""
    reader, writer = await asyncio.open_connection("127.0.0.1", env.gateway.port)
    writer.write(START[:20])
    await writer.drain()
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(60):
        answer = await reader.read()
    assert answer.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in answer, answer[:200]
    assert 9 <= loop.time() - started <= 30
    writer.close()
