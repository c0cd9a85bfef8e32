"""Single flight through the real server: identical concurrent requests share one upstream call."""
from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
from openai import AsyncOpenAI

from gateway.mock import MockServer
from gateway.mock.faults import scripted_fault_from_json
from policies.cache.runtime import COMPONENT as CACHE
from tests.support.until import until

N = 20
MSGS = [{"role": "user", "content": "plan the next step"}]
SLOW = {"x-mock-fault": "ttft_ms=400"}


def subscribers(gw: Any) -> int:
    flights = gw.state.components[CACHE].flights
    return max((f.subscribers for f in flights._flights.values()), default=0)


def readers(gw: Any) -> int:
    """The readers of the busiest flight: a subscriber that joined during its one reader's read gets one
    once that read ends (``policies/cache/singleflight.py``)."""
    flights = gw.state.components[CACHE].flights
    return max((len(f._readers) for f in flights._flights.values()), default=0)


async def stream_text(client: AsyncOpenAI, headers: dict[str, str] | None = None, **kw: Any) -> str:
    stream = await client.chat.completions.create(model="gpt-4o", messages=MSGS, temperature=0, stream=True,
                                                  extra_headers=headers or SLOW, **kw)
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


async def test_twenty_non_stream_one_call(gateway: Any, client: AsyncOpenAI,
                                          mock_upstream: MockServer) -> None:
    """20 identical concurrent non-stream requests: one upstream call, 20 identical answers."""
    tasks = [asyncio.create_task(client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MSGS, temperature=0, extra_headers=SLOW)) for _ in range(N)]
    results = await asyncio.gather(*tasks)
    bodies = {r.parse().choices[0].message.content for r in results}
    assert len(bodies) == 1
    assert sorted(r.headers["x-gateway-cache"] for r in results) == ["coalesced"] * (N - 1) + ["miss"]
    assert mock_upstream.recorder.count() == 1
    registry = gateway.state.metrics.registry
    assert registry.get_sample_value("gateway_coalesced_requests_total", {"route": "*"}) == N - 1


async def test_twenty_streams_one_call(client: AsyncOpenAI, mock_upstream: MockServer) -> None:
    """20 identical concurrent streams: one upstream call, 20 complete identical texts."""
    texts = await asyncio.gather(*[stream_text(client) for _ in range(N)])
    assert len(set(texts)) == 1 and texts[0]
    assert mock_upstream.recorder.count() == 1




def _small_receive_buffer(addr_info: Any) -> socket.socket:
    """A client socket that takes little from the network while its reader does not read: the follower's
    back-pressure reaches the gateway after a few KiB, whatever the host's socket-buffer autotuning."""
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def test_slow_follower_holds_bounded_memory_then_gets_the_whole_answer(
        gateway: Any, mock_upstream: MockServer) -> None:
    """A follower that stops reading no longer makes the flight buffer the whole 4 MB answer (issue 15):
    past cache.coalesce.max_flight_bytes the flight reads the upstream at its slowest reader's pace.
    Both clients still get the whole, identical answer from one upstream call."""
    body = {"model": "gpt-4o", "messages": MSGS, "temperature": 0, "stream": True, "max_tokens": 50000}
    headers = {"authorization": "Bearer k", "x-mock-tokens": "30000", **SLOW}
    url = gateway.base_url + "/chat/completions"
    flights = gateway.state.components[CACHE].flights
    small = aiohttp.TCPConnector(socket_factory=_small_receive_buffer)
    async with aiohttp.ClientSession() as http, aiohttp.ClientSession(connector=small) as stalled:
        async def leader() -> bytes:
            async with http.post(url, json=body, headers=headers) as resp:
                return await resp.read()

        lead = asyncio.create_task(leader())
        await until(lambda: subscribers(gateway) == 1)
        async with stalled.post(url, json=body, headers=headers) as slow:
            first = await slow.content.readany()  # then stop reading
            await until(lambda: flights.over_bytes == 1)
            await until(lambda: flights.held_bytes() > 0)  # the stopped reader fell behind: its share is held
            assert flights.held_bytes() <= 256 * 1024 + 64 * 1024  # bounded, not 4 MB
            assert not lead.done()  # the leader waits for the reader (the price of the bound)
            rest = await slow.read()
            leader_body = await asyncio.wait_for(lead, 30)
    assert leader_body.endswith(b"data: [DONE]\n\n") and len(leader_body) > 4_000_000
    assert first + rest == leader_body
    assert mock_upstream.recorder.count() == 1
    await until(lambda: flights.held_bytes() == 0)  # memory returned once the clients are done


