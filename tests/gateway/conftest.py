from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.exchange import Exchange


@pytest.fixture
def make_exchange() -> Callable[..., Exchange]:
    def make(body: dict[str, Any] | None = None, **kw: Any) -> Exchange:
        body = body or {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        fields: dict[str, Any] = dict(request_id="r1", method="POST", path="/v1/chat/completions",
                                      operation="chat", headers=CIMultiDictProxy(CIMultiDict()), raw_body=b"{}",
                                      body=body, received_at=0.0, deadline=600.0, model=body.get("model", ""),
                                      upstream="mock", upstream_model=body.get("model", ""),
                                      upstream_path="/chat/completions")
        fields.update(kw)
        return Exchange(**fields)

    return make
