"""Every provider fixture through the real gateway: byte for byte, and measured right.

The mock replays each fixture byte for byte (``x-mock-fixture``); the client must receive exactly
those bytes through the gateway, and the gateway's own figures must match what the provider
reported: ``gateway_tokens_total`` per kind (prompt, completion, cached_prompt, reasoning), TTFT
and inter-token observations. The official ``openai`` SDK then gets equal objects through the
gateway and directly from the mock.
"""
from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from openai import AsyncOpenAI, LengthFinishReasonError

from gateway.mock import MockServer
from gateway.sse import events_of
from tests.e2e.conftest import GatewayFactory
from tests.policies.cache.test_provider_corpus import CASES
from tests.support.servers import InProcessGateway
from tests.support.until import until

KINDS = ("prompt", "completion", "cached_prompt", "reasoning")


def total(gw: InProcessGateway, name: str, **labels: str) -> float:
    out = 0.0
    for family in gw.state.metrics.registry.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                out += s.value
    return out


def request_body(case: dict[str, Any]) -> dict[str, Any]:
    model = case["expect"]["model"] or "m"
    if case["path"] == "/v1/responses":
        return {"model": model, "input": "hi", "stream": case["stream"]}
    body: dict[str, Any] = {"model": model, "stream": case["stream"]}
    if case["path"] == "/v1/completions":
        body["prompt"] = "hi"
    else:
        body["messages"] = [{"role": "user", "content": "hi"}]
    if case["stream"] and (case.get("include_usage") or case["expect"]["usage"] is not None):
        body["stream_options"] = {"include_usage": True}
    return body


@pytest.mark.parametrize(("name", "case"), CASES, ids=[n for n, _ in CASES])
async def test_byte_for_byte_and_metrics(
    make_gateway: GatewayFactory, name: str, case: dict[str, Any]
) -> None:
    gw = await make_gateway()
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            gw.url + case["path"],
            json=request_body(case),
            headers={"x-mock-fixture": name, "authorization": "Bearer sk-client"},
        ) as r,
    ):
        got = await r.read()
        assert r.status == 200, got[:300]
    assert got == case["body"].encode()
    expect = case["expect"]
    if expect["usage"] is not None:
        tokens = [total(gw, "gateway_tokens_total", kind=k) for k in KINDS]
        assert tokens == [float(v) for v in expect["usage"]]
        assert total(gw, "gateway_tokens_estimated_total") == 0.0
    if case["stream"] and expect["tokens"]:
        # a usage-less answer is recorded once its estimate has its encoding (loaded in a thread, once)
        await until(lambda: total(gw, "gateway_time_to_first_token_seconds_count", source="upstream") > 0)
        assert total(gw, "gateway_time_to_first_token_seconds_count", source="upstream") == 1.0


SDK_CASES = [(n, c) for n, c in CASES if c["path"] == "/v1/chat/completions"]


@pytest.mark.parametrize(("name", "case"), SDK_CASES, ids=[n for n, _ in SDK_CASES])
async def test_openai_sdk_objects_equal(
    make_gateway: GatewayFactory, mock_upstream: MockServer, name: str, case: dict[str, Any]
) -> None:
    gw = await make_gateway()
    results = []
    for base in (gw.base_url, mock_upstream.url):
        async with AsyncOpenAI(
            base_url=base, api_key="sk-x", max_retries=0, default_headers={"x-mock-fixture": name}
        ) as client:
            body = request_body(case)
            if case["stream"]:
                results.append(await _stream(client, {k: v for k, v in body.items() if k != "stream"}))
            else:
                results.append((await client.chat.completions.create(**body)).model_dump())
    assert results[0] == results[1]


async def _stream(client: AsyncOpenAI, body: dict[str, Any]) -> Any:
    """Every streamed event and the ``parse`` helper's final completion (or the error it raises)."""
    async with client.beta.chat.completions.stream(**body) as st:
        chunks = [event.model_dump() async for event in st]
        try:
            final: Any = (await st.get_final_completion()).model_dump()
        except LengthFinishReasonError as exc:  # the parse helper refuses a truncated answer, either way
            final = repr(exc)
    return chunks, final


UNASKED = [
    (n, c)
    for n, c in CASES
    if c["stream"] and c["path"] == "/v1/chat/completions" and c["expect"]["usage"] is not None
]


@pytest.mark.parametrize(("name", "case"), UNASKED, ids=[n for n, _ in UNASKED])
async def test_usage_counted_when_the_client_did_not_ask(
    make_gateway: GatewayFactory, name: str, case: dict[str, Any]
) -> None:
    """The gateway asks for usage itself, counts the provider's figures and hides them from the client."""
    gw = await make_gateway()
    body = {k: v for k, v in request_body(case).items() if k != "stream_options"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            gw.url + case["path"],
            json=body,
            headers={"x-mock-fixture": name, "authorization": "Bearer sk-client"},
        ) as r,
    ):
        got = await r.read()
    assert r.status == 200 and got.endswith(b"data: [DONE]\n\n")
    assert [total(gw, "gateway_tokens_total", kind=k) for k in KINDS] == [
        float(v) for v in case["expect"]["usage"]
    ]
    assert total(gw, "gateway_tokens_estimated_total") == 0.0
    payloads = [orjson.loads(p) for _, p in events_of(got) if p and p != b"[DONE]"]
    assert not any("usage" in p for p in payloads)  # top level only: Groq's own x_groq.usage stays