async def test_cancelled_leader_mid_stream(gateway: Any, client: AsyncOpenAI,
                                           mock_upstream: MockServer) -> None:
    """The first client leaves mid-stream: the others still get the complete answer from the one upstream
    call. (The leader read its body itself until they came; they share it once that read ended: a leader
    cancelled inside that very read takes the body with it, and they start over, tests/policies/cache/
    test_singleflight.py.)"""
    paced = {"x-mock-fault": "tokens_per_s=40"}
    leader = await client.chat.completions.create(model="gpt-4o", messages=MSGS, temperature=0, stream=True,
                                                  extra_headers=paced)
    await leader.__anext__()
    followers = [asyncio.create_task(stream_text(client, paced)) for _ in range(N - 1)]
    await until(lambda: readers(gateway) == N)
    await leader.close()
    texts = await asyncio.gather(*followers)
    assert len(set(texts)) == 1 and len(texts[0].split()) == 16
    assert mock_upstream.recorder.count() == 1
    assert mock_upstream.recorder.attempts[0].outcome == "completed"


async def test_cancelled_leader_before_response(gateway: Any, client: AsyncOpenAI,
                                                mock_upstream: MockServer) -> None:
    """The first client leaves before any byte: the waiters are still served by the same upstream call."""
    lead = asyncio.create_task(client.chat.completions.create(model="gpt-4o", messages=MSGS, temperature=0,
                                                              extra_headers=SLOW))
    await until(lambda: subscribers(gateway) == 1)
    followers = [asyncio.create_task(client.chat.completions.create(
        model="gpt-4o", messages=MSGS, temperature=0, extra_headers=SLOW)) for _ in range(N - 1)]
    await until(lambda: subscribers(gateway) == N)
    lead.cancel()
    answers = await asyncio.gather(*followers)
    assert len({a.choices[0].message.content for a in answers}) == 1
    assert mock_upstream.recorder.count() == 1


async def test_leader_failure_one_waiter_takes_over(make_gateway: Any, mock_upstream: MockServer) -> None:
    """The leader's call fails before a response: it gets the error, one waiter takes over, the rest follow
    it."""
    gw = await make_gateway(upstreams={"mock": {"base_url": mock_upstream.url, "retry": {"max_attempts": 1}}})
    mock_upstream.state.faults.extend([scripted_fault_from_json(
        {"fault": "stall_before_first_byte_ms=400;reset_before_headers", "times": 1})])
    async with AsyncOpenAI(base_url=gw.base_url, api_key="k", max_retries=0) as client:
        lead = asyncio.create_task(client.chat.completions.create(model="gpt-4o", messages=MSGS,
                                                                  temperature=0))
        await until(lambda: subscribers(gw) == 1)
        others = [asyncio.create_task(client.chat.completions.create(model="gpt-4o", messages=MSGS,
                                                                     temperature=0)) for _ in range(5)]
        await until(lambda: subscribers(gw) == 6)
        results = await asyncio.gather(lead, *others, return_exceptions=True)
    assert isinstance(results[0], Exception)
    assert len({r.choices[0].message.content for r in results[1:]}) == 1
    assert mock_upstream.recorder.count() == 2


async def test_nondeterministic_not_coalesced_by_default(client: AsyncOpenAI,
                                                         mock_upstream: MockServer) -> None:
    """Requests without temperature 0 or a seed each go upstream unless coalesce.nondeterministic is on."""
    await asyncio.gather(*[client.chat.completions.create(model="gpt-4o", messages=MSGS, extra_headers=SLOW)
                           for _ in range(4)])
    assert mock_upstream.recorder.count() == 4


async def test_nondeterministic_coalesced_when_enabled(make_gateway: Any, mock_upstream: MockServer) -> None:
    """With coalesce.nondeterministic: true, identical non-deterministic requests share one call."""
    gw = await make_gateway(cache={"coalesce": {"nondeterministic": True}})
    async with AsyncOpenAI(base_url=gw.base_url, api_key="k", max_retries=0) as client:
        lead = asyncio.create_task(client.chat.completions.create(model="gpt-4o", messages=MSGS,
                                                                  extra_headers=SLOW))
        await until(lambda: subscribers(gw) == 1)
        rest = [client.chat.completions.create(model="gpt-4o", messages=MSGS,
                                               extra_headers=SLOW) for _ in range(3)]
        await asyncio.gather(lead, *rest)
    assert mock_upstream.recorder.count() == 1
