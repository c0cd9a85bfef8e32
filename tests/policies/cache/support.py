"""Helpers for the cache policy tests: an AppState as the app builds it and a scripted upstream."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.appstate import AppState, Runtime
from gateway.auth import Authenticator
from gateway.config import parse_config
from gateway.exchange import Exchange, UpstreamResponse
from gateway.routing import Router
from gateway.telemetry.metrics import Metrics
from tests.support.exchange import build_exchange, replace_route
from tests.support.servers import gateway_config

ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi there"}, "logprobs": None,
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def make_state(**overrides: Any) -> AppState:
    cfg = parse_config(gateway_config("http://127.0.0.1:9/v1", **overrides), {})
    st = AppState(runtime=Runtime(config=cfg, router=Router(cfg.routes), auth=Authenticator(cfg.auth),
                                  chain=None))  # type: ignore[arg-type]
    st.metrics = Metrics()
    return st


def exchange(st: AppState, body: dict[str, Any] | None = None, key: str = "sk-a",
             headers: dict[str, str] | None = None, operation: str = "chat") -> Exchange:
    body = body or {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}], "temperature": 0}
    hdrs = CIMultiDictProxy(CIMultiDict({"authorization": f"Bearer {key}", **(headers or {})}))
    identity = st.runtime.auth.identify(hdrs)
    ex = build_exchange(request_id="r", method="POST", path="/v1/x", operation=operation, headers=hdrs,
                  raw_body=orjson.dumps(body), body=body, received_at=0.0, deadline=1e12, model="gpt-4o",
                  upstream="mock", upstream_model=body.get("model", "gpt-4o"), identity=identity,
                        stream=body.get("stream") is True, route_name="*",
                  upstream_path="/chat/completions")
    ex = replace_route(ex, st.config.routes[0])
    return ex


async def body_of(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


class Upstream:
    """Counts calls and answers with a fixed body."""

    def __init__(self, payload: Any = ANSWER, status: int = 200) -> None:
        self.calls = 0
        self.payload = payload
        self.status = status

    async def __call__(self, ex: Exchange) -> UpstreamResponse:
        self.calls += 1
        return UpstreamResponse(self.status, {"content-type": "application/json"},
                                body_of([orjson.dumps(self.payload)]))


async def drain(resp: UpstreamResponse) -> bytes:
    return b"".join([c async for c in resp.body])
