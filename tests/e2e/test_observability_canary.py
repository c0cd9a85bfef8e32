"""The log canary: keys and personal data from requests never reach logs, /metrics, spans or the ledger."""
from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from gateway.telemetry.logging import setup_logging
from tests.support.servers import InProcessGateway

GatewayFactory = Callable[..., Awaitable[InProcessGateway]]
CLIENT_KEY = "sk-client-CANARY-7f3a91"
UPSTREAM_KEY = "sk-upstream-CANARY-91bd44"
WRONG_KEY = "sk-wrong-CANARY-0c2e"
EMAIL = "canary.person@example-canary.org"
CANARIES = (CLIENT_KEY, UPSTREAM_KEY, WRONG_KEY, EMAIL, "CANARY")
CLIENT_LOGGERS = ("openai", "httpx", "httpcore")


@pytest.fixture
def debug_logs() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buf = io.StringIO()
    setup_logging("debug", stream=buf)
    # The test's own client (openai SDK, httpx) logs its requests at DEBUG; only the gateway's lines count.
    root.handlers[0].addFilter(lambda record: not record.name.startswith(CLIENT_LOGGERS))
    try:
        yield buf
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])


async def test_canaries_appear_nowhere(make_gateway: GatewayFactory, mock_upstream: object, tmp_path: Path,
                                       debug_logs: io.StringIO) -> None:
    """Traffic at DEBUG with secrets in headers and an e-mail in prompts leaves no trace of them anywhere."""
    db = tmp_path / "ledger.sqlite3"
    gw = await make_gateway(
        upstreams={"mock": {"base_url": mock_upstream.url, "api_key": UPSTREAM_KEY,  # type: ignore[attr-defined]
                            "retry": {"max_attempts": 1}}},
        auth={"mode": "keys", "keys": [{"key": CLIENT_KEY, "tenant": "acme"}]},
        tracing={"enabled": True, "exporter": "memory"}, ledger={"enabled": True, "sqlite_path": str(db)},
        admin={"api_key": "adm"}, metrics={"models": ["gpt-4o"]})
    prompt = [{"role": "user", "content": f"Please e-mail {EMAIL} the summary."}]
    async with AsyncOpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client:
        await client.chat.completions.create(model="gpt-4o", messages=prompt)
        async for _ in await client.chat.completions.create(model="gpt-4o", messages=prompt, stream=True):
            pass
        async for _ in await client.chat.completions.create(model="gpt-4o", messages=prompt, stream=True,
                                                            extra_headers={"x-mock-no-usage": "1"}):
            pass
        await client.embeddings.create(model="text-embedding-3-small", input=[EMAIL])
        await client.responses.create(model="gpt-4o", input=f"write to {EMAIL}")
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="gpt-4o", messages=prompt,
                                                 extra_headers={"x-mock-fault": "status=400"})
    async with AsyncOpenAI(base_url=gw.base_url, api_key=WRONG_KEY, max_retries=0) as stranger:
        with pytest.raises(openai.AuthenticationError):
            await stranger.chat.completions.create(model="gpt-4o", messages=prompt)
    async with aiohttp.ClientSession() as s:
        async with s.post(
            gw.base_url + "/chat/completions",
            data=f'{{"model": "gpt-4o", "messages": "{EMAIL}',
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
        ) as r:
            assert r.status == 400
        async with s.get(gw.url + "/metrics") as r:
            metrics_text = await r.text()
        async with s.get(
            gw.url + "/admin/usage?group_by=tenant", headers={"authorization": "Bearer adm"}
        ) as r:
            usage_text = await r.text()
    spans = gw.state.tracer.exporter.get_finished_spans()
    span_text = repr(
        [
            (s.name, dict(s.attributes or {}), [(e.name, dict(e.attributes or {})) for e in s.events])
            for s in spans
        ]
    )
    await gw.close()  # flushes the ledger
    assert '"key":"acme"' in usage_text and "gateway_requests_total" in metrics_text and len(spans) >= 12
    logs = debug_logs.getvalue()
    assert '"event":"request"' in logs  # the logs were captured at DEBUG
    stored = await asyncio.to_thread(_ledger_bytes, db, tmp_path)
    for canary in CANARIES:
        assert canary not in logs, canary
        assert canary not in metrics_text, canary
        assert canary not in span_text, canary
        assert canary not in usage_text, canary
        assert canary.encode() not in stored, canary


async def test_content_is_on_spans_only_when_asked(make_gateway: GatewayFactory) -> None:
    """tracing.capture_content: true records the prompt and the answer on the request span."""
    gw = await make_gateway(tracing={"enabled": True, "exporter": "memory", "capture_content": True})
    async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-c", max_retries=0) as client:
        r = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": EMAIL}]
        )
    await gw.close()
    (server,) = [s for s in gw.state.tracer.exporter.get_finished_spans() if s.kind.name == "SERVER"]
    assert EMAIL in server.attributes["gen_ai.input.messages"]
    assert server.attributes["gen_ai.output.messages"] == r.choices[0].message.content


def _ledger_bytes(db: Path, tmp_path: Path) -> bytes:
    """The ledger database and its side files (journal, WAL), as stored on disk."""
    return db.read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("ledger.sqlite3-*"))
