"""``UpstreamClient.send`` behaves the same on both clients (``pool.client: aiohttp | raw``): framings,
streaming, the request head, every failure kind with its attempt bookkeeping, redirects.

Real sockets throughout: a scripted server (``tests/support/raw_server.py``) plays the upstream.
"""
from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

import pytest
import pytest_asyncio

from gateway.config_common import PoolConfig, TimeoutsConfig
from gateway.config_model import UpstreamConfig
from gateway.errors import LocalReply, UpstreamFailure
from gateway.exchange import Exchange, UpstreamResponse
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

CLIENTS = ("aiohttp", "raw")


@pytest.fixture(params=CLIENTS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Any]:
    async with raw_servers() as start:
        yield start


@pytest_asyncio.fixture
async def clients() -> AsyncIterator[list[UpstreamClient]]:
    made: list[UpstreamClient] = []
    yield made
    for client in made:
        await client.close()


def make_client(made: list[UpstreamClient], kind: str, url: str, max_connections: int = 8,
                keepalive_s: float = 30.0, **timeouts: float) -> UpstreamClient:
    cfg = UpstreamConfig(base_url=url, api_key="sk-up",
                         pool=PoolConfig(client=kind, max_connections=max_connections,  # type: ignore[arg-type]
                                         keepalive_s=keepalive_s),
                         timeouts=TimeoutsConfig(**timeouts))
    client = UpstreamClient.create("up", cfg)
    made.append(client)
    return client


def exchange(deadline_s: float = 30.0, **fields: Any) -> Exchange:
    deadline = asyncio.get_running_loop().time() + deadline_s
    return build_exchange(deadline=deadline, raw_body=b'{"model":"gpt-4o"}', **fields)


async def read_all(resp: UpstreamResponse) -> bytes:
    return b"".join([chunk async for chunk in resp.body])


async def failure_of(client: UpstreamClient, ex: Exchange) -> UpstreamFailure:
    """The failure of one request, whether ``send`` or the body raised it."""
    with pytest.raises(UpstreamFailure) as err:
        resp = await client.send(ex)
        try:
            await read_all(resp)
        finally:
            await resp.body.aclose()
    attempt = ex.record.attempts[-1]
    assert attempt.outcome == err.value.kind and attempt.ended is not None and ex.record.upstream_s > 0
    return err.value


async def test_request_head_and_the_three_body_framings(kind: str, serve: Any, clients: Any) -> None:
    """Path below the base path, query, Host, Content-Length, the upstream key; Content-Length, chunked and
    close-delimited answers read whole; the attempt is ok and timed."""
    replies = [answer(b"length"), chunked(b"chun", b"ked"),
               b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"]

    async def handler(peer: Peer) -> None:
        while replies and await peer.request() is not None:
            await peer.send(replies.pop(0))

    server = await serve(handler)
    client = make_client(clients, kind, server.url + "/base/v1/")
    bodies = []
    for _ in range(3):
        ex = exchange(query_string="api-version=2024-06-01")
        resp = await client.send(ex)
        assert resp.status == 200 and resp.upstream == "up"
        bodies.append(await read_all(resp))
        assert ex.record.attempts[0].outcome == "ok" and ex.record.upstream_s > 0
    assert bodies == [b"length", b"chunked", b"until the end"]
    head = server.heads[0]
    assert head.startswith("POST /base/v1/chat/completions?api-version=2024-06-01 HTTP/1.1\r\n")
    lines = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip() for line in head.split("\r\n")[1:]
             if ":" in line}
    assert lines["host"] == f"127.0.0.1:{server.port}" and lines["content-length"] == "18"
    assert lines["authorization"] == "Bearer sk-up"


async def test_head_and_204_have_no_body_and_leave_the_connection_usable(kind: str, serve: Any,
                                                                         clients: Any) -> None:
    """HEAD (with the length a GET would have) and 204: an empty body; the next answer is intact."""
    replies = [answer(b"x" * 10)[: -10], b"HTTP/1.1 204 No Content\r\n\r\n", answer(b"after")]

    async def handler(peer: Peer) -> None:
        while replies and await peer.request() is not None:
            await peer.send(replies.pop(0))

    server = await serve(handler)
    client = make_client(clients, kind, server.url)
    head = await client.send(exchange(method="HEAD"))
    assert head.headers["content-length"] == "10" and await read_all(head) == b""
    nothing = await client.send(exchange())
    assert nothing.status == 204 and await read_all(nothing) == b""
    assert await read_all(await client.send(exchange())) == b"after"
    assert server.heads[0].startswith("HEAD /chat/completions HTTP/1.1")
    assert "content-length" not in server.heads[0].lower()


async def test_a_gzip_answer_is_decoded(kind: str, serve: Any, clients: Any) -> None:
    """An upstream that compresses anyway: the body comes decoded, without its (compressed) length."""
    packed = gzip.compress(b"decoded text" * 100)

    async def handler(peer: Peer) -> None:
        await keep_answering(peer, answer(packed, headers="Content-Encoding: gzip\r\n"))

    server = await serve(handler)
    resp = await make_client(clients, kind, server.url).send(exchange())
    assert await read_all(resp) == b"decoded text" * 100
    assert "content-length" not in resp.headers and "content-encoding" not in resp.headers


