"""Each feature's start-up config checks, run once by the loader (``gateway check-config`` and ``serve``).

A check is ``problems(config) -> list[str]`` of ``dotted.path: what is wrong`` lines, in the
feature's own ``validate`` module. A new feature with value rules adds one line here.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from gateway.config_model import Config
from policies.cache import validate as cache
from policies.compression import budgets_validate as budgets
from policies.compression import validate as compression
from policies.mcp import validate as mcp
from policies.ratelimit import validate as ratelimit
from policies.resilience import validate as resilience
from policies.tools import validate as tools

ConfigCheck = Callable[[Config], list[str]]
FEATURE_CHECKS: Sequence[ConfigCheck] = (
    ratelimit.problems,
    resilience.problems,
    cache.problems,
    compression.problems,
    budgets.problems,
    tools.problems,
    mcp.problems,
)
