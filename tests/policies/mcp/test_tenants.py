"""A key's own rpm and max_concurrency on its tool calls: refused at once, shadow mode, places given back."""
from __future__ import annotations

from gateway.auth import Identity
from gateway.config_model import AuthKeyConfig
from policies.mcp.tenants import TenantLimits
from policies.mcp.upstream import new_buckets
from policies.ratelimit.buckets import LimiterClock


def limits() -> TenantLimits:
    return TenantLimits(new_buckets(LimiterClock(lambda: 0.0)))


def who(**kw: object) -> Identity:
    key = AuthKeyConfig(key="", tenant="acme", **kw)  # type: ignore[arg-type]
    return Identity("acme", "acme", "hash-" + str(sorted(kw.items())), key)


def test_no_key_or_no_limits_is_unlimited() -> None:
    t = limits()
    assert t.admit(Identity("default", "anon", "")).decision == "unlimited"
    assert t.admit(who()).decision == "unlimited"


def test_rpm_refused_at_once_with_retry_after() -> None:
    t, me = limits(), who(rpm=2)
    assert [t.admit(me).decision for _ in range(2)] == ["allowed", "allowed"]
    over = t.admit(me)
    assert (over.decision, over.limit, over.retry_after_s) == ("rejected", "rpm", 30)


def test_concurrency_place_is_given_back() -> None:
    t, me = limits(), who(max_concurrency=1)
    first = t.admit(me)
    assert first.decision == "allowed" and t.admit(me).decision == "rejected"
    first.release()
    assert t.admit(me).decision == "allowed"


def test_shadow_key_is_counted_not_refused() -> None:
    t, me = limits(), who(rpm=1, enforce=False)
    assert t.admit(me).decision == "allowed"
    assert t.admit(me).decision == "shadow_rejected"