async def test_stream_chunks_arrive_one_by_one(kind: str, serve: Any, clients: Any) -> None:
    """The first chunk is in the client's hands while the upstream still holds back the second."""
    go_on = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(chunked()[:-5] + chunk_of(b"data: one\n\n"))
        await go_on.wait()
        await peer.send(chunk_of(b"data: two\n\n") + b"0\r\n\r\n")

    server = await serve(handler)
    resp = await make_client(clients, kind, server.url).send(exchange())
    chunks = aiter(resp.body)
    async with asyncio.timeout(5):
        assert await anext(chunks) == b"data: one\n\n"  # would time out if the body were buffered
    go_on.set()
    assert [chunk async for chunk in chunks] == [b"data: two\n\n"]  # the positive control


async def test_a_raw_answer_keeps_no_parsed_head_once_sent(serve: Any, clients: Any) -> None:
    """Issue 21: ``send`` copies the headers it forwards, then the raw handle lets its parsed head go (a
    stream can stay open for minutes); the body still reads and the connection still goes back to the pool."""
    server = await serve(lambda peer: keep_answering(peer, answer(b"ok", headers="X-Up: 1\r\n")))
    client = make_client(clients, "raw", server.url)
    resp = await client.send(exchange())
    assert resp.headers["x-up"] == "1"  # control: what is forwarded was copied
    assert len(resp.body._resp.headers) == 0  # type: ignore[attr-defined]
    assert await read_all(resp) == b"ok"
    assert client.raw is not None and client.raw.idle_count == 1


@pytest.fixture
def refused_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    yield port


async def test_connection_refused_is_a_connect_error_without_the_address(kind: str, clients: Any,
                                                                          refused_port: int) -> None:
    client = make_client(clients, kind, f"http://127.0.0.1:{refused_port}/v1")
    failure = await failure_of(client, exchange())
    assert failure.kind == "connect_error" and str(failure) == "Upstream up unreachable (connection refused)"
    assert "127.0.0.1" not in str(failure) and str(refused_port) not in str(failure)


async def test_a_host_that_does_not_resolve_is_a_connect_error(kind: str, clients: Any) -> None:
    client = make_client(clients, kind, "http://no-such-host.invalid/v1")
    failure = await failure_of(client, exchange())
    assert failure.kind == "connect_error" and "name resolution failed" in str(failure)


