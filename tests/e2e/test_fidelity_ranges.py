"""Value ranges through the real gateway: the provider judges them unless a route opts into local checks."""
from __future__ import annotations

import openai
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from gateway.mock import MockServer
from tests.e2e.conftest import GatewayFactory
from tests.support.servers import InProcessGateway

ROUTES = [
    {"match": {"model": "strict-*"}, "upstream": "mock", "validate": "strict"},
    {"match": {"model": "shadow-*"}, "upstream": "mock", "validate": "shadow"},
    {"match": {"model": "*"}, "upstream": "mock"},
]
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def validation(gw: InProcessGateway) -> dict[str, float]:
    return {s.labels["decision"]: s.value for f in gw.state.metrics.registry.collect() for s in f.samples
            if s.name == "gateway_policy_decisions_total" and s.labels["policy"] == "validation"}


def sent_temperatures(mock: MockServer, model: str) -> list[object]:
    return [a.json.get("temperature") for a in mock.recorder.attempts
            if isinstance(a.json, dict) and a.json.get("model") == model]


async def test_provider_mode_forwards_and_the_providers_error_passes_through(
    make_gateway: GatewayFactory, mock_upstream: MockServer, direct: AsyncOpenAI
) -> None:
    gw = await make_gateway(routes=ROUTES)
    async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-c", max_retries=0) as client:
        ok = await client.chat.completions.create(model="gpt-4o", messages=HI, temperature=3)
        assert ok.choices[0].message.content  # the provider accepted it
        errors = []
        for c in (client, direct):  # the provider refuses: the same error through the gateway and direct
            with pytest.raises(openai.BadRequestError) as err:
                await c.chat.completions.create(model="gpt-4o", messages=HI, temperature=3,
                                                extra_headers={"x-mock-fault": "status=400"})
            errors.append(err.value.body)
    assert errors[0] == errors[1]
    assert sent_temperatures(mock_upstream, "gpt-4o") == [3, 3, 3]
    assert validation(gw) == {}


async def test_strict_route_answers_400_itself(
    make_gateway: GatewayFactory, mock_upstream: MockServer
) -> None:
    gw = await make_gateway(routes=ROUTES)
    async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-c", max_retries=0) as client:
        await client.chat.completions.create(model="strict-a", messages=HI, temperature=1)  # positive control
        with pytest.raises(openai.BadRequestError) as err:
            await client.chat.completions.create(model="strict-a", messages=HI, temperature=3)
    assert err.value.code == "invalid_value" and err.value.param == "temperature"
    assert sent_temperatures(mock_upstream, "strict-a") == [1]  # the refused one never left
    assert validation(gw) == {"ok": 1.0, "refused": 1.0}


async def test_shadow_route_counts_and_forwards(
    make_gateway: GatewayFactory, mock_upstream: MockServer
) -> None:
    gw = await make_gateway(routes=ROUTES)
    async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-c", max_retries=0) as client:
        for t in (1, 3):
            await client.chat.completions.create(model="shadow-a", messages=HI, temperature=t)
    assert sent_temperatures(mock_upstream, "shadow-a") == [1, 3]
    assert validation(gw) == {"ok": 1.0, "would_refuse": 1.0}
