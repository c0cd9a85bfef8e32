"""The raw client's pool through ``UpstreamClient`` (``pool.client: raw``), counted from the server's side:
keep-alive reuse, LIFO, the connection limit and its queue, the stale-connection retry, abandoned bodies,
back-pressure, keep-alive expiry and close. Every "does not happen" has its positive control."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from gateway.config_common import PoolConfig, TimeoutsConfig
from gateway.config_model import UpstreamConfig
from gateway.errors import UpstreamFailure
from gateway.exchange import Exchange, UpstreamResponse
from gateway.rawhttp.pool import RawPool
from gateway.upstream import UpstreamClient
from tests.support.exchange import build_exchange
from tests.support.raw_server import (
    Peer,
    answer,
    chunk_of,
    chunked,
    keep_answering,
    raw_servers,
)
from tests.support.until import until


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Any]:
    async with raw_servers() as start:
        yield start


@pytest_asyncio.fixture
async def clients() -> AsyncIterator[Any]:
    made: list[UpstreamClient] = []

    def make(url: str, max_connections: int = 8, keepalive_s: float = 30.0) -> UpstreamClient:
        pool = PoolConfig(client="raw", max_connections=max_connections, keepalive_s=keepalive_s)
        cfg = UpstreamConfig(base_url=url, pool=pool, timeouts=TimeoutsConfig())
        client = UpstreamClient.create("up", cfg)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


def exchange() -> Exchange:
    return build_exchange(deadline=asyncio.get_running_loop().time() + 30)


def pool_of(client: UpstreamClient) -> RawPool:
    assert client.raw is not None
    return client.raw


async def read_all(resp: UpstreamResponse) -> bytes:
    return b"".join([chunk async for chunk in resp.body])


async def get(client: UpstreamClient) -> bytes:
    return await read_all(await client.send(exchange()))


async def test_keep_alive_reuses_one_connection_unless_told_to_close(serve: Any, clients: Any) -> None:
    server = await serve(keep_answering)
    client = clients(server.url)
    assert [await get(client) for _ in range(3)] == [b"ok"] * 3
    assert server.accepted == 1 and len(server.heads) == 3
    closing = await serve(lambda peer: keep_answering(peer, answer(headers="Connection: close\r\n")))
    client = clients(closing.url)
    assert [await get(client) for _ in range(3)] == [b"ok"] * 3
    assert closing.accepted == 3 and pool_of(client).idle_count == 0


async def test_the_warmest_idle_connection_goes_first(serve: Any, clients: Any) -> None:
    """Two connections released A then B: the next request goes on B (LIFO)."""
    server = await serve(keep_answering)
    client = clients(server.url)
    first, second = await client.send(exchange()), await client.send(exchange())
    assert server.accepted == 2
    await read_all(first)
    await read_all(second)
    await get(client)
    assert [len(peer.requests) for peer in server.peers] == [1, 2]


@pytest.mark.parametrize("limit", [1, 2])
async def test_at_the_limit_requests_wait_for_a_released_one(serve: Any, clients: Any, limit: int) -> None:
    """max_connections 1: the second request queues until the first body ends, then uses its connection;
    control: with max_connections 2 it opens a second connection at once."""
    release = asyncio.Event()

    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(chunked()[:-5] + chunk_of(b"one"))
            await release.wait()
            await peer.send(b"0\r\n\r\n")

    server = await serve(handler)
    client = clients(server.url, max_connections=limit)
    first = await client.send(exchange())
    second = asyncio.create_task(client.send(exchange()))
    if limit == 1:
        await until(lambda: pool_of(client).waiting == 1, message="the second request queued")
        assert server.accepted == 1 and not second.done()
    else:
        await until(lambda: server.accepted == 2, message="a second connection")
    release.set()
    assert await read_all(first) == b"one"
    assert await read_all(await second) == b"one"
    assert server.accepted == limit and pool_of(client).waiting == 0


async def test_a_stale_keep_alive_connection_is_retried_once_on_a_fresh_one(serve: Any, clients: Any) -> None:
    """The server closes a kept-alive connection as the next request arrives (no byte answered): the request
    goes again on a new connection; one attempt is recorded."""
    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.request()
            await peer.send(answer(b"first"))
            await peer.request()  # then closes without a byte
            return
        await keep_answering(peer, answer(b"fresh"))

    server = await serve(handler)
    client = clients(server.url)
    assert await get(client) == b"first"
    ex = exchange()
    assert await read_all(await client.send(ex)) == b"fresh"
    assert server.accepted == 2 and len(ex.record.attempts) == 1 and ex.record.attempts[0].outcome == "ok"


async def test_no_retry_once_a_byte_of_the_answer_came(serve: Any, clients: Any) -> None:
    """Control of the stale retry: a reused connection that answered part of a head before closing is not
    retried (the server may have acted on the request)."""
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer(b"first"))
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-")

    server = await serve(handler)
    client = clients(server.url)
    assert await get(client) == b"first"
    with pytest.raises(UpstreamFailure) as err:
        await get(client)
    assert err.value.kind == "reset_before_response" and server.accepted == 1


async def test_an_abandoned_body_closes_its_connection(serve: Any, clients: Any) -> None:
    """Half a stream read, then closed: the server sees the connection end and the next request opens a new
    one (the keep-alive test is the control: a body read to its end keeps its connection)."""
    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(chunked()[:-5] + chunk_of(b"one"))
            if peer.index == 1:
                await peer.send(b"0\r\n\r\n")
        # request() saw the client's close

    server = await serve(handler)
    client = clients(server.url)
    resp = await client.send(exchange())
    body = aiter(resp.body)
    assert await anext(body) == b"one"
    await resp.body.aclose()
    await until(lambda: server.client_closed == 1, message="the abandoned connection closed")
    assert await get(client) == b"one" and server.accepted == 2


async def test_a_slow_consumer_pauses_reading_from_the_upstream(serve: Any, clients: Any) -> None:
    """32 MiB offered, nothing read: the connection stops reading (past 64 KiB buffered) and the server
    cannot finish writing; reading everything resumes it and the body is whole."""
    block, blocks = b"x" * 65536, 512
    finished = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(f"HTTP/1.1 200 OK\r\nContent-Length: {len(block) * blocks}\r\n\r\n".encode())
        for _ in range(blocks):
            await peer.send(block)
        finished.set()
        await keep_answering(peer)

    server = await serve(handler)
    client = clients(server.url)
    resp = await client.send(exchange())
    (conn,) = pool_of(client).connections()
    await until(lambda: conn.reading_paused, message="reading paused")
    assert not finished.is_set()
    size = 0
    async for chunk in resp.body:
        size += len(chunk)
    assert size == len(block) * blocks and finished.is_set() and not conn.reading_paused
    assert await get(client) == b"ok" and server.accepted == 1


async def test_idle_connections_expire_after_keepalive_s(serve: Any, clients: Any) -> None:
    server = await serve(keep_answering)
    client = clients(server.url, keepalive_s=0.3)
    await get(client)
    assert pool_of(client).idle_count == 1  # kept at first (control)
    await until(lambda: server.client_closed == 1, message="the idle connection expired")
    assert pool_of(client).idle_count == 0 and pool_of(client).open_count == 0
    await get(client)
    assert server.accepted == 2


async def test_close_closes_the_raw_pool(serve: Any, clients: Any) -> None:
    server = await serve(keep_answering)
    client = clients(server.url)
    await get(client)
    assert server.client_closed == 0
    await client.close()
    await until(lambda: server.client_closed == 1, message="closed by UpstreamClient.close")
    assert pool_of(client).open_count == 0
