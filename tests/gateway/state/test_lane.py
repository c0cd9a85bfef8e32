"""The lane: batches on one connection, replies in order, refused commands as replies, and a connection it
cannot trust (cancelled batch, lost connection) closed and replaced."""
from __future__ import annotations

import asyncio
import contextlib
import gc
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ResponseError

from gateway.state.lane import Batch, Lane
from tests.support.servers import RedisServer, free_port
from tests.support.tls import self_signed
from tests.support.until import until


@contextlib.asynccontextmanager
async def lane_at(url: str) -> AsyncIterator[tuple[aioredis.Redis, Lane]]:
    """A lane on ``url``'s pool (and the redis-py client that owns the pool), both closed after."""
    client = aioredis.from_url(url, socket_timeout=None)
    lane = Lane(client.connection_pool)
    try:
        yield client, lane
    finally:
        lane.close()
        await client.aclose()


class _Got(Batch):
    """A submitted batch that appends what it is told to ``got``."""

    __slots__ = ("got",)

    def __init__(self, got: list[Any]) -> None:
        self.got = got

    def done(self, result: list[Any] | BaseException) -> None:
        self.got.append(result)


async def _client_id(lane: Lane) -> int:
    reply = (await lane.run([("CLIENT", "ID")]))[0]
    assert isinstance(reply, int)
    return reply


async def test_concurrent_batches_get_their_own_replies_in_order(redis_server: RedisServer) -> None:
    async with lane_at(redis_server.url) as (client, lane):
        await lane.run([("DEL", "ln:n")])
        replies = await asyncio.gather(*(lane.run([("INCR", "ln:n"), ("INCR", "ln:n")]) for _ in range(20)))
        assert all(b - a == 1 for a, b in replies)  # a batch's commands are consecutive
        assert sorted(x for r in replies for x in r) == list(range(1, 41))
        assert await lane.run([]) == []


async def test_concurrent_first_batches_share_one_connection(redis_server: RedisServer) -> None:
    """Control: after ``close`` the next batch opens another connection (another client id)."""
    async with lane_at(redis_server.url) as (client, lane):
        ids = await asyncio.gather(*(_client_id(lane) for _ in range(5)))
        assert len(set(ids)) == 1
        lane.close()
        assert await _client_id(lane) != ids[0]


