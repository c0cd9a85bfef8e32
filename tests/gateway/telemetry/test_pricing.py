"""Cost from the pricing table."""
from __future__ import annotations

import pytest

from gateway.exchange import Usage
from gateway.telemetry.pricing import cost_usd, price_for
from policies.usage.config import PriceConfig


def test_cost_splits_cached_prompt_tokens() -> None:
    """Uncached prompt at input price, cached at cached_input, completion at output price, per 1M."""
    price = PriceConfig(input=2.5, output=10.0, cached_input=1.25)
    usage = Usage(prompt=1_000_000, completion=500_000, cached_prompt=400_000)
    assert cost_usd(price, usage) == pytest.approx(0.6 * 2.5 + 0.4 * 1.25 + 0.5 * 10.0)


def test_cached_defaults_to_input_price() -> None:
    """Without cached_input, cached tokens cost the input price."""
    assert cost_usd(
        PriceConfig(input=1.0, output=0.0), Usage(prompt=100, cached_prompt=100)
    ) == pytest.approx(1e-4)


def test_price_lookup_order() -> None:
    """The served model's price wins over the alias the client used; unknown models have no price."""
    table = {"gpt-4o": PriceConfig(input=1), "fast": PriceConfig(input=2)}
    assert price_for(table, "gpt-4o", "fast") is table["gpt-4o"]
    assert price_for(table, "", "fast") is table["fast"]
    assert price_for(table, "x", "y") is None
