"""gateway.admission and server.header_timeout_s through the real server, on raw sockets."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
import pytest_asyncio
from openai import AsyncOpenAI, RateLimitError

from gateway import auth
from gateway.admission import Admission
from gateway.mock import MockServer
from tests.support.servers import InProcessGateway, gateway_config, start_gateway
from tests.support.until import until

BODY = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})


def head(key: str, length: int = len(BODY)) -> bytes:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


@pytest_asyncio.fixture
async def gw(mock_upstream: MockServer) -> AsyncIterator[InProcessGateway]:
    server = {"drain_s": 1, "grace_s": 0, "workers": 1, "client_max_reading": 2, "client_max_inflight": 3,
              "header_timeout_s": 0.3}
    gateway = await start_gateway(gateway_config(mock_upstream.url, server=server))
    try:
        yield gateway
    finally:
        await gateway.close()


def test_counts_are_per_client_and_dropped_when_idle() -> None:
    adm = Admission()
    adm.enter("a", 2, 1)
    adm.done_reading("a")
    adm.enter("a", 2, 1)
    assert adm.inflight == {"a": 2} and adm.reading == {"a": 1}
    adm.leave("a", still_reading=True)
    adm.leave("a", still_reading=False)
    assert adm.inflight == {} and adm.reading == {}


async def test_slow_bodies_cannot_take_the_global_slots(gw: InProcessGateway) -> None:
    """Two trickling bodies use the client's reading cap: its third request is a 429 with Retry-After,
    another client is served; once the bodies arrive the first client is served again."""
    slow = []
    for _ in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(head("sk-slow") + BODY[:5])
        slow.append((reader, writer))
    await until(lambda: gw.state.admission.reading.get(next(iter(gw.state.admission.reading), ""), 0) == 2)
    async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-slow", max_retries=0) as same:
        try:
            await same.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
            raise AssertionError("expected a 429")
        except RateLimitError as err:
            assert err.response.headers["retry-after"] == "1"
            assert "server.client_max_reading" in str(err)
    async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-other", max_retries=0) as other:
        ok = await other.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
        assert ok.choices[0].message.content  # control: another client is not affected
    for reader, writer in slow:
        writer.write(BODY[5:])
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        writer.close()
    assert gw.state.admission.reading == {}


async def test_a_client_is_keyed_by_the_digest_auth_took_once(gw: InProcessGateway,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """One SHA-256 of a client's credential per request (issue 21): admission keys the client by the digest
    its identity holds (the same for every credential ``auth`` reads), not a second hash of its own; a client
    without a credential by its address (the control)."""
    digests: list[str] = []
    real = auth.digest

    def counted(secret: str) -> str:
        digests.append(real(secret))
        return digests[-1]

    monkeypatch.setattr(auth, "digest", counted)
    for with_key in (True, False):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        request = head("sk-one")
        if not with_key:
            request = request.replace(b"Authorization: Bearer sk-one\r\n", b"")
        writer.write(request + BODY[:5])
        await until(lambda: bool(gw.state.admission.reading))
        expected = f"k:{digests[0][:32]}" if with_key else "ip:127.0.0.1"
        assert list(gw.state.admission.reading) == [expected] and len(digests) == 1
        writer.write(BODY[5:])
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        writer.close()


async def test_an_unfinished_head_gets_408_and_is_closed(gw: InProcessGateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # never finished
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 408") and b'"code":"request_timeout"' in answer
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)  # control: a slow *body* is fine
    writer.write(head("sk-a") + BODY[:5])
    await asyncio.sleep(0.5)  # noqa: ASYNC251 - longer than header_timeout_s on purpose: no 408 mid-body
    writer.write(BODY[5:])
    assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
    writer.close()
