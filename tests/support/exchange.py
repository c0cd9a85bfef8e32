"""The one way tests build an ``Exchange`` (instead of ad-hoc factories per test module)."""
from __future__ import annotations

import dataclasses
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.auth import Identity
from gateway.exchange import Exchange, Record, RequestFacts, Target

_FACTS = set(RequestFacts._fields)
_RECORD = {f.name for f in dataclasses.fields(Record)}
_TOP = {f.name for f in dataclasses.fields(Exchange)} - {"request", "target", "record"}


_DEFAULT: Any = object()


def build_exchange(body: Any = _DEFAULT, **kw: Any) -> Exchange:
    """A chat exchange for ``body`` (default: one user message to gpt-4o).

    ``kw`` overrides any field by its flat name: request facts (``model``, ``operation``, ``deadline``...,
    plus ``tenant``/``namespace``/``client_key_hash`` for the identity), ``upstream`` and ``upstream_model``
    for the target, record fields (``status``, ``usage``...) and the exchange's own (``raw_body``...).
    """
    if body is _DEFAULT:
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    model = body.get("model", "") if isinstance(body, dict) else ""
    facts: dict[str, Any] = dict(request_id="r1", method="POST", path="/v1/chat/completions",
                                 operation="chat",
                                 headers=CIMultiDictProxy(CIMultiDict()), received_at=0.0, deadline=600.0,
                                 model=model, upstream_path="/chat/completions")
    ident = {"tenant": "default", "namespace": "default", "key_hash": ""}
    target = {"upstream": "mock", "model": model}
    record: dict[str, Any] = {}
    top: dict[str, Any] = {"raw_body": b"{}", "body": body}
    for name, value in kw.items():
        if name in ("tenant", "namespace"):
            ident[name] = value
        elif name == "client_key_hash":
            ident["key_hash"] = value
        elif name == "upstream":
            target["upstream"] = value
        elif name == "upstream_model":
            target["model"] = value
        elif name in _FACTS:
            facts[name] = value
        elif name in _RECORD:
            record[name] = value
        elif name in _TOP:
            top[name] = value
        else:
            raise TypeError(f"build_exchange: unknown field {name!r}")
    if "identity" not in facts:
        facts["identity"] = Identity(ident["tenant"], ident["namespace"], ident["key_hash"])
    if "route" in facts and "route_name" not in facts and facts["route"] is not None:
        facts["route_name"] = facts["route"].label
    return Exchange(request=RequestFacts(**facts), target=Target(**target), record=Record(**record), **top)


def replace_route(ex: Exchange, route: Any) -> Exchange:
    """``ex`` with its request facts naming ``route`` (a ``RouteConfig`` or None)."""
    name = route.label if route is not None else ex.request.route_name
    ex.request = ex.request._replace(route=route, route_name=ex.request.route_name or name)
    return ex
