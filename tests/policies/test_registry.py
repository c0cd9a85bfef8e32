"""The onion's order is fixed in policies/registry.py; changing it must be a deliberate, reviewed edit."""
from __future__ import annotations

import inspect

from policies.registry import LAYERS, ROUTE_HANDLERS

# Outermost first. Why each sits where it does is commented in policies/registry.py.
EXPECTED_ORDER = [
    "usage",
    "tracing",
    "exact_cache",
    "embeddings_cache",
    "semantic_cache",
    "coalesce",
    "rate_limit_client",
    "compression",
    "budget",
    "retry",
    "circuit_breaker",
    "rate_limit_upstream",
    "tracing_upstream",
]


def test_the_onion_order_is_pinned() -> None:
    assert [name for name, _ in LAYERS] == EXPECTED_ORDER


def test_route_handlers_are_not_layers() -> None:
    """The /tools/ handler is built after the layers (it reuses their components), never inside the onion."""
    assert [name for name, _ in ROUTE_HANDLERS] == ["tools", "mcp"]
    assert not {name for name, _ in ROUTE_HANDLERS} & set(EXPECTED_ORDER)


def test_every_entry_is_an_async_factory_with_a_unique_name() -> None:
    names = [name for name, _ in LAYERS]
    assert len(names) == len(set(names))
    for name, factory in LAYERS:
        assert inspect.iscoroutinefunction(factory), name
