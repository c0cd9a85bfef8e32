"""The compression policy: when it acts, what it sends on, what it answers, what it counts."""
from __future__ import annotations

from typing import Any

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.appstate import AppState, Runtime
from gateway.auth import Authenticator
from gateway.body import OneChunk
from gateway.config import ConfigError, parse_config
from gateway.errors import LocalReply
from gateway.exchange import Exchange, UpstreamResponse
from gateway.routing import Router
from gateway.telemetry.metrics import Metrics
from gateway.tokens.prompt import prompt_tokens
from gateway.tokens.tokenizer import Tokenizer
from policies.compression import layer as compression_module
from policies.compression.layer import CompressionPolicy, make_compression
from policies.compression.turns import tool_call_problems
from tests.policies.compression.helpers import agent, user
from tests.support.exchange import build_exchange, replace_route
from tests.support.servers import gateway_config

TOKENIZER = Tokenizer()
SMALL = {"m-small": {"context_window": 16000}}  # budget (16000 - output) * 0.8
BIG = 30  # agent steps: ~45k tokens


def make_state(**overrides: Any) -> AppState:
    overrides.setdefault("models", SMALL)
    cfg = parse_config(gateway_config("http://127.0.0.1:9/v1", **overrides), {})
    st = AppState(runtime=Runtime(config=cfg, router=Router(cfg.routes), auth=Authenticator(cfg.auth),
                                  chain=None))  # type: ignore[arg-type]
    st.metrics = Metrics()
    st.tokenizer = TOKENIZER
    return st


def exchange(st: AppState, body: dict[str, Any], headers: dict[str, str] | None = None,
             operation: str = "chat") -> Exchange:
    route = st.runtime.router.resolve(body["model"])
    ex = build_exchange(request_id="r", method="POST", path="/v1/chat/completions", operation=operation,
                  headers=CIMultiDictProxy(CIMultiDict(headers or {})), raw_body=orjson.dumps(body),
                        body=body,
                  received_at=0.0, deadline=1e12, model=body["model"], upstream="mock",
                  upstream_model=body["model"], route_name=route.label if route else "*")
    ex = replace_route(ex, route)
    return ex


class Recorder:
    """The inner layer: keeps the body it was given and answers 200."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, ex: Exchange) -> UpstreamResponse:
        self.bodies.append(orjson.loads(ex.body_bytes()))
        return UpstreamResponse(200, {"content-type": "application/json"}, OneChunk(b"{}"))


async def policy_for(**overrides: Any) -> tuple[CompressionPolicy, AppState]:
    st = make_state(**overrides)
    policy = await make_compression(st, st.config)
    assert policy is not None
    return policy, st


def sample(st: AppState, name: str, **labels: str) -> float:
    return st.metrics.registry.get_sample_value(name, labels) or 0.0


def body(messages: list[dict[str, Any]], model: str = "m-small", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": messages, **extra}


async def test_off_when_no_request_can_have_a_budget() -> None:
    """Without context windows in models: and without max_prompt_tokens the policy is not built."""
    st = make_state(models={})
    assert await make_compression(st, st.config) is None
    st = make_state(compression={"enabled": False})
    assert await make_compression(st, st.config) is None


async def test_bad_config_fails_at_start() -> None:
    """A target outside (0, 1] is refused when the config is loaded (check-config), before any chain is
    built."""
    with pytest.raises(ConfigError, match="compression.target"):
        make_state(compression={"target": 0})


async def test_request_that_fits_is_forwarded_untouched() -> None:
    """A small request keeps its original bytes and reports zero tokens saved."""
    policy, st = await policy_for()
    ex = exchange(st, body([user("hi")]))
    await policy(ex, Recorder())
    assert not ex.modified and ex.response_headers["x-gateway-tokens-saved"] == "0"
    assert sample(st, "gateway_policy_decisions_total", policy="compression", decision="fits") == 1


async def test_a_count_already_taken_decides_without_the_byte_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt counted before compression (a token rate limit) is judged by that count: the byte bound,
    which is never below it, is not walked again."""
    import policies.compression.layer as layer

    def no_bound(ex: Exchange) -> int:
        raise AssertionError("the byte bound was walked")

    policy, st = await policy_for()
    ex = exchange(st, body([user("hi")]))
    prompt_tokens(st, ex)
    monkeypatch.setattr(layer, "prompt_bound", no_bound)
    await policy(ex, Recorder())
    assert not ex.modified and ex.response_headers["x-gateway-tokens-saved"] == "0"
    assert sample(st, "gateway_policy_decisions_total", policy="compression", decision="fits") == 1


async def test_oversized_conversation_is_compressed_and_counted() -> None:
    """The inner layer gets a valid conversation within budget; size, header and metrics agree."""
    policy, st = await policy_for(budgets={"default_max_tokens": 500})
    ex = exchange(st, body(agent(BIG, lines=60) + [user("and now?")]))
    before = prompt_tokens(st, ex)
    inner = Recorder()
    await policy(ex, inner)
    sent = inner.bodies[0]["messages"]
    after = TOKENIZER.count_request("chat", inner.bodies[0])
    assert ex.modified and tool_call_problems(sent) == []
    assert after <= int((16000 - 500) * 0.8) and prompt_tokens(st, ex) == after
    assert ex.response_headers["x-gateway-tokens-saved"] == str(before - after)
    saved = sum(sample(st, "gateway_compression_tokens_saved_total", route="*", step=s)
                for s in ("normalise", "truncate", "dedupe", "prune"))
    assert saved == before - after
    assert sample(st, "gateway_compression_ratio_count") == 1
    assert sample(st, "gateway_policy_decisions_total", policy="compression", decision="compressed") == 1


