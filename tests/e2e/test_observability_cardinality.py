"""Cardinality: 10,000 requests with random models, paths and headers add no metric series."""
from __future__ import annotations

import asyncio
import random
import string
from collections.abc import Awaitable, Callable

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import InProcessGateway

GatewayFactory = Callable[..., Awaitable[InProcessGateway]]
TOTAL, WARMUP, CONCURRENCY = 10_000, 1_000, 16
KNOWN_MODELS = {"gpt-4o", "other"}


def junk(rng: random.Random, n: int = 12) -> str:
    return "".join(
        rng.choice(string.ascii_letters + string.digits + "-_.:/@é") for _ in range(rng.randint(1, n))
    )


def random_request(rng: random.Random, i: int) -> tuple[str, str, bytes | None, dict[str, str]]:
    """One request of kind ``i % 6``: chats and streams with random models, unknown paths, bad JSON."""
    headers = {"x-request-id": junk(rng, 40), f"x-{junk(rng, 8).lower()}": junk(rng),
               "authorization": f"Bearer sk-{junk(rng, 20)}", "x-mock-tokens": "1",
               "traceparent": f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01",
               "x-tenant": junk(rng), "openai-organization": junk(rng)}
    model = "gpt-4o" if i % 10 == 0 else f"{junk(rng)}-{i}"
    kind = i % 6
    if kind in (0, 1, 2):
        body = b'{"model": "%s", "messages": [{"role": "user", "content": "%s"}]}' % (
            model.encode(), junk(rng).encode())
        return "POST", "/v1/chat/completions", body, headers
    if kind == 3:
        body = (
            b'{"model": "%s", "stream": true, "messages": [{"role": "user", "content": "x"}]}'
            % model.encode()
        )
        return "POST", "/v1/chat/completions", body, headers
    if kind == 4:
        return (
            rng.choice(["GET", "POST", "DELETE"]),
            f"/v1/{junk(rng)}/{junk(rng)}".replace("//", "/x/"),
            b"{}",
            headers,
        )
    return "POST", "/v1/chat/completions", b'{"model": "' + model.encode() + b'", "messages": [', headers


async def series(session: aiohttp.ClientSession, url: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    async with session.get(url + "/metrics") as r:
        text = await r.text()
    return {(s.name, tuple(sorted(s.labels.items())))
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_random_traffic_adds_no_series(make_gateway: GatewayFactory) -> None:
    """After a warm-up that saw every kind of request,
    9,000 more random ones leave the series set unchanged."""
    gw = await make_gateway(metrics={"models": ["gpt-4o"]})
    rng = random.Random(20240611)
    requests = [random_request(rng, i) for i in range(TOTAL)]
    statuses: dict[int, int] = {}

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        async def run(batch: list[tuple[str, str, bytes | None, dict[str, str]]]) -> None:
            queue = iter(batch)

            async def worker() -> None:
                for method, path, body, headers in queue:
                    async with session.request(method, gw.url + path, data=body, headers=headers) as r:
                        await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

        await run(requests[:WARMUP])
        warm = await series(session, gw.url)
        await run(requests[WARMUP:])
        final = await series(session, gw.url)
    assert sum(statuses.values()) == TOTAL and statuses.get(200, 0) >= TOTAL // 2 and statuses.get(404) \
        and statuses.get(400)
    assert final == warm, sorted(final - warm)[:10]
    models = {dict(labels).get("model") for _, labels in final} - {None}
    assert models <= KNOWN_MODELS
    assert len(final) < 600  # bounded by config, not by traffic
