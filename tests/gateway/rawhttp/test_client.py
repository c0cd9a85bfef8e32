"""The response handle (``gateway/rawhttp/client.py``): it owns the parsed head once it has it, and lets
go of it when the caller says it copied what it needs, so a long answer keeps only its body reader."""
from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from gateway.rawhttp.client import fetch
from gateway.rawhttp.origin import Origin
from gateway.rawhttp.pool import RawPool
from tests.support.raw_server import RawServer, answer, keep_answering

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest_asyncio.fixture
async def pool() -> AsyncIterator[RawPool]:
    server = await RawServer(lambda peer: keep_answering(peer, answer(b"body", headers="X-A: 1\r\n"))).start()
    pool = RawPool(Origin.from_url(server.url), max_connections=2, keepalive_s=30)
    yield pool
    await pool.close()
    await server.close()


async def test_the_connection_hands_its_parsed_head_to_the_handle(pool: RawPool) -> None:
    resp = await fetch(pool, REQUEST, None, False, 5.0)
    (conn,) = pool.connections()
    assert resp.headers["x-a"] == "1" and resp.status == 200  # control: the handle has the head
    assert conn.message is None and conn.payload is resp.content  # the connection keeps only the body
    assert await resp.content.read() == b"body"
    resp.release()


async def test_forgetting_the_headers_keeps_the_answer_and_the_keep_alive(pool: RawPool) -> None:
    resp = await fetch(pool, REQUEST, None, False, 5.0)
    assert resp.headers["x-a"] == "1"  # control: the header was there
    resp.forget_headers()
    assert len(resp.headers) == 0
    assert resp.status == 200 and await resp.content.read() == b"body"
    resp.release()
    assert pool.idle_count == 1  # the connection still goes back to the pool after a clean answer
    again = await fetch(pool, REQUEST, None, False, 5.0)
    assert again.headers["x-a"] == "1" and await again.content.read() == b"body"  # the next one has its own
    again.release()
    assert pool.open_count == 1
