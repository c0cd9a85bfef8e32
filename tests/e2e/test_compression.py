"""End to end through the real server: oversized conversations are compressed
(or refused) before the provider."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from gateway.mock import MockServer
from gateway.tokens.tokenizer import Tokenizer
from policies.compression.turns import tool_call_problems
from tests.e2e.conftest import GatewayFactory

MODEL = "gpt-4o-mini"
WINDOW = 32000
BUDGET = int((WINDOW - 500) * 0.8)  # budgets.default_max_tokens is reserved for the answer
TRANSCRIPT = Path(__file__).resolve().parents[1] / "data" / "transcripts" / "react_orders.json.gz"
TOKENIZER = Tokenizer()


def conversation() -> tuple[list[dict[str, Any]], list[str]]:
    """The 32k-token ReAct checkpoint of the evaluation set and the facts its next answer needs."""
    data = json.loads(gzip.decompress(TRANSCRIPT.read_bytes()))
    checkpoint = next(c for c in data["checkpoints"] if c["name"] == "32k")
    return data["messages"][: checkpoint["upto"]], checkpoint["facts"]


async def start(make_gateway: GatewayFactory) -> tuple[Any, AsyncOpenAI]:
    gw = await make_gateway(models={MODEL: {"context_window": WINDOW}}, budgets={"default_max_tokens": 500})
    return gw, AsyncOpenAI(base_url=gw.base_url, api_key="sk-client-secret", max_retries=0)


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_conversation_over_the_window_reaches_the_provider_compressed(
        make_gateway: GatewayFactory, mock_upstream: MockServer) -> None:
    """The provider gets a valid request within budget that keeps the task and the needed facts;
    the header and /metrics report the same saving."""
    gw, client = await start(make_gateway)
    messages, facts = conversation()
    before = TOKENIZER.count_request("chat", {"model": MODEL, "messages": messages})
    assert before > WINDOW
    async with client:
        raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    assert raw.parse().choices[0].message.content
    sent = mock_upstream.recorder.attempts[-1].json
    after = TOKENIZER.count_request("chat", sent)
    assert after <= BUDGET and sent["max_tokens"] == 500
    assert tool_call_problems(sent["messages"]) == []
    assert sent["messages"][1] == messages[1]  # the task
    text = json.dumps(sent["messages"])
    assert all(json.dumps(f)[1:-1] in text for f in facts)
    assert int(raw.headers["x-gateway-tokens-saved"]) == before - after
    samples = await scrape(gw.url)
    saved = sum(v for (name, labels), v in samples.items()
                if name == "gateway_compression_tokens_saved_total" and ("route", "*") in labels)
    assert saved == before - after
    assert samples[("gateway_compression_ratio_count", ())] == 1
    assert samples[("gateway_budget_decisions_total", (("decision", "filled_default"), ("route", "*")))] == 1


async def test_streamed_request_is_compressed_too(
    make_gateway: GatewayFactory, mock_upstream: MockServer
) -> None:
    """A streaming request is compressed the same way and streams to a clean end."""
    _, client = await start(make_gateway)
    messages, _ = conversation()
    async with client:
        stream = await client.chat.completions.create(model=MODEL, messages=messages, stream=True)  # type: ignore[arg-type]
        chunks = [chunk async for chunk in stream]
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert TOKENIZER.count_request("chat", mock_upstream.recorder.attempts[-1].json) <= BUDGET


async def test_unfittable_request_is_refused_without_calling_the_provider(
        make_gateway: GatewayFactory, mock_upstream: MockServer) -> None:
    """A task larger than the window gets 400 context_length_exceeded from the gateway itself."""
    _, client = await start(make_gateway)
    async with client:
        with pytest.raises(openai.BadRequestError) as err:
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "word " * 40000}]
            )
    assert err.value.code == "context_length_exceeded" and "after compression" in err.value.message
    assert mock_upstream.recorder.count() == 0


async def test_client_opt_out_sends_the_conversation_as_is(
        make_gateway: GatewayFactory, mock_upstream: MockServer) -> None:
    """x-gateway-compression: off forwards every message unchanged."""
    _, client = await start(make_gateway)
    messages, _ = conversation()
    async with client:
        await client.chat.completions.create(model=MODEL, messages=messages,  # type: ignore[arg-type]
                                             extra_headers={"x-gateway-compression": "off"})
    assert mock_upstream.recorder.attempts[-1].json["messages"] == messages
