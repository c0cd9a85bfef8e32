"""The semantic cache through the real server: paraphrases hit, near-misses and other tenants do not."""
from __future__ import annotations

from typing import Any

from openai import AsyncOpenAI

from gateway.mock import MockServer

SEMANTIC = {"semantic": {"enabled": True}}
SYSTEM = {"role": "system", "content": "You are terse."}


async def ask(client: AsyncOpenAI, text: str, system: dict[str, str] = SYSTEM, **kw: Any) -> tuple[str, str]:
    resp = await client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[system, {"role": "user", "content": text}], **kw)
    return resp.headers["x-gateway-cache"], resp.parse().choices[0].message.content or ""


async def test_paraphrase_hits_and_near_misses_do_not(make_gateway: Any, mock_upstream: MockServer) -> None:
    """A paraphrase gets the stored answer (also streamed); a negation,
    a number change or a new system prompt miss."""
    gw = await make_gateway(cache=SEMANTIC)
    async with AsyncOpenAI(base_url=gw.base_url, api_key="k", max_retries=0) as client:
        result, original = await ask(client, "How do I undo the last git commit?")
        assert result == "miss"
        result, answer = await ask(client, "How can I undo my last git commit?")
        assert (result, answer) == ("semantic-hit", original)
        async with client.chat.completions.stream(model="gpt-4o", messages=[
                SYSTEM, {"role": "user", "content": "how can I undo my last git commit"}]) as stream:
            streamed = await stream.get_final_completion()
        assert streamed.choices[0].message.content == original
        assert mock_upstream.recorder.count() == 1
        assert (await ask(client, "How do I not undo the last git commit?"))[0] == "miss"
        assert (await ask(client, "How do I undo the last 3 git commits?"))[0] == "miss"
        other = {"role": "system", "content": "You are verbose."}
        assert (await ask(client, "How can I undo my last git commit?", system=other))[0] == "miss"
    assert mock_upstream.recorder.count() == 4
    registry = gw.state.metrics.registry
    assert (
        registry.get_sample_value("gateway_cache_requests_total", {"kind": "semantic", "result": "hit"}) == 2
    )
    assert registry.get_sample_value("gateway_semantic_similarity_count") >= 5


async def test_tenants_never_share_semantic_entries(make_gateway: Any, mock_upstream: MockServer) -> None:
    """Tenant B's paraphrase of tenant A's question is a miss."""
    gw = await make_gateway(cache=SEMANTIC, auth={"mode": "keys", "keys": [{"key": "ka", "tenant": "a"},
                                                                          {"key": "kb", "tenant": "b"}]})
    async with AsyncOpenAI(base_url=gw.base_url, api_key="ka", max_retries=0) as a, \
            AsyncOpenAI(base_url=gw.base_url, api_key="kb", max_retries=0) as b:
        assert (await ask(a, "Why is the sky blue?"))[0] == "miss"
        assert (await ask(b, "Why does the sky look blue?"))[0] == "miss"
        assert (await ask(a, "Why does the sky look blue?"))[0] == "semantic-hit"
    assert mock_upstream.recorder.count() == 2


async def test_tool_turns_are_skipped(make_gateway: Any, mock_upstream: MockServer) -> None:
    """Conversations with tool calls or tool results never use the semantic cache (by default)."""
    gw = await make_gateway(cache=SEMANTIC)
    messages = [{"role": "user", "content": "weather?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                {"role": "user", "content": "So should I take an umbrella?"}]
    async with AsyncOpenAI(base_url=gw.base_url, api_key="k", max_retries=0) as client:
        for _ in range(2):
            await client.chat.completions.create(model="gpt-4o", messages=messages)
    assert mock_upstream.recorder.count() == 2


async def test_upstream_embedder(make_gateway: Any, mock_upstream: MockServer) -> None:
    """embedder: upstream:<name>:<model> embeds through the configured upstream's /embeddings."""
    gw = await make_gateway(
        cache={"semantic": {"enabled": True, "embedder": "upstream:mock:text-embedding-3-small"}}
    )
    async with AsyncOpenAI(base_url=gw.base_url, api_key="k", max_retries=0) as client:
        assert (await ask(client, "What is a harbor?"))[0] == "miss"
        assert (await ask(client, "What is a harbor?"))[0] == "semantic-hit"
    assert mock_upstream.recorder.count("/v1/embeddings") == 1  # the repeated question's vector is memoised
    assert mock_upstream.recorder.count("/v1/chat/completions") == 1


async def test_a_truncated_answer_is_not_stored_unless_allowed(make_gateway: Any,
                                                               mock_upstream: MockServer) -> None:
    """An answer cut by ``max_tokens`` (finish_reason ``length``) is no answer to a paraphrase: not stored
    (``not_stored_truncated``), unless ``cache.exact.cache_truncated`` (the positive control)."""
    for allowed, expected in ((False, "miss"), (True, "semantic-hit")):
        gw = await make_gateway(cache={**SEMANTIC, "exact": {"cache_truncated": allowed}})
        async with AsyncOpenAI(base_url=gw.base_url, api_key="k", max_retries=0) as client:
            assert (await ask(client, "Which river flows through Vienna?", max_tokens=3))[0] == "miss"
            assert (await ask(client, "Which river runs through Vienna?", max_tokens=3))[0] == expected
        labels = {"policy": "semantic_cache", "decision": "not_stored_truncated"}
        refused = gw.state.metrics.registry.get_sample_value("gateway_policy_decisions_total", labels)
        assert (refused or 0) == (0 if allowed else 2)  # both misses refused
