"""The onion's fixed order, outermost first, and how each layer is built.

Users configure policies; they do not reorder them. Each entry is a factory
``async (state, runtime_config) -> Policy | None`` (None: the policy is off for
this config). Adding a policy is one line here.

Order (outermost first): metrics -> exact_cache -> semantic_cache -> coalesce
-> rate_limit (client) -> compression/budget -> retry -> circuit_breaker
-> rate_limit (upstream) -> upstream.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway.appstate import AppState
from gateway.chain import Policy
from gateway.config_model import Config

PolicyFactory = Callable[[AppState, Config], Awaitable[Policy | None]]

POLICY_FACTORIES: list[tuple[str, PolicyFactory]] = [
]


async def build_policies(state: AppState, config: Config) -> list[Policy]:
    built: list[Policy] = []
    for _name, factory in POLICY_FACTORIES:
        policy = await factory(state, config)
        if policy is not None:
            built.append(policy)
    return built
