"""Accounting truth over a mixed run: ``gateway_tokens_total`` equals the provider's usage, exactly.

One gateway serves a mix: every provider fixture that reports usage (chat, completions and Responses
streams, non-stream bodies; cached and reasoning tokens; Groq's ``x_groq``, DeepSeek's cache hits),
each stream both with and without the client asking for ``include_usage``, plus the mock's own
generated answers through the official ``openai`` SDK. The expected figure of each request is the
usage the client received (parsed here, independently of the gateway) or, where the client did not
ask for it, what the provider sent (the fixture). The metric is read from ``GET /metrics`` with
prometheus_client's parser.
"""
from __future__ import annotations

import re
from typing import Any

import aiohttp
import orjson
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import GatewayFactory
from tests.e2e.test_provider_fidelity import request_body
from tests.policies.cache.test_provider_corpus import CASES
from tests.support.servers import InProcessGateway
from tests.support.until import until

KINDS = ("prompt", "completion", "cached_prompt", "reasoning")
Tokens = tuple[int, int, int, int]


def payloads(body: bytes) -> list[Any]:
    """JSON payloads of an SSE stream (any line end, multi-line data) or the one JSON body."""
    text = body.decode()
    if not text.lstrip().startswith(("data", ":", "event", "id")):
        return [orjson.loads(body)]
    out = []
    for event in re.split(r"\n\n", text.replace("\r\n", "\n").replace("\r", "\n")):
        data = [ln[5:].removeprefix(" ") for ln in event.split("\n") if ln.startswith("data:")]
        if data and data != ["[DONE]"]:
            out.append(orjson.loads("\n".join(data)))
    return out


def usage_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    nested = (obj.get("response") or {}).get("usage"), (obj.get("x_groq") or {}).get("usage")
    for found in (obj.get("usage"), *nested):
        if isinstance(found, dict):
            return found
    return None


def tokens(usage: dict[str, Any]) -> Tokens:
    prompt_details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    out_details = usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
    cached = prompt_details.get("cached_tokens") or usage.get("prompt_cache_hit_tokens") or 0
    return (
        usage.get("prompt_tokens", usage.get("input_tokens", 0)),
        usage.get("completion_tokens", usage.get("output_tokens", 0)),
        cached,
        out_details.get("reasoning_tokens") or 0,
    )


def received(body: bytes) -> Tokens | None:
    """The last usage the client saw in ``body``."""
    found = [u for p in payloads(body) if isinstance(p, dict) and (u := usage_of(p)) is not None]
    return tokens(found[-1]) if found else None


async def scraped(gw: InProcessGateway) -> Tokens:
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/metrics") as r:
        text = await r.text()
    by_kind = dict.fromkeys(KINDS, 0.0)
    estimated = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_tokens_total" and sample.labels.get("kind") in by_kind:
                by_kind[sample.labels["kind"]] += sample.value
            elif sample.name == "gateway_tokens_estimated_total":
                estimated += sample.value
    assert estimated == 0.0  # every figure was reported by the provider
    got = tuple(int(by_kind[k]) for k in KINDS)
    assert all(float(v).is_integer() for v in by_kind.values())
    return got  # type: ignore[return-value]


def add(a: Tokens, b: Tokens) -> Tokens:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3])


MIXED = [(n, c, asked) for n, c in CASES if c["expect"]["usage"] is not None
         for asked in ((True, False) if c["stream"] and c["path"] != "/v1/responses" else (True,))]


async def _fixture_run(gw: InProcessGateway) -> Tokens:
    total: Tokens = (0, 0, 0, 0)
    async with aiohttp.ClientSession() as s:
        for name, case, asked in MIXED:
            body = request_body(case)
            if not asked:
                body.pop("stream_options", None)
            async with s.post(gw.url + case["path"], json=body,
                              headers={"x-mock-fixture": name, "authorization": "Bearer sk-c"}) as r:
                got = await r.read()
                assert r.status == 200, got[:300]
            provider: Tokens = tuple(case["expect"]["usage"])  # type: ignore[assignment]
            seen = received(got)
            if asked:
                assert seen == provider, name  # the client got the provider's figures
            else:
                assert seen is None or name.startswith("groq/"), name  # hidden (Groq's x_groq is its own)
            total = add(total, provider)
    return total


async def _sdk_run(gw: InProcessGateway) -> Tokens:
    total: Tokens = (0, 0, 0, 0)
    msgs: Any = [{"role": "user", "content": "count to five"}]
    async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-c", max_retries=0) as c:
        chat = await c.chat.completions.create(model="gpt-4o-mini", messages=msgs)
        comp = await c.completions.create(model="gpt-3.5-turbo-instruct", prompt="count to five")
        resp = await c.responses.create(model="gpt-4o-mini", input="count to five")
        for u in (chat.usage, comp.usage, resp.usage):
            assert u is not None
            total = add(total, tokens(u.model_dump()))
        stream = await c.chat.completions.create(model="gpt-4o-mini", messages=msgs, stream=True,
                                                 stream_options={"include_usage": True})
        usage = [chunk.usage async for chunk in stream if chunk.usage is not None]
        assert len(usage) == 1
        total = add(total, tokens(usage[0].model_dump()))
        async with c.responses.stream(model="gpt-4o-mini", input="count to five") as rs:
            final = await rs.get_final_response()
        assert final.usage is not None
        total = add(total, tokens(final.usage.model_dump()))
    return total


async def test_tokens_total_equals_provider_usage_over_a_mixed_run(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    assert await scraped(gw) == (0, 0, 0, 0)
    expected = add(await _fixture_run(gw), await _sdk_run(gw))
    assert expected[2] > 0 and expected[3] > 0  # the mix has cached and reasoning tokens
    # The last request's sinks may run just after its client read the end: wait for them, then compare.
    await until(lambda: _equal(gw, expected), message=f"gateway_tokens_total never reached {expected}")
    assert await scraped(gw) == expected


async def _equal(gw: InProcessGateway, expected: Tokens) -> bool:
    return await scraped(gw) == expected
