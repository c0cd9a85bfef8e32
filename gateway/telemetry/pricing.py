"""What a request cost, from the ``pricing:`` table (USD per 1M tokens).

Providers bill the model that served the request, so the price is looked up
by the model sent upstream first and by the name the client asked for second
(an alias such as ``fast`` may be priced directly). Cached prompt tokens are a
subset of prompt tokens and cost ``cached_input`` when it is set, the input
price otherwise. Reasoning tokens are already part of completion tokens.
"""
from __future__ import annotations

from collections.abc import Mapping

from gateway.exchange import Usage
from policies.usage.config import PriceConfig

PER_TOKEN = 1e-6


def price_for(pricing: Mapping[str, PriceConfig], *models: str) -> PriceConfig | None:
    """The first configured price among ``models`` (empty names skipped), or None."""
    for model in models:
        if model:
            price = pricing.get(model)
            if price is not None:
                return price
    return None


def cost_usd(price: PriceConfig, usage: Usage) -> float:
    cached = min(usage.cached_prompt, usage.prompt)
    cached_price = price.cached_input if price.cached_input is not None else price.input
    return PER_TOKEN * ((usage.prompt - cached) * price.input + cached * cached_price
                       + usage.completion * price.output)
