"""The one way tests build an ``Exchange`` (instead of ad-hoc factories per test module)."""
from __future__ import annotations

from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.exchange import Exchange


def build_exchange(body: dict[str, Any] | None = None, **kw: Any) -> Exchange:
    """A chat exchange for ``body`` (default: one user message to gpt-4o); ``kw`` overrides any field."""
    body = body or {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    fields: dict[str, Any] = dict(request_id="r1", method="POST", path="/v1/chat/completions",
                                  operation="chat", headers=CIMultiDictProxy(CIMultiDict()), raw_body=b"{}",
                                  body=body, received_at=0.0, deadline=600.0, model=body.get("model", ""),
                                  upstream="mock", upstream_model=body.get("model", ""),
                                  upstream_path="/chat/completions")
    fields.update(kw)
    return Exchange(**fields)
