"""Secret canaries with Redis in the picture: keys, the Redis password and prompt PII never leak anywhere.

Extends ``tests/e2e/test_observability_canary.py`` (logs, /metrics, spans and ledger on the memory
backend) with what only Redis brings: a password-protected redis-server (``--requirepass``), rate-limit
buckets and cached answers stored in it, an outage and recovery while traffic runs (the error paths
log), a second gateway holding a wrong Redis password, and malformed HTTP carrying the client key in
a header (aiohttp's default would log that line at ERROR). Then: every log line at DEBUG, /metrics,
every span, and every Redis key name (SCAN) is searched for each canary.
"""
from __future__ import annotations

import asyncio
import io
import logging
import subprocess
from collections.abc import AsyncIterator, Iterator

import aiohttp
import openai
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from openai import AsyncOpenAI

from gateway.mock import MockServer
from gateway.telemetry.logging import setup_logging
from tests.hardening.rawhttp import send_raw
from tests.support.servers import (
    InProcessGateway,
    free_port,
    gateway_config,
    redis_server_binary,
    start_gateway,
)

CLIENT_KEY = "sk-client-CANARY-4b1d"
UPSTREAM_KEY = "sk-upstream-CANARY-77ae"
WRONG_KEY = "sk-wrong-CANARY-90c1"
REDIS_PASSWORD = "redis-pw-CANARY-5e2f"
WRONG_REDIS_PASSWORD = "redis-wrong-CANARY-c3d4"
EMAIL = "jane.canary@example-canary.org"
CANARIES = (CLIENT_KEY, UPSTREAM_KEY, WRONG_KEY, REDIS_PASSWORD, WRONG_REDIS_PASSWORD, EMAIL, "CANARY")
CLIENT_LOGGERS = ("openai", "httpx", "httpcore")  # the test's own clients log their requests at DEBUG


class PasswordRedis:
    """A redis-server with ``--requirepass`` (the shared fixture runs without one)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, password: str = REDIS_PASSWORD) -> str:
        return f"redis://:{password}@127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
            [
                redis_server_binary() or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                REDIS_PASSWORD,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = aioredis.from_url(self.url())
        try:
            async with asyncio.timeout(10):
                while True:
                    try:
                        if await client.ping():
                            return
                    except (OSError, aioredis.ConnectionError):
                        await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    async def key_names(self) -> list[str]:
        client = aioredis.from_url(self.url())
        try:
            return [k.decode("utf-8", "replace") async for k in client.scan_iter(count=1000)]
        finally:
            await client.aclose()


@pytest_asyncio.fixture
async def password_redis() -> AsyncIterator[PasswordRedis]:
    server = PasswordRedis()
    await server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def debug_logs() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buf = io.StringIO()
    setup_logging("debug", stream=buf)
    root.handlers[0].addFilter(lambda record: not record.name.startswith(CLIENT_LOGGERS))
    try:
        yield buf
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def canary_config(mock: MockServer, redis_url: str) -> dict[str, object]:
    return gateway_config(
        mock.url,
        upstreams={"mock": {"base_url": mock.url, "api_key": UPSTREAM_KEY, "retry": {"max_attempts": 1}}},
        auth={
            "mode": "keys",
            "keys": [{"key": CLIENT_KEY, "tenant": "acme", "rpm": 1000, "tpm": 10_000_000}],
        },
        state={"backend": "redis", "redis_url": redis_url, "timeout_ms": 500, "key_prefix": "canary:"},
        tracing={"enabled": True, "exporter": "memory"},
        metrics={"models": ["gpt-4o"]},
    )


async def traffic(gw: InProcessGateway) -> None:
    prompt = [{"role": "user", "content": f"Please e-mail {EMAIL} the report."}]
    async with AsyncOpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client:
        await client.chat.completions.create(model="gpt-4o", messages=prompt, temperature=0)
        # cached in Redis
        await client.chat.completions.create(model="gpt-4o", messages=prompt, temperature=0)
        async for _ in await client.chat.completions.create(model="gpt-4o", messages=prompt, stream=True):
            pass
        await client.embeddings.create(model="text-embedding-3-small", input=[EMAIL])
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="gpt-4o", messages=prompt,
                                                 extra_headers={"x-mock-fault": "status=400"})
    async with AsyncOpenAI(base_url=gw.base_url, api_key=WRONG_KEY, max_retries=0) as stranger:
        with pytest.raises(openai.AuthenticationError):
            await stranger.chat.completions.create(model="gpt-4o", messages=prompt)
    async with aiohttp.ClientSession() as s, s.post(
            gw.base_url + "/chat/completions", data=f'{{"model": "gpt-4o", "messages": "{EMAIL}',
            headers={"authorization": f"Bearer {CLIENT_KEY}"}) as r:
        assert r.status == 400
    for header in (
        f"Authorization: Bearer {CLIENT_KEY}\x00",
        f"X-Note: {EMAIL}\x01",
        f"Authorization : {CLIENT_KEY}",
    ):
        raw = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n{header}\r\nContent-Length: 2\r\n\r\n{{}}"
        ).encode()
        assert (await send_raw(gw.port, raw)).status == 400


async def test_canaries_never_reach_logs_metrics_spans_or_redis_keys(
        mock_upstream: MockServer, password_redis: PasswordRedis, debug_logs: io.StringIO) -> None:
    """Traffic at DEBUG through Redis with a password, an outage and a wrong password: no canary anywhere."""
    gw = await start_gateway(canary_config(mock_upstream, password_redis.url()))
    wrong = await start_gateway(canary_config(mock_upstream, password_redis.url(WRONG_REDIS_PASSWORD)))
    try:
        await traffic(gw)
        await traffic(wrong)  # every Redis call fails authentication: fail open, logged
        keys = await password_redis.key_names()
        password_redis.kill()
        await traffic(gw)  # Redis gone: connection errors, state changes, fallbacks
        await password_redis.start()
        await traffic(gw)
        async with aiohttp.ClientSession() as s, s.get(gw.url + "/metrics") as r:
            metrics_text = await r.text()
        spans = gw.state.tracer.exporter.get_finished_spans()
        span_text = repr(
            [
                (s.name, dict(s.attributes or {}), [(e.name, dict(e.attributes or {})) for e in s.events])
                for s in spans
            ]
        )
    finally:
        await gw.close()
        await wrong.close()
    logs = debug_logs.getvalue()
    assert '"event":"request"' in logs and "state backend down" in logs  # DEBUG captured, outage seen
    assert any(k.startswith("canary:") for k in keys) and len(keys) >= 3  # limits and cache did use Redis
    assert "gateway_requests_total" in metrics_text and len(spans) >= 20
    for canary in CANARIES:
        assert canary not in logs, (canary, [line for line in logs.splitlines() if canary in line][:3])
        assert canary not in metrics_text, canary
        assert canary not in span_text, canary
        assert not [k for k in keys if canary in k], canary
