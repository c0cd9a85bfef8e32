"""Issue 16, finding 3: only complete answers are cached, under a key that names everything that shaped them.

Each attack is paired with its positive control: the same request with a complete answer (or the same
query string and headers) is a hit, so "miss" cannot pass vacuously.
"""
from __future__ import annotations

import secrets
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.mock import MockServer
from tests.hardening.scripted import Scripted, chat_answer

CHAT = "/v1/chat/completions"


async def ask(url: str, question: str, headers: dict[str, str] | None = None, query: str = "",
              model: str = "gpt-4o") -> aiohttp.ClientResponse:
    body = {"model": model, "temperature": 0, "messages": [{"role": "user", "content": question}]}
    async with aiohttp.ClientSession() as s:
        async with s.post(url + CHAT + (f"?{query}" if query else ""), data=orjson.dumps(body),
                          headers={"content-type": "application/json", **(headers or {})}) as resp:
            await resp.read()
            return resp


def decisions(gw: Any, policy: str, decision: str) -> float:
    value = gw.state.metrics.registry.get_sample_value("gateway_policy_decisions_total",
                                                        {"policy": policy, "decision": decision})
    return value or 0.0


INCOMPLETE = {
    "null": chat_answer("half", None),
    "error": chat_answer("half", "error"),
    "empty_choice": {**chat_answer("x"), "choices": [{}]},
    "content_filter": chat_answer("", "content_filter"),
    "second_choice_unfinished": {**chat_answer("x"), "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "a"}, "finish_reason": "stop"},
        {"index": 1, "message": {"role": "assistant", "content": "b"}, "finish_reason": None}]},
}


@pytest.mark.parametrize("name", sorted(INCOMPLETE))
async def test_incomplete_non_stream_answers_are_not_cached(make_gateway: Any, scripted: Scripted,
                                                            name: str) -> None:
    gw = await make_gateway(upstreams={"mock": {"base_url": scripted.url, "api_key": "sk-up"}})
    question = f"incomplete {name} {secrets.token_hex(4)}"
    scripted.script.append((200, INCOMPLETE[name], {}))
    assert (await ask(gw.url, question)).headers["x-gateway-cache"] == "miss"
    assert (await ask(gw.url, question)).headers["x-gateway-cache"] == "miss"  # not replayed
    assert decisions(gw, "exact_cache", "not_stored_incomplete") == 1
    assert (await ask(gw.url, question)).headers["x-gateway-cache"] == "hit"  # the complete one was stored


async def test_fallback_answer_is_not_stored_under_the_primary_key(make_gateway: Any, scripted: Scripted,
                                                                   mock_upstream: MockServer) -> None:
    """Primary fails, the fallback answers: not stored; once the primary answers again it is asked."""
    gw = await make_gateway(
        upstreams={"primary": {"base_url": scripted.url, "api_key": "sk-p", "retry": {"max_attempts": 1}},
                   "backup": {"base_url": mock_upstream.url, "api_key": "sk-b"}},
        routes=[{"match": {"model": "gpt-4o"}, "upstream": "primary",
                 "fallbacks": [{"upstream": "backup", "model": "gpt-4o-mini"}]}])
    question = f"fallback {secrets.token_hex(4)}"
    scripted.script.append((503, {"error": {"message": "down", "type": "server_error"}}, {}))
    first = await ask(gw.url, question)
    assert first.headers["x-gateway-upstream"] == "backup" and first.headers["x-gateway-cache"] == "miss"
    assert decisions(gw, "exact_cache", "not_stored_fallback") == 1
    second = await ask(gw.url, question)  # the primary recovered: it answers, not the fallback's entry
    assert second.headers["x-gateway-cache"] == "miss" and second.headers["x-gateway-upstream"] == "primary"
    assert (await ask(gw.url, question)).headers["x-gateway-cache"] == "hit"  # the primary's own answer


async def test_query_string_and_answer_headers_are_part_of_the_key(make_gateway: Any,
                                                                   mock_upstream: MockServer) -> None:
    gw = await make_gateway(cache={"key_headers": ["X-Custom-Variant"]})
    question = f"versions {secrets.token_hex(4)}"
    assert (await ask(gw.url, question, query="api-version=2024-01-01")).headers["x-gateway-cache"] == "miss"
    assert (await ask(gw.url, question, query="api-version=2024-01-01")).headers["x-gateway-cache"] == "hit"
    assert (await ask(gw.url, question, query="api-version=2025-04-01")).headers["x-gateway-cache"] == "miss"
    assert (await ask(gw.url, question, {"OpenAI-Beta": "assistants=v2"})).headers[
        "x-gateway-cache"
    ] == "miss"
    assert (await ask(gw.url, question, {"OpenAI-Beta": "assistants=v2"})).headers["x-gateway-cache"] == "hit"
    assert (await ask(gw.url, question, {"x-custom-variant": "b"})).headers["x-gateway-cache"] == "miss"
    assert (await ask(gw.url, question, {"x-unrelated": "1"})).headers[
        "x-gateway-cache"
    ] == "miss"  # plain one
    assert (await ask(gw.url, question, {"x-unrelated": "2"})).headers["x-gateway-cache"] == "hit"  # ignored


TOOL_CASES = {
    "no_store": {"cache-control": "no-store"},
    "private": {"Cache-Control": "private, max-age=60"},
    "set_cookie": {"set-cookie": "sid=abc; HttpOnly"},
}


@pytest.mark.parametrize("name", sorted(TOOL_CASES))
async def test_tool_answers_for_one_caller_are_not_cached(
    make_gateway: Any, scripted: Scripted, name: str
) -> None:
    gw = await make_gateway(tools={"search": {"base_url": scripted.url, "read_only": True}})
    scripted.script.append((200, {"secret": "for caller one"}, TOOL_CASES[name]))
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/tools/search/q?x=1") as first:
            assert first.headers["x-gateway-cache"] == "miss"
        async with s.get(gw.url + "/tools/search/q?x=1") as second:
            assert second.headers["x-gateway-cache"] == "miss" and b"caller one" not in await second.read()
        async with s.get(gw.url + "/tools/search/q?x=1") as third:  # positive control: the default answer
            assert third.headers["x-gateway-cache"] == "hit"
    assert len(scripted.seen) == 2
