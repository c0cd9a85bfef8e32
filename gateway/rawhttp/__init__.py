"""A raw HTTP/1.1 upstream client: ``asyncio.Protocol`` connections, aiohttp's C response parser, a LIFO
keep-alive pool (issue #21). ``gateway/upstream.py`` sends through it when ``pool.client: raw``.

Modules: ``origin`` (where to connect, from ``base_url``), ``head`` (the request head),
``connection`` (one connection: parse, back-pressure, loss), ``pool`` (keep-alive, limit, expiry),
``client`` (one request: the stale-connection retry, the response handle), ``errors``.
"""
from __future__ import annotations

from gateway.rawhttp.client import RawResponse, fetch
from gateway.rawhttp.errors import ConnectFailed, ConnectTimeout, MalformedResponse
from gateway.rawhttp.head import request_head
from gateway.rawhttp.origin import Origin
from gateway.rawhttp.pool import RawPool

__all__ = [
    "ConnectFailed", "ConnectTimeout", "MalformedResponse", "Origin", "RawPool", "RawResponse", "fetch",
    "request_head",
]