class _CountingTransport:
    """The lane's transport, counting its writes."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.writes = inner, 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.inner.write(data)

    def close(self) -> None:
        self.inner.close()


async def test_the_batches_of_one_loop_pass_leave_in_one_write(redis_server: RedisServer) -> None:
    """Control: batches awaited one after the other are a write each."""
    async with lane_at(redis_server.url) as (client, lane):
        await lane.run([("PING",)])
        assert lane._protocol is not None
        counting = _CountingTransport(lane._protocol.transport)
        lane._protocol.transport = counting  # type: ignore[assignment]
        replies = await asyncio.gather(lane.run([("ECHO", "a")]), lane.run([("ECHO", "b"), ("ECHO", "c")]))
        assert replies == [[b"a"], [b"b", b"c"]] and counting.writes == 1
        assert await lane.run([("ECHO", "d")]) == [b"d"] and await lane.run([("ECHO", "e")]) == [b"e"]
        assert counting.writes == 3


async def test_a_refused_command_is_its_reply(redis_server: RedisServer) -> None:
    async with lane_at(redis_server.url) as (client, lane):
        await lane.run([("DEL", "ln:list"), ("RPUSH", "ln:list", "a")])
        replies = await lane.run([("SET", "ln:x", 1), ("INCR", "ln:list"), ("EVALSHA", "0" * 40, 0),
                                  ("GET", "ln:x")])
        assert replies[0] == b"OK" and replies[3] == b"1"
        assert isinstance(replies[1], ResponseError) and "WRONGTYPE" in str(replies[1])
        assert isinstance(replies[2], NoScriptError)


async def test_an_argument_redis_cannot_take_sends_nothing(redis_server: RedisServer) -> None:
    async with lane_at(redis_server.url) as (client, lane):
        await lane.run([("DEL", "ln:d")])
        with pytest.raises(DataError):
            await lane.run([("SET", "ln:d", "sent?"), ("SET", "ln:e", None)])
        assert await lane.run([("GET", "ln:d")]) == [None]
        assert await lane.run([("SET", "ln:d", "yes"), ("GET", "ln:d")]) == [b"OK", b"yes"]  # control


async def test_the_connection_outlives_the_redis_py_connection_that_opened_it(
        redis_server: RedisServer) -> None:
    """redis-py's connection (and its StreamWriter) close their transport when collected: the lane keeps it.
    Control: ``close`` does end the connection."""
    async with lane_at(redis_server.url) as (client, lane):
        first = await _client_id(lane)
        gc.collect()
        assert await _client_id(lane) == first
        lane.close()
        assert await _client_id(lane) != first


async def test_a_cancelled_batch_closes_the_connection_and_fails_those_behind_it(
        redis_server: RedisServer) -> None:
    """A batch abandoned while waiting leaves the replies out of step: the batch written after it fails too,
    and the next batch gets a fresh connection."""
    async with lane_at(redis_server.url) as (client, lane):
        first = await _client_id(lane)
        blocked = asyncio.ensure_future(lane.run([("BLPOP", "ln:never", 0)]))
        behind = asyncio.ensure_future(lane.run([("PING",)]))
        await asyncio.sleep(0)  # both written
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        with pytest.raises(RedisConnectionError):
            await behind
        assert await _client_id(lane) != first
        assert await lane.run([("PING",)]) == [b"PONG"]


async def test_submitted_batches_share_one_watchdog_that_abandons_a_batch_past_its_deadline(
        redis_server: RedisServer) -> None:
    """Batches submitted on the open lane are bounded by one timer, not one each: answered in time, they
    settle and the timer stays as it was (nothing to cancel); when it is due and nothing waits, it is not
    armed again and the connection stays. A batch still waiting at its deadline closes the connection and
    fails every batch behind it (control: the batches answered before it got their replies)."""
    async with lane_at(redis_server.url) as (client, lane):
        await lane.run([("DEL", "ln:late")])
        protocol, loop, got = lane._protocol, asyncio.get_running_loop(), list[Any]()
        assert protocol is not None and protocol.watchdog is None
        assert lane.submit([("ECHO", "a")], _Got(got), loop.time() + 0.2)
        watchdog = protocol.watchdog
        assert lane.submit([("ECHO", "b"), ("ECHO", "c")], _Got(got), loop.time() + 0.3)
        assert protocol.watchdog is watchdog and watchdog is not None and not protocol.closed
        await until(lambda: len(got) == 2)
        assert got == [[b"a"], [b"b", b"c"]] and protocol.watchdog is watchdog
        await until(lambda: protocol.watchdog is None)  # due, nothing late, nothing waiting: not armed again
        assert not protocol.closed and await lane.run([("ECHO", "d")]) == [b"d"]
        assert lane.submit([("BLPOP", "ln:late", 0)], _Got(got), loop.time() + 0.1)
        assert lane.submit([("PING",)], _Got(got), loop.time() + 60)
        await until(lambda: len(got) == 4)
        assert all(isinstance(r, TimeoutError) for r in got[2:]) and protocol.closed
        assert await lane.run([("ECHO", "e")]) == [b"e"]  # a new connection, in step


async def test_a_batch_written_at_once_on_a_transport_that_refuses_fails_a_loop_turn_later(
        redis_server: RedisServer) -> None:
    """``submit(write=True)`` writes now; a transport that refuses the write (uvloop, closed under us by a
    dying Redis) fails the batch and those behind it as a lost connection, after the submit has returned
    (control: written at once, a batch is answered, and nothing waits for the end of the pass)."""
    async with lane_at(redis_server.url) as (client, lane):
        await lane.run([("PING",)])
        protocol, loop, got = lane._protocol, asyncio.get_running_loop(), list[Any]()
        assert protocol is not None
        assert lane.submit([("ECHO", "now")], _Got(got), loop.time() + 5, write=True) and not protocol.out
        await until(lambda: got == [[b"now"]])

        def refuse(data: bytes) -> None:
            raise RuntimeError("unable to perform operation: the handler is closed")

        protocol.transport.write = refuse  # type: ignore[method-assign]
        assert lane.submit([("ECHO", "lost")], _Got(got), loop.time() + 5, write=True)
        assert len(got) == 1  # not failed inside the submit
        await until(lambda: len(got) == 2)
        assert isinstance(got[1], RedisConnectionError) and protocol.closed
        assert await lane.run([("ECHO", "again")]) == [b"again"]  # the next batch reconnects


async def test_a_lost_connection_fails_its_batches_and_the_next_reconnects(redis_server: RedisServer) -> None:
    async with lane_at(redis_server.url) as (client, lane):
        first = await _client_id(lane)
        waiting = asyncio.ensure_future(lane.run([("BLPOP", "ln:never", 0)]))
        await asyncio.sleep(0)
        await client.client_kill_filter(_id=first)
        with pytest.raises(RedisConnectionError):
            await waiting
        assert await _client_id(lane) != first


async def test_nothing_listening_is_a_connection_error() -> None:
    async with lane_at(f"redis://127.0.0.1:{free_port()}/0") as (client, lane):
        with pytest.raises(RedisConnectionError):
            await lane.run([("PING",)])


async def test_a_tls_connection_is_taken_over_too(redis_server: RedisServer, tmp_path: Path) -> None:
    """``rediss://``: redis-py's TLS handshake, then the lane's batches over the same TLS transport (here a
    TLS-terminating forwarder in front of the test Redis). Control: the forwarder saw the lane's commands
    arrive over TLS (it counts decrypted bytes)."""
    cert_file, key_file = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    seen: list[int] = []

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", redis_server.port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
            while data := await src.read(65536):
                if count:
                    seen.append(len(data))
                dst.write(data)
            dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False),
                             return_exceptions=True)

    server = await asyncio.start_server(forward, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    async with lane_at(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none") as (client, lane):
        assert await lane.run([("SET", "ln:tls", "yes"), ("GET", "ln:tls")]) == [b"OK", b"yes"]
        before = sum(seen)  # the handshake and the first batch
        assert await lane.run([("ECHO", "again")]) == [b"again"]
        assert sum(seen) - before == len(b"*2\r\n$4\r\nECHO\r\n$5\r\nagain\r\n")
        server.close()
