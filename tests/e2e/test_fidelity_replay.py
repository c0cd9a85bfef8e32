"""Cross-mode cache replay of every provider fixture, judged by the official openai SDK.

For each fixture in tests/data/providers: the SDK's answer straight from the provider (the mock
replaying the fixture), through the gateway (which stores it), and replayed from the cache in the
other mode (a stream as JSON, JSON as a stream). Passthrough must be identical; the replay must show
the client the same answer (``sdk_oracle.differences``): the provider's nulls, tool-call ids, usage
and its extras (Azure content filter results, Groq ``x_groq``, llama.cpp ``timings``...).
"""
from __future__ import annotations

from typing import Any

import pytest
from openai import AsyncOpenAI

from gateway.mock import MockServer
from tests.e2e.conftest import GatewayFactory
from tests.e2e.test_provider_fidelity import request_body
from tests.policies.cache.test_provider_corpus import CASES
from tests.support.sdk_oracle import differences, final_answer


def asked(case: dict[str, Any], prompt: str) -> dict[str, Any]:
    body = {**request_body(case), "temperature": 0}  # deterministic: cacheable
    if case["path"] == "/v1/responses":
        body["input"] = prompt
    elif case["path"] == "/v1/completions":
        body["prompt"] = prompt
    else:
        body["messages"] = [{"role": "user", "content": prompt}]
    return body


def other_mode(case: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    other = {k: v for k, v in body.items() if k != "stream_options"}
    other["stream"] = not case["stream"]
    if other["stream"] and case["path"] != "/v1/responses":
        other["stream_options"] = {"include_usage": True}
    return other


@pytest.mark.parametrize(("name", "case"), CASES, ids=[n for n, _ in CASES])
async def test_cross_mode_replay_shows_the_client_the_same_answer(
    make_gateway: GatewayFactory, mock_upstream: MockServer, name: str, case: dict[str, Any]
) -> None:
    gw = await make_gateway(cache={"exact": {"cache_truncated": True}})
    prompt = f"replay {name}"
    body, headers = asked(case, prompt), {"x-mock-fixture": name}
    async with (
        AsyncOpenAI(base_url=mock_upstream.url, api_key="sk-d", max_retries=0) as direct,
        AsyncOpenAI(base_url=gw.base_url, api_key="sk-c", max_retries=0) as client,
    ):
        provider = await final_answer(direct, case["path"], body, headers)
        assert await final_answer(client, case["path"], body, headers) == provider  # passthrough
        replayed = await final_answer(client, case["path"], other_mode(case, body), headers)
    assert len([a for a in mock_upstream.recorder.attempts if prompt in a.body.decode()]) == 2  # a cache hit
    assert differences(provider, replayed) == []
    for choice in replayed.get("choices") or ():
        message = choice.get("message") or {}
        if message.get("tool_calls"):  # the provider's null content stays null, ids stay
            assert message["content"] is None and all(c["id"] for c in message["tool_calls"])