async def test_unfittable_request_gets_context_length_exceeded() -> None:
    """When even the task alone is over budget, the answer is a 400 with the counts; nothing is sent."""
    policy, st = await policy_for()
    ex = exchange(st, body([user("word " * 20000)]))
    inner = Recorder()
    with pytest.raises(LocalReply) as err:
        await policy(ex, inner)
    assert err.value.status == 400 and err.value.code == "context_length_exceeded"
    assert (
        "20008 prompt tokens" in err.value.message and "16000 tokens of context window" in err.value.message
    )
    assert inner.bodies == []
    assert sample(st, "gateway_compression_rejected_total", route="*") == 1


async def test_client_can_opt_out() -> None:
    """x-gateway-compression: off sends the request as it is (the provider will judge it)."""
    policy, st = await policy_for()
    ex = exchange(st, body(agent(BIG, lines=60)), headers={"x-gateway-compression": "OFF"})
    await policy(ex, Recorder())
    assert not ex.modified and "x-gateway-tokens-saved" not in ex.response_headers
    assert sample(st, "gateway_policy_decisions_total", policy="compression", decision="opted_out") == 1


async def test_shadow_mode_counts_but_sends_as_is() -> None:
    """With enforce: false, compressions and rejections are counted and nothing changes."""
    policy, st = await policy_for(compression={"enforce": False})
    big = exchange(st, body(agent(BIG, lines=60)))
    await policy(big, Recorder())
    huge = exchange(st, body([user("word " * 20000)]))
    await policy(huge, Recorder())
    assert not big.modified and not huge.modified
    assert sample(st, "gateway_policy_decisions_total", policy="compression",
                  decision="shadow_compressed") == 1
    assert sample(st, "gateway_policy_decisions_total", policy="compression", decision="shadow_rejected") == 1
    assert sample(st, "gateway_compression_rejected_total", route="*") == 0


async def test_route_block_and_absolute_budget() -> None:
    """A route's max_prompt_tokens applies to models without a known window; others are left alone."""
    routes = [{"match": {"model": "local-*"}, "upstream": "mock", "name": "local",
               "compression": {"max_prompt_tokens": 6000, "keep_last_turns": 2}},
              {"match": {"model": "*"}, "upstream": "mock"}]
    policy, st = await policy_for(models={}, routes=routes)
    local = exchange(st, body(agent(BIG, lines=60), model="local-llama"))
    await policy(local, Recorder())
    other = exchange(st, body(agent(BIG, lines=60), model="other"))
    await policy(other, Recorder())
    assert local.modified and prompt_tokens(st, local) <= 6000
    assert not other.modified
    assert sample(st, "gateway_policy_decisions_total", policy="compression", decision="no_budget") == 1
    assert sample(st, "gateway_compression_tokens_saved_total", route="local", step="prune") > 0


async def test_requested_output_shrinks_the_prompt_budget() -> None:
    """A request asking for a long answer leaves less room for its prompt."""
    policy, st = await policy_for()
    ex = exchange(st, body(agent(BIG, lines=60), max_tokens=2000))
    await policy(ex, Recorder())
    assert prompt_tokens(st, ex) <= int((16000 - 2000) * 0.8)


async def test_tool_definitions_count_toward_the_budget() -> None:
    """The tools array is part of the prompt: the compressed total includes it."""
    policy, st = await policy_for()
    tools = [{"type": "function", "function": {"name": f"tool_{i}", "description": "does things " * 30,
                                               "parameters": {"type": "object"}}} for i in range(5)]
    ex = exchange(st, body(agent(BIG, lines=60), tools=tools))
    inner = Recorder()
    await policy(ex, inner)
    assert prompt_tokens(st, ex) == TOKENIZER.count_request("chat", inner.bodies[0]) <= int(16000 * 0.8)


async def test_other_operations_pass_through() -> None:
    """Embeddings and other non-chat requests are never touched."""
    policy, st = await policy_for()
    ex = exchange(st, {"model": "m-small", "input": "word " * 20000}, operation="embeddings")
    await policy(ex, Recorder())
    assert not ex.modified


async def test_a_compressor_failure_sends_the_request_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in compression costs the saving, never the request."""
    policy, st = await policy_for()

    def boom(*args: Any) -> None:
        raise ValueError("bug")

    monkeypatch.setattr(compression_module, "compress", boom)
    ex = exchange(st, body(agent(BIG, lines=60)))
    inner = Recorder()
    await policy(ex, inner)
    assert not ex.modified and len(inner.bodies) == 1
    assert sample(st, "gateway_policy_decisions_total", policy="compression", decision="error") == 1


async def test_oversized_request_goes_whole_to_a_context_fallback_that_fits() -> None:
    """With ``context_fallbacks``, a prompt over budget is sent uncompressed to the first larger window
    it fits (none too small is chosen); the target and the body's model follow."""
    policy, st = await policy_for(
        budgets={"default_max_tokens": 500},
        models={**SMALL, "m-mid": {"context_window": 20000}, "m-big": {"context_window": 200000}},
        routes=[{"match": {"model": "*"}, "upstream": "mock",
                 "context_fallbacks": [{"upstream": "mock", "model": "m-mid"},
                                       {"upstream": "mock", "model": "m-big"}]}])
    ex = exchange(st, body(agent(BIG, lines=60) + [user("and now?")]))
    inner = Recorder()
    await policy(ex, inner)
    assert ex.target.model == "m-big" and inner.bodies[0]["model"] == "m-big"
    assert len(inner.bodies[0]["messages"]) == 2 + 2 * BIG + 1  # whole: nothing compressed away
    decisions = {"policy": "compression", "decision": "context_fallback"}
    assert sample(st, "gateway_policy_decisions_total", **decisions) == 1
