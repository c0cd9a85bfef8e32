"""Cache keys: every answer-changing field changes the key; key order,
whitespace and delivery fields do not."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.cache.keys import answer_fields, is_deterministic, make_key, namespace_token

KEY_FIELDS = [
    "messages",
    "tools",
    "tool_choice",
    "response_format",
    "temperature",
    "top_p",
    "seed",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "n",
    "logprobs",
    "modalities",
    "reasoning_effort",
]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(0, 2, allow_nan=False),
                    st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
bodies = st.fixed_dictionaries({"model": st.just("gpt-4o"), "messages": st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": st.text(max_size=20)}),
    min_size=1, max_size=3)}, optional={f: values for f in KEY_FIELDS[1:]})


def key_of(body: dict[str, Any], **over: str) -> str:
    parts = {
        "namespace": "t:a",
        "upstream": "u",
        "model": "m",
        "operation": "chat",
        "config_version": "v1",
        **over,
    }
    return make_key(fields=answer_fields(body), **parts).digest  # type: ignore[arg-type]


def reorder(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: reorder(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reorder(v) for v in value]
    return value


@settings(max_examples=80, deadline=None)
@given(bodies, st.sampled_from(KEY_FIELDS), values)
def test_any_change_to_a_key_field_changes_the_key(body: dict[str, Any], field: str, new: Any) -> None:
    """Changing (or adding) any answer-changing field gives another key."""
    changed = {**body, field: new}
    if orjson.dumps(changed, option=orjson.OPT_SORT_KEYS) == orjson.dumps(body, option=orjson.OPT_SORT_KEYS):
        return
    assert key_of(changed) != key_of(body)


@settings(max_examples=80, deadline=None)
@given(bodies)
def test_key_order_and_whitespace_do_not_change_the_key(body: dict[str, Any]) -> None:
    """The same request with reordered keys and pretty-printed JSON has the same key."""
    pretty = json.loads(json.dumps(reorder(body), indent=3, separators=(" ,  ", " :  ")))
    assert key_of(pretty) == key_of(body)


@settings(max_examples=50, deadline=None)
@given(bodies, st.booleans(), st.text(max_size=10))
def test_delivery_and_identity_fields_do_not_change_the_key(
    body: dict[str, Any], stream: bool, user: str
) -> None:
    """stream, stream_options, user and request ids are not part of the key."""
    other = {**body, "stream": stream, "stream_options": {"include_usage": True}, "user": user,
             "metadata": {"request_id": user}}
    assert key_of(other) == key_of(body)


@settings(max_examples=50, deadline=None)
@given(bodies, st.sampled_from(["namespace", "upstream", "model", "operation", "config_version"]))
def test_routing_tenant_and_config_change_the_key(body: dict[str, Any], part: str) -> None:
    """Tenant namespace, upstream, model after routing and config version are all in the key."""
    assert key_of(body, **{part: "other"}) != key_of(body)


def test_namespace_is_a_hard_prefix() -> None:
    """The namespace travels with the key (stores index by it), never only inside the hash."""
    a = make_key(namespace="t:a", upstream="u", model="m", operation="chat", config_version="v", fields={})
    b = make_key(namespace="t:b", upstream="u", model="m", operation="chat", config_version="v", fields={})
    assert a.namespace == "t:a" and str(a).startswith("t:a:") and a != b


def test_namespace_token_hides_key_hashes() -> None:
    """Tenant names stay readable in Redis keys; anything else is re-hashed."""
    assert namespace_token("t:team-1") == "t:team-1"
    assert namespace_token("k:abcdef").startswith("h:")


def test_is_deterministic() -> None:
    """temperature 0 or an integer seed make a request deterministic; nothing else does."""
    assert is_deterministic({"temperature": 0})
    assert is_deterministic({"seed": 1, "temperature": 1})
    assert not is_deterministic({})
    assert not is_deterministic({"temperature": 0.2, "seed": True})
