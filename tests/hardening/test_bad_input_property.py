"""Generated bad bodies (Hypothesis): whatever the shape, a clean OpenAI-style
4xx, no upstream call, no ERROR log.

Every generated body is bad by construction: random bytes, JSON that is not an object, objects whose
model no route serves (so whatever validation lets through is refused by routing), or a well-formed
request for a routed model with one field broken on purpose. The default run sends 1,000 of them; the
``slow`` variant (``make chaos``) sends 10,000. One gateway serves the whole run.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hardening.bad_cases import KEY
from tests.hardening.conftest import MODULE_LOOP, Env

PATHS = ("/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/responses")
FIELDS = (
    "model",
    "messages",
    "input",
    "prompt",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "n",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "stop",
    "tools",
    "tool_choice",
    "user",
    "seed",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "role",
    "content",
    "instructions",
    "dimensions",
    "encoding_format",
    "response_format",
    "logit_bias",
    "metadata",
    "previous_response_id",
)


def dumps(value: Any) -> bytes:
    """The stdlib encoder: unlike orjson it writes integers beyond 64 bits (which a client may send)."""
    return json.dumps(value, separators=(",", ":")).encode()


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(FIELDS),
)
json_value = st.recursive(
    json_leaf,
    lambda kids: st.one_of(
        st.lists(kids, max_size=5),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=10)), kids, max_size=6),
    ),
    max_leaves=25,
)
unroutable_model = st.one_of(
    st.none(),
    json_leaf.filter(lambda m: not (isinstance(m, str) and m.startswith(("gpt-", "text-embedding-")))),
)
# One field broken on purpose, for a request that would otherwise reach the routed provider.
BREAKERS: list[tuple[str, Any]] = [
    # Types only: out-of-range values are forwarded for the provider to judge (issue 17).
    ("temperature", st.one_of(st.text(), st.booleans(), st.lists(st.floats(), max_size=2))),
    ("top_p", st.lists(st.integers(), max_size=2)),
    ("n", st.one_of(st.text(min_size=1), st.floats(0.5, 1e6), st.booleans())),
    ("max_tokens", st.one_of(st.floats(0.5, 1e6), st.text())),
    ("stream", st.one_of(st.integers(), st.text(), st.lists(st.booleans(), max_size=2))),
    ("stop", st.one_of(st.integers(), st.lists(st.integers(), min_size=1, max_size=3))),
    ("tools", st.one_of(st.text(), st.integers(), st.lists(st.one_of(st.none(), st.integers()), min_size=1))),
    ("api_base", json_leaf),
    ("base_url", json_leaf),
    ("api_key", json_leaf),
    (
        "model",
        st.one_of(st.text(max_size=3).map(lambda t: "gpt-4o\n" + t), st.integers(), st.lists(st.text())),
    ),
]


@st.composite
def routed_but_broken(draw: st.DrawFn) -> bytes:
    body: dict[str, Any] = {
        "model": "gpt-4o",
        "messages": [
            {"role": draw(st.sampled_from(["user", "system"])), "content": draw(st.text(max_size=40))}
        ],
    }
    body.update(draw(st.dictionaries(st.sampled_from(FIELDS[5:]), json_value, max_size=3)))
    name, strategy = draw(st.sampled_from(BREAKERS))
    body[name] = draw(strategy)
    return dumps(body)


@st.composite
def unroutable_object(draw: st.DrawFn) -> bytes:
    body = draw(st.dictionaries(st.sampled_from(FIELDS), json_value, max_size=8))
    model = draw(unroutable_model)
    if model is None:
        body.pop("model", None)
    else:
        body["model"] = model
    return dumps(body)


@st.composite
def broken_messages(draw: st.DrawFn) -> bytes:
    """A chat request whose ``messages`` is broken (only the chat endpoint validates it)."""
    bad_message = st.one_of(
        st.none(),
        st.integers(),
        st.text(),
        st.dictionaries(st.sampled_from(["role", "content", "name"]), json_value, max_size=3).filter(
            _bad_message
        ),
    )
    messages = draw(
        st.one_of(st.just([]), st.text(), st.integers(), st.lists(bad_message, min_size=1, max_size=3))
    )
    return dumps({"model": "gpt-4o", "messages": messages})


def _bad_message(msg: dict[str, Any]) -> bool:
    role, content = msg.get("role"), msg.get("content")
    if not isinstance(role, str) or role not in (
        "system",
        "developer",
        "user",
        "assistant",
        "tool",
        "function",
    ):
        return True
    return (content is not None and not isinstance(content, (str, list))) or (
        content is None and role in ("user", "system", "developer")
    )


bad_requests = st.one_of(
    st.tuples(st.sampled_from(PATHS), st.binary(max_size=200)),
    st.tuples(st.sampled_from(PATHS), json_value.filter(lambda v: not isinstance(v, dict)).map(dumps)),
    st.tuples(st.sampled_from(PATHS), unroutable_object()),
    st.tuples(st.sampled_from(PATHS), routed_but_broken()),
    st.tuples(st.sampled_from(PATHS), routed_but_broken().map(lambda raw: raw[:-1])),  # and truncated
    st.tuples(st.just(PATHS[0]), broken_messages()),
)


async def check(env: Env, path: str, body: bytes) -> None:
    before, logged = env.upstream_calls(), len(env.errors.records)
    async with env.session.post(
        env.gateway.url + path,
        data=body,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    ) as r:
        payload = await r.read()
        status = r.status
    assert 400 <= status < 500, (status, body[:200], payload[:200])
    error = orjson.loads(payload)["error"]
    assert set(error) >= {"message", "type", "code", "param"} and error["type"] == "invalid_request_error"
    assert env.upstream_calls() == before, body[:200]
    assert env.errors.records[logged:] == []


def property_test(examples: int):  # type: ignore[no-untyped-def]
    @MODULE_LOOP
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
        ],
    )
    @given(request=bad_requests)
    async def test(env: Env, request: tuple[str, bytes]) -> None:
        await check(env, *request)

    return test


test_1000_generated_bad_bodies_get_clean_4xx = property_test(1_000)
test_1000_generated_bad_bodies_get_clean_4xx.__doc__ = (
    "1,000 generated bad bodies: each a clean 4xx, none upstream."
)
test_10000_generated_bad_bodies_get_clean_4xx = pytest.mark.slow(property_test(10_000))
test_10000_generated_bad_bodies_get_clean_4xx.__doc__ = "10,000 generated bad bodies (slow): same property."
