"""`--workers 2` whose host Redis is a Redis 8 (``GATEWAY_REDIS_SERVER``): a semantic entry stored by one
worker is a hit on the other, for its tenant only."""
from __future__ import annotations

import secrets
from pathlib import Path

import redis.asyncio as aioredis
from openai import AsyncOpenAI

from tests.e2e.fleet import FREE, OTHER, Pinned, fleet_config, two_workers, whoami
from tests.support.servers import redis8_server_binary, spawn_gateway, wait_ready
from tests.support.until import until


def host_state_url(supervisor: int) -> str:
    """The private Redis's address, from a worker's environment (/proc)."""
    for child in Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split():
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes()
        except OSError:
            continue
        for item in environ.split(b"\0"):
            key, _, value = item.partition(b"=")
            if key == b"GATEWAY_HOST_STATE_URL":
                return value.decode()
    raise AssertionError("no worker has host state")


async def ask(pin: Pinned, key: str, text: str) -> str:
    client: AsyncOpenAI = pin.client(key)
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o", temperature=0, messages=[{"role": "user", "content": text}])
    return raw.headers["x-gateway-cache"]


async def test_semantic_entry_of_one_worker_hits_on_the_other(mock_process: str) -> None:
    binary = redis8_server_binary()
    assert binary is not None
    cfg = fleet_config(mock_process, cache={"semantic": {"enabled": True}},
                       state={"backend": "memory", "timeout_ms": 5000})
    gw = spawn_gateway(cfg, extra_args=["--workers", "2"], env={"GATEWAY_REDIS_SERVER": binary})
    opened: list[Pinned] = []
    try:
        await wait_ready(gw.url, timeout_s=60)
        a, b = await two_workers(gw.url, opened)  # two connections, pinned to two different workers
        assert await whoami(a) != await whoami(b)
        ticket = secrets.randbelow(10**9)
        assert await ask(a, FREE, f"How do I undo the last git commit for ticket {ticket}?") == "miss"
        redis = aioredis.from_url(host_state_url(gw.proc.pid))
        try:
            async def stored() -> bool:  # the worker writes the shared index in the background
                return bool(await redis.keys("*vs:*"))

            await until(stored, timeout=10, interval=0.05, message="the vector reached the host Redis")
        finally:
            await redis.aclose()
        paraphrase = f"How can I undo my last git commit for ticket {ticket}?"
        assert await ask(b, OTHER, paraphrase) == "miss"  # another tenant: never
        assert await ask(b, FREE, paraphrase) == "semantic-hit"  # positive control: the other worker's entry
    finally:
        for pin in opened:
            await pin.http.aclose()
        gw.stop()

