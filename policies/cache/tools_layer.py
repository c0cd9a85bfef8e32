"""Exact cache for read-only tool routes (``/tools/{name}/...``).

The tool handler (``policies/tools/routes.py``) puts ``state.components["tool_cache"]``
outermost in each tool chain. Only reads are cached (``ex.state.get(TOOL_READ)``:
GET/HEAD, or any method on a ``read_only: true`` tool), keyed per tenant
namespace on method, path, query and body, with the tool's ``cache_ttl_s``
(else ``cache.exact.ttl_s``). Only a 200 that ended cleanly is stored, never
a ``fallback_response`` (``source == "local"``), and never an answer the tool marked
``Cache-Control: no-store`` or ``private`` or that sets a cookie. The client's cache controls
apply as for model answers.
"""
from __future__ import annotations

import hashlib
import time

from gateway.body import Body, Observed, OneChunk
from gateway.chain import Next
from gateway.components import TOOL_READ
from gateway.config_model import Config
from gateway.exchange import Exchange, UpstreamResponse
from policies.cache.controls import mode_allows
from policies.cache.entry import CachedAnswer
from policies.cache.keys import CacheKey, config_version, make_key
from policies.cache.request import controls_of
from policies.cache.runtime import CacheRuntime

MAX_TOOL_ANSWER = 4 * 1024 * 1024


class ToolCache:
    name = "tool_cache"

    def __init__(self, config: Config, rt: CacheRuntime) -> None:
        self.config = config
        self.rt = rt

    def key(self, ex: Exchange) -> CacheKey:
        tool = self.config.tools.get(ex.target.upstream)
        version = config_version(getattr(tool, "base_url", ""), getattr(tool, "headers", None))
        body = hashlib.sha256(ex.raw_body).hexdigest()
        return make_key(namespace=ex.request.namespace, upstream=ex.target.upstream, model="",
                        operation="tool", config_version=version,
                        fields=[ex.request.method, ex.request.upstream_path, ex.request.query_string, body])

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        cfg = self.config.cache.exact
        if not ex.state.get(TOOL_READ) or not cfg.enabled or cfg.mode == "off":
            return await next(ex)
        controls = controls_of(ex)
        read, write = mode_allows(cfg.mode, controls)
        if not (read or write):
            self._result(ex, "bypass")
            return await next(ex)
        key = self.key(ex)
        if read:
            answer = await self.rt.tool.get(key)
            if answer is not None and (controls.max_age_s is None
                                       or time.time() - answer.created <= controls.max_age_s):
                self._result(ex, "hit")
                ex.response_headers["age"] = str(max(0, int(time.time() - answer.created)))
                ex.record.source = "cache"
                body = b"" if ex.request.method == "HEAD" else answer.body
                return UpstreamResponse(status=200, headers={"content-type": answer.content_type},
                                        body=OneChunk(body), source="cache")
        self._result(ex, "miss")
        resp = await next(ex)
        if write and resp.status == 200 and resp.source == "upstream" and ex.request.method != "HEAD" \
                and self._storable(resp):
            tool = self.config.tools.get(ex.target.upstream)
            ttl = controls.ttl(
                tool.cache_ttl_s if tool is not None and tool.cache_ttl_s is not None else cfg.ttl_s
            )
            content_type = resp.headers.get("content-type", "application/octet-stream")
            resp = resp.with_body(self._fill(key, resp.body, ttl, content_type))
        return resp

    def _storable(self, resp: UpstreamResponse) -> bool:
        """The tool's own say: ``Cache-Control: no-store`` or ``private``, or a ``Set-Cookie`` (an answer
        for one caller), keep the answer out of the shared cache."""
        directives = {
            d.strip().split("=", 1)[0].lower() for d in resp.headers.get("cache-control", "").split(",")
        }
        if "set-cookie" in resp.headers:
            self.rt.metrics.decision(self.name, "not_stored_set_cookie")
            return False
        if directives & {"no-store", "private"}:
            self.rt.metrics.decision(self.name, "not_stored_private")
            return False
        return True

    def _fill(self, key: CacheKey, body: Body, ttl: float, content_type: str) -> Body:
        chunks: list[bytes] = []
        size = 0

        def keep(chunk: bytes) -> bytes:
            nonlocal size
            size += len(chunk)
            if size <= MAX_TOOL_ANSWER:
                chunks.append(chunk)
            return chunk

        def on_end(error: BaseException | None) -> None:
            if error is None and size <= MAX_TOOL_ANSWER:  # a complete answer only
                self.rt.tool.set(
                    key,
                    CachedAnswer(
                        operation="tool",
                        body=b"".join(chunks),
                        created=time.time(),
                        content_type=content_type,
                    ),
                    ttl,
                )

        return Observed(body, on_chunk=keep, on_end=on_end)

    def _result(self, ex: Exchange, result: str) -> None:
        ex.record.cache_result = ex.response_headers["x-gateway-cache"] = result
        self.rt.metrics.request("tool", result, self.name)
