"""Start-up checks of the ``retry`` blocks (per upstream, per route): ``dotted.path: what is wrong``."""
from __future__ import annotations

from collections.abc import Mapping

from gateway.config_model import Config, RouteConfig
from policies.resilience.config import CircuitBreakerConfig, HedgeConfig


def problems(cfg: Config) -> list[str]:
    found: list[str] = []
    for name, up in cfg.upstreams.items():
        found += _check_retry_on(f"upstreams.{name}.retry.retry_on", up.retry.retry_on)
        found += _check_breaker(f"upstreams.{name}.circuit_breaker", up.circuit_breaker)
    for i, route in enumerate(cfg.routes):
        if route.retry is not None:
            found += _check_retry_on(f"routes[{i}].retry.retry_on", route.retry.retry_on)
        ups = cfg.upstreams
        if route.continue_on_break and not any(
                ups[fb.upstream].continuation != "none" for fb in route.fallbacks if fb.upstream in ups):
            found.append(f"routes[{i}].continue_on_break: no fallback's upstream has continuation set "
                         "(prefill or continue_final_message)")
        found += [f"routes[{i}].targets[{j}].{problem}" for j, d in enumerate(route.targets)
                  for problem in _check_deployment(d.upstream, d.weight, ups)]
        if route.hedge is not None and route.hedge.enabled:
            found += _check_hedge(f"routes[{i}].hedge", route.hedge, _targets_after_primary(route))
        found += [f"routes[{i}].context_fallbacks[{j}].upstream: unknown upstream {fb.upstream!r}"
                  for j, fb in enumerate(route.context_fallbacks) if fb.upstream not in cfg.upstreams]
    return found


_RETRY_NAMES = frozenset(
    {
        "connect_error",
        "connect_timeout",
        "reset_before_response",
        "timeout_before_first_byte",
        "idle_timeout",
        "total_timeout",
        "error_event",
        "circuit_open",
    }
)


# 4xx answers are the client's problem and are passed through: only these are ever retried.
RETRYABLE_4XX = frozenset({"408", "429"})


def _check_retry_on(path: str, names: list[str]) -> list[str]:
    found: list[str] = []
    for name in names:
        if name in _RETRY_NAMES:
            continue
        if not (name.isdigit() and 400 <= int(name) <= 599):
            found.append(f"{path}: unknown condition {name!r} (a failure kind, error_event, or an HTTP "
                         "status)")
        elif name.startswith("4") and name not in RETRYABLE_4XX:
            found.append(f"{path}: {name} is a client error the gateway never retries (only 408 and 429 are; "
                         "a context_length_exceeded 400 goes to the route's context_fallbacks)")
    return found


def _check_breaker(path: str, cb: CircuitBreakerConfig) -> list[str]:
    found: list[str] = []
    if cb.open_s <= 0:
        found.append(f"{path}.open_s: must be > 0")
    if cb.half_open_probes < 1:
        found.append(f"{path}.half_open_probes: must be >= 1")
    return found


def _check_hedge(path: str, hedge: HedgeConfig, others: int) -> list[str]:
    found: list[str] = []
    if hedge.after_s is None and hedge.after is None and hedge.max_extra is None:
        found.append(f"{path}: needs after_s (seconds), after (p50..p99) or max_extra, or enabled: false")
    if hedge.after is not None and hedge.max_extra is not None:
        found.append(f"{path}: after and max_extra both choose the percentile: keep one")
    if hedge.max_extra is not None and not 0 < hedge.max_extra <= 0.5:
        found.append(f"{path}.max_extra: must be a share of requests in (0, 0.5], got {hedge.max_extra!r}")
    if hedge.after_s is not None and hedge.after_s <= 0:
        found.append(f"{path}.after_s: must be > 0")
    if hedge.after is not None and quantile_of(hedge.after) is None:
        found.append(f"{path}.after: must be a percentile p50..p99, got {hedge.after!r}")
    if hedge.min_samples < 1 or hedge.window < hedge.min_samples:
        found.append(f"{path}.window: must be >= min_samples >= 1")
    if others == 0:
        found.append(f"{path}: the route has no fallbacks or other targets to hedge to")
    return found


def _targets_after_primary(route: RouteConfig) -> int:
    """How many targets a request may move on (or hedge) to: other deployments, then fallbacks."""
    listed = len(route.targets) + (0 if any(d.upstream == route.upstream for d in route.targets) else 1)
    return (listed - 1 if route.targets else 0) + len(route.fallbacks)


def quantile_of(after: str) -> float | None:
    """``p95`` -> 0.95; None when it is not p50..p99."""
    digits = after[1:] if after.startswith("p") else ""
    return int(digits) / 100 if digits.isdigit() and len(digits) == 2 and 50 <= int(digits) <= 99 else None


def _check_deployment(upstream: str, weight: float, upstreams: Mapping[str, object]) -> list[str]:
    found = [] if upstream in upstreams else [f"upstream: unknown upstream {upstream!r}"]
    if weight <= 0:
        found.append("weight: must be > 0")
    return found
