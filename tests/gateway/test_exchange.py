"""gateway.exchange: the three typed parts of a request and the typed-key state."""
from __future__ import annotations

import dataclasses

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.auth import ANONYMOUS, Identity
from gateway.body import OneChunk
from gateway.exchange import (
    DisconnectGuard,
    Exchange,
    LayerState,
    Record,
    RequestFacts,
    StateKey,
    Target,
    UpstreamResponse,
    Usage,
)


def facts(**kw: object) -> RequestFacts:
    base: dict[str, object] = dict(request_id="r", method="POST", path="/v1/chat/completions",
                                   operation="chat",
                                   headers=CIMultiDictProxy(CIMultiDict()), received_at=1.0, deadline=2.0)
    base.update(kw)
    return RequestFacts(**base)  # type: ignore[arg-type]


def test_request_facts_are_immutable_and_name_the_identity() -> None:
    req = facts(identity=Identity("acme", "t:acme", "abc"))
    assert req.tenant == "acme" and req.namespace == "t:acme"
    with pytest.raises(AttributeError):
        req.model = "other"  # type: ignore[misc]
    changed = req._replace(model="other")  # the one way to a changed copy
    assert changed.model == "other" and req.model == "" and changed.tenant == "acme"
    assert facts().identity is ANONYMOUS and facts().tenant == "default"


def test_raw_body_is_forwarded_until_a_layer_changes_it() -> None:
    raw = b'{"model": "m",  "messages": []}'
    ex = Exchange(request=facts(), target=Target(upstream="u", model="m"), raw_body=raw,
                  body=orjson.loads(raw))
    assert ex.body_bytes() is raw  # the client's exact bytes
    ex.set_body({"model": "n", "messages": []})
    assert ex.modified and orjson.loads(ex.body_bytes()) == {"model": "n", "messages": []}


def test_dropping_the_raw_body_keeps_what_would_be_sent() -> None:
    raw = b'{"model": "m",  "messages": []}'
    ex = Exchange(request=facts(), target=Target(upstream="u", model="m"), raw_body=raw,
                  body=orjson.loads(raw))
    ex.drop_raw_body()
    assert ex.raw_body == b"" and orjson.loads(ex.body_bytes()) == {"model": "m", "messages": []}
    passthrough = Exchange(request=facts(), target=Target(upstream="u"), raw_body=raw, body=None)
    passthrough.drop_raw_body()  # nothing to re-serialise: the bytes stay
    assert passthrough.body_bytes() is raw


def test_record_defaults_and_usage_total() -> None:
    rec = Record()
    assert rec.status == 0 and rec.source == "upstream" and rec.usage is None and rec.cost_usd is None
    assert Usage(prompt=3, completion=4).total == 7


def test_layer_state_is_typed_by_key() -> None:
    counted: StateKey[bool] = StateKey("test.counted")
    names: StateKey[list[str]] = StateKey("test.names")
    state = LayerState()
    assert state.get(counted) is None and counted not in state
    state.set(counted, True)
    assert state.get(counted) is True and counted in state and state[counted] is True
    assert state.setdefault(names, []) == [] and state.setdefault(names, ["x"]) == []
    assert state.pop(counted) is True and state.pop(counted) is None
    other: StateKey[bool] = StateKey("test.counted")  # same name, another key: keys are identities
    state.set(counted, False)
    assert other not in state and "StateKey('test.counted')" == repr(other)


def test_with_body_keeps_every_other_field() -> None:
    """``with_body`` names the fields by hand (for speed): each one but ``body`` is carried over, so a field
    added to ``UpstreamResponse`` and forgotten there fails here (control: the body is the new one)."""
    old_body, new_body = OneChunk(b"a"), OneChunk(b"b")
    resp = UpstreamResponse(201, {"content-type": "text/event-stream"}, old_body, "cache", "u")
    out = resp.with_body(new_body)
    assert out is not resp and out.body is new_body and resp.body is old_body
    for f in dataclasses.fields(UpstreamResponse):
        if f.name != "body":
            assert getattr(out, f.name) == getattr(resp, f.name), f.name
    assert dataclasses.replace(resp, body=new_body) == out  # the same as the generic copy


def test_a_guard_keeps_a_cancel_only_while_it_holds_and_delivers_it_once_on_release() -> None:
    """The server hands a disconnect's cancel to the guard: kept while others wait, delivered on release."""
    held, cancels = [True], []
    guard = DisconnectGuard(lambda: held[0])
    assert guard.defer(lambda: cancels.append(1)) is True
    assert cancels == []
    guard.release()
    guard.release()
    assert cancels == [1]  # once
    held[0] = False  # control: nobody waits, the server cancels at once
    assert guard.defer(lambda: cancels.append(2)) is False
    guard.release()
    assert cancels == [1]
