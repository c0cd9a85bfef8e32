"""The fault proxy itself: each fault does what it says, on a loopback echo server."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.hardening.conftest import ProxyFactory
from tests.support.fault_proxy import FaultProxy


@pytest_asyncio.fixture
async def echo() -> AsyncIterator[int]:
    """An echo server; ``SEND <n>\\n`` makes it send n bytes instead of echoing."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await reader.read(5)
            if first == b"SEND ":
                writer.write(b"x" * int(await reader.readline()))
            elif first:
                writer.write(first)
            await writer.drain()
            while first and (data := await reader.read(65536)):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def roundtrip(proxy: FaultProxy, payload: bytes = b"ping") -> tuple[bytes, float]:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        started = loop.time()
        writer.write(payload)
        async with asyncio.timeout(10):
            data = await reader.readexactly(len(payload))
        return data, loop.time() - started
    finally:
        writer.close()


async def read_n(proxy: FaultProxy, n: int) -> tuple[bytes, float, int]:
    """Ask for n bytes; (what came, how long it took, how many reads it took)."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    got, reads, started = b"", 0, loop.time()
    try:
        writer.write(b"SEND %d\n" % n)
        async with asyncio.timeout(10):
            while len(got) < n:
                chunk = await reader.read(n)
                if not chunk:
                    break
                got, reads = got + chunk, reads + 1
        return got, loop.time() - started, reads
    finally:
        writer.close()


async def test_passes_bytes_unchanged(fault_proxy: ProxyFactory, echo: int) -> None:
    """Without faults the proxy is transparent, both ways."""
    proxy = await fault_proxy(echo)
    data, _ = await roundtrip(proxy, b"hello \x00\xff world" * 1000)
    assert data == b"hello \x00\xff world" * 1000
    assert proxy.stats.bytes_up == proxy.stats.bytes_down == len(data)


async def test_latency_adds_to_the_round_trip(fault_proxy: ProxyFactory, echo: int) -> None:
    """latency_s=0.2 makes each round trip take at least 0.2 s."""
    proxy = await fault_proxy(echo)
    proxy.set(latency_s=0.2)
    data, took = await roundtrip(proxy)
    assert data == b"ping" and 0.2 <= took < 2.0


async def test_bandwidth_is_capped(fault_proxy: ProxyFactory, echo: int) -> None:
    """60 KB at 200 KB/s takes at least 0.3 s."""
    proxy = await fault_proxy(echo)
    proxy.set(bandwidth_bps=200_000)
    got, took, _ = await read_n(proxy, 60_000)
    assert len(got) == 60_000 and 0.28 <= took < 5.0


async def test_slices_arrive_as_separate_reads(fault_proxy: ProxyFactory, echo: int) -> None:
    """slice_bytes=7 with a gap: the reader sees the message in many small reads."""
    proxy = await fault_proxy(echo)
    proxy.set(slice_bytes=7, slice_gap_s=0.005)
    got, _, reads = await read_n(proxy, 70)
    assert got == b"x" * 70 and reads >= 5


async def test_blackhole_holds_bytes_then_delivers(fault_proxy: ProxyFactory, echo: int) -> None:
    """While blackholed nothing comes back; when lifted, the held bytes arrive in order."""
    proxy = await fault_proxy(echo)
    proxy.set(blackhole=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"held")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await reader.readexactly(4)
    proxy.clear()
    async with asyncio.timeout(5):
        assert await reader.readexactly(4) == b"held"
    writer.close()


async def test_reset_after_bytes_sends_rst(fault_proxy: ProxyFactory, echo: int) -> None:
    """reset_after_bytes=1000: the client gets at most 1000 bytes, then a connection reset
    (not a clean EOF)."""
    proxy = await fault_proxy(echo)
    proxy.set(reset_after_bytes=1000)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"SEND 100000\n")
    got = b""
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(5):
            while chunk := await reader.read(65536):
                got += chunk
    assert len(got) <= 1000 and proxy.stats.resets == 1
    writer.close()


async def test_reset_at_accept(fault_proxy: ProxyFactory, echo: int) -> None:
    """reset_after_bytes=0: every new connection is reset at once."""
    proxy = await fault_proxy(echo)
    proxy.set(reset_after_bytes=0)
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await roundtrip(proxy)


async def test_down_refuses_then_up_serves_on_the_same_port(fault_proxy: ProxyFactory, echo: int) -> None:
    """down(): connect is refused and open connections are reset; up(): the same port serves again."""
    proxy = await fault_proxy(echo)
    port = proxy.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await proxy.down()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        writer.write(b"x")
        async with asyncio.timeout(5):
            await reader.readexactly(1)
    writer.close()
    await proxy.up()
    assert proxy.port == port and (await roundtrip(proxy))[0] == b"ping"


async def test_slow_close_delays_the_eof(fault_proxy: ProxyFactory, echo: int) -> None:
    """slow_close_s=0.3: after the target closes, the client's EOF comes 0.3 s later."""
    proxy = await fault_proxy(echo)
    proxy.set(slow_close_s=0.3)
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"x")
    writer.write_eof()  # the echo server answers, sees EOF, closes
    started = loop.time()
    async with asyncio.timeout(5):
        assert await reader.read() == b"x"
    assert loop.time() - started >= 0.28
    writer.close()


def test_unknown_fault_is_refused() -> None:
    """A typo in a fault name is an error, not a silently ignored fault."""
    with pytest.raises(TypeError):
        FaultProxy("127.0.0.1", 1).set(latnecy_s=1)