async def test_connect_timeout(kind: str, clients: Any) -> None:
    """A listener whose backlog is full never completes the handshake: connect_timeout after connect_s."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    port = sock.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))  # takes the one backlog place
    try:
        client = make_client(clients, kind, f"http://127.0.0.1:{port}", connect_s=0.2)
        failure = await failure_of(client, exchange())
        assert failure.kind == "connect_timeout"
    finally:
        filler.close()
        sock.close()


async def _stall(peer: Peer) -> None:
    await peer.request()
    await peer.reader.read()  # until the client gives up
    peer.server.client_closed += 1


async def test_no_answer_is_a_first_byte_timeout_or_the_total_deadline(kind: str, serve: Any,
                                                                      clients: Any) -> None:
    server = await serve(_stall)
    client = make_client(clients, kind, server.url, first_byte_s=0.2)
    assert (await failure_of(client, exchange())).kind == "timeout_before_first_byte"
    assert (await failure_of(client, exchange(deadline_s=0.2))).kind == "total_timeout"
    await until(lambda: server.client_closed == 2, message="both connections closed by the client")


async def test_a_send_cancelled_before_the_first_byte_stays_a_cancellation(kind: str, serve: Any,
                                                                          clients: Any) -> None:
    """The first-byte deadline's timer cancels the send only when it expires: a client that leaves while
    the upstream has not answered yet is a cancellation, not a timeout (the control: the same stall with a
    short first-byte timeout is ``timeout_before_first_byte``, above)."""
    asked: list[bytes | None] = []

    async def stall(peer: Peer) -> None:
        asked.append(await peer.request())
        await _stall(peer)

    server = await serve(stall)
    client = make_client(clients, kind, server.url, first_byte_s=30.0)
    ex = exchange()
    task = asyncio.get_running_loop().create_task(client.send(ex))
    await until(lambda: bool(asked), message="the request reached the stalled upstream")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ex.record.attempts[-1].outcome == "cancelled"


async def test_a_body_dropped_unread_lets_go_of_its_first_byte_timer(kind: str, serve: Any,
                                                                    clients: Any) -> None:
    """The send arms the body's read timer for the first-byte deadline; an answer dropped unread (a retried
    503) cancels that timer with the body instead of leaving it scheduled for ``first_byte_s``."""
    server = await serve(partial(keep_answering, reply=answer(b"busy", "503 Service Unavailable")))
    client = make_client(clients, kind, server.url, first_byte_s=60.0)
    resp = await client.send(exchange())
    timer = resp.body._timer  # type: ignore[attr-defined]
    assert timer._handle is not None  # the control: scheduled while the body waits to be read
    await resp.body.aclose()
    assert timer._handle is None


async def test_a_stall_between_chunks_is_an_idle_timeout(kind: str, serve: Any, clients: Any) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(chunked()[:-5] + chunk_of(b"data: one\n\n"))
        await peer.reader.read()

    server = await serve(handler)
    client = make_client(clients, kind, server.url, idle_s=0.2)
    failure = await failure_of(client, exchange())
    assert failure.kind == "idle_timeout" and failure.committed


async def test_a_cancelled_read_stays_a_cancellation_and_closes_the_connection(kind: str, serve: Any,
                                                                               clients: Any) -> None:
    """A client that leaves cancels the reading task while it waits on a chunk: that is a cancellation
    (never turned into a timeout by the read deadline's timer), and the half-read connection is closed."""
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(chunked()[:-5] + chunk_of(b"data: one\n\n"))
        await peer.request()  # None once the client closed the connection (counted)

    server = await serve(handler)
    client = make_client(clients, kind, server.url, idle_s=30.0)
    ex = exchange()
    resp = await client.send(ex)
    got: list[bytes] = []

    async def read() -> None:
        async for chunk in resp.body:
            got.append(chunk)

    task = asyncio.get_running_loop().create_task(read())
    await until(lambda: got == [b"data: one\n\n"], message="the first chunk arrived")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await resp.body.aclose()
    assert ex.record.attempts[-1].outcome == "cancelled"
    await until(lambda: server.client_closed == 1, message="the half-read connection closed")


@pytest.mark.parametrize("cut", ["close", "reset"])
async def test_a_connection_lost_before_or_during_the_answer(kind: str, serve: Any, clients: Any,
                                                             cut: str) -> None:
    """Before the first byte: reset_before_response (a fresh connection is not retried); after part of a
    Content-Length or chunked body: reset_mid_stream."""
    partial = [b"", answer(b"x" * 100)[:-50], chunked(b"x" * 100)[:-20]]

    async def handler(peer: Peer) -> None:
        await peer.request()
        data = partial[peer.index]
        if data:
            await peer.send(data)
        peer.reset() if cut == "reset" else peer.writer.close()

    server = await serve(handler)
    client = make_client(clients, kind, server.url)
    assert (await failure_of(client, exchange())).kind == "reset_before_response"
    assert server.accepted == 1  # not retried
    for _ in range(2):
        assert (await failure_of(client, exchange())).kind == "reset_mid_stream"


async def test_an_answer_that_is_not_http_fails_cleanly(kind: str, serve: Any, clients: Any) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"SMTP ready\r\n\r\n")
        await peer.reader.read()

    server = await serve(handler)
    failure = await failure_of(make_client(clients, kind, server.url), exchange())
    assert failure.kind == "reset_before_response"


async def test_a_broken_chunk_after_the_first_one_is_reset_mid_stream(serve: Any, clients: Any) -> None:
    """Raw client only: aiohttp 3.14's client waits for the request's deadline here (total_timeout)."""
    first_read = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(chunked()[:-5] + chunk_of(b"fine"))
        await first_read.wait()
        await peer.send(b"zz\r\nbroken\r\n")
        await peer.reader.read()

    server = await serve(handler)
    ex = exchange()
    resp = await make_client(clients, "raw", server.url).send(ex)
    body = aiter(resp.body)
    assert await anext(body) == b"fine"
    first_read.set()
    with pytest.raises(UpstreamFailure) as err:
        await anext(body)
    assert err.value.kind == ex.record.attempts[0].outcome == "reset_mid_stream"
    assert str(err.value).startswith("Upstream up connection lost: ")  # MalformedResponse (C parser)


async def test_a_redirect_is_a_502_and_never_followed(kind: str, serve: Any, clients: Any) -> None:
    async def handler(peer: Peer) -> None:
        await keep_answering(peer, answer(b"", "302 Found", "Location: http://elsewhere/\r\n"))

    server = await serve(handler)
    ex = exchange()
    with pytest.raises(LocalReply) as err:
        await make_client(clients, kind, server.url).send(ex)
    assert err.value.status == 502 and ex.record.attempts[0].outcome == "redirect"
    assert len(server.heads) == 1


async def test_a_configured_host_header_replaces_the_default_one(kind: str, serve: Any, clients: Any) -> None:
    """``headers: {Host: ...}`` in the upstream's config (virtual hosting): exactly one Host, that one."""
    server = await serve(keep_answering)
    cfg = UpstreamConfig(base_url=server.url, headers={"Host": "virtual.example"},
                         pool=PoolConfig(client=kind))  # type: ignore[arg-type]
    client = UpstreamClient.create("up", cfg)
    clients.append(client)
    assert await read_all(await client.send(exchange())) == b"ok"
    hosts = [line for line in server.heads[0].split("\r\n") if line.lower().startswith("host:")]
    assert hosts == ["Host: virtual.example"]
