"""The budget policy: output limits filled in, clamped or refused, per class and route, counted."""
from __future__ import annotations

from typing import Any

import pytest

from gateway.config import ConfigError
from gateway.errors import LocalReply
from gateway.tokens.prompt import set_prompt_tokens
from policies.compression.budgets_layer import BudgetPolicy, make_budget
from tests.policies.compression.test_layer import Recorder, exchange, make_state, sample

CLASSES = [{"match": {"max_prompt_tokens": 50}, "max_tokens": 256},
           {"match": {"regex": "(?i)\\banaly[sz]e\\b"}, "max_tokens": 4000}]


async def policy_for(**budgets: Any) -> tuple[BudgetPolicy, Any]:
    st = make_state(models={}, budgets=budgets)
    policy = await make_budget(st, st.config)
    assert policy is not None
    return policy, st


def chat(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": text}], **extra}


def decided(st: Any, decision: str) -> float:
    return sample(st, "gateway_budget_decisions_total", route="*", decision=decision)


async def test_off_without_settings_and_checked_at_start() -> None:
    """No default, cap or class anywhere: no policy; a class without a condition fails the start."""
    st = make_state()
    assert await make_budget(st, st.config) is None
    with pytest.raises(ConfigError, match=r"budgets.classes\[0\].match"):  # caught by check-config already
        make_state(budgets={"classes": [{"match": {}, "max_tokens": 5}]})


async def test_default_is_filled_in_when_the_client_sends_none() -> None:
    """A request without max_tokens leaves with the default; one with a limit is left as sent."""
    policy, st = await policy_for(default_max_tokens=700)
    bare, inner = exchange(st, chat()), Recorder()
    await policy(bare, inner)
    sent = exchange(st, chat(max_tokens=50))
    await policy(sent, inner)
    assert inner.bodies[0]["max_tokens"] == 700 and inner.bodies[1]["max_tokens"] == 50
    assert not sent.modified
    assert decided(st, "filled_default") == 1 and decided(st, "pass") == 1
    assert sample(st, "gateway_policy_decisions_total", policy="budget", decision="filled_default") == 1


async def test_classes_by_prompt_size_and_by_regex() -> None:
    """Short prompts get the small class, analysis requests the large one, others the default."""
    policy, st = await policy_for(default_max_tokens=1000, classes=CLASSES)
    inner = Recorder()
    for text in ("hi", "Please analyse this quarter. " + "data " * 100, "Summarise this. " + "data " * 100):
        await policy(exchange(st, chat(text)), inner)
    assert [b["max_tokens"] for b in inner.bodies] == [256, 4000, 1000]
    assert decided(st, "filled_class") == 2 and decided(st, "filled_default") == 1


async def test_class_sees_the_compressed_prompt_size() -> None:
    """The prompt size comes from the shared count, which compression updates."""
    policy, st = await policy_for(classes=CLASSES[:1])
    ex = exchange(st, chat("data " * 500))
    set_prompt_tokens(ex, 40)  # what compression left
    inner = Recorder()
    await policy(ex, inner)
    assert inner.bodies[0]["max_tokens"] == 256


async def test_limits_above_the_cap_are_clamped() -> None:
    """Every output field over the cap is lowered to it; the reasoning-model spelling is kept."""
    policy, st = await policy_for(max_tokens_cap=1000)
    inner = Recorder()
    await policy(exchange(st, chat(max_completion_tokens=5000)), inner)
    await policy(exchange(st, chat(max_tokens=999)), inner)
    assert inner.bodies[0]["max_completion_tokens"] == 1000 and inner.bodies[1]["max_tokens"] == 999
    assert decided(st, "clamped") == 1


async def test_limits_above_the_cap_are_refused_with_on_exceed_reject() -> None:
    """With on_exceed: reject the request gets a 400 that names the cap; nothing is sent."""
    policy, st = await policy_for(max_tokens_cap=1000, on_exceed="reject")
    inner = Recorder()
    with pytest.raises(LocalReply) as err:
        await policy(exchange(st, chat(max_tokens=5000)), inner)
    assert err.value.status == 400 and err.value.code == "max_tokens_exceeded" and "1000" in err.value.message
    assert inner.bodies == [] and decided(st, "rejected") == 1


async def test_shadow_mode_counts_and_changes_nothing() -> None:
    """enforce: false records what would happen under shadow_ labels and sends the request as it is."""
    policy, st = await policy_for(
        default_max_tokens=700, max_tokens_cap=1000, on_exceed="reject", enforce=False
    )
    inner = Recorder()
    for body in (chat(), chat(max_tokens=5000)):
        ex = exchange(st, body)
        await policy(ex, inner)
        assert not ex.modified
    assert "max_tokens" not in inner.bodies[0] and inner.bodies[1]["max_tokens"] == 5000
    assert decided(st, "shadow_filled_default") == 1 and decided(st, "shadow_rejected") == 1


async def test_route_budgets_override_and_other_operations() -> None:
    """A route's block applies to its models; embeddings never get an output limit."""
    routes = [
        {
            "match": {"model": "mini-*"},
            "upstream": "mock",
            "name": "mini",
            "budgets": {"default_max_tokens": 64},
        },
        {"match": {"model": "*"}, "upstream": "mock"},
    ]
    st = make_state(models={}, routes=routes, budgets={"default_max_tokens": 900})
    policy = await make_budget(st, st.config)
    assert policy is not None
    inner = Recorder()
    await policy(exchange(st, {**chat(), "model": "mini-1"}), inner)
    await policy(exchange(st, chat()), inner)
    emb = exchange(st, {"model": "gpt-4o", "input": "x"}, operation="embeddings")
    await policy(emb, inner)
    assert [b.get("max_tokens") for b in inner.bodies] == [64, 900, None]
    assert not emb.modified
