"""The floor: a bare aiohttp relay with no features, to compare the gateway against.

It does what any Python proxy must do and nothing more: accept the request,
read its body, forward it with the client's headers (hop-by-hop dropped) over
one pooled client session, and relay the answer chunk by chunk as it arrives.
No parsing, validation, routing, policies, logs or metrics. The gateway's
target is to stay within 1.2x of this relay's CPU per request with every
policy on, so this file must stay as lean as a careful engineer would write it.

Run: ``python -m bench.bare_relay --upstream http://127.0.0.1:9000 --port 8081``
"""
from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                 "trailers", "transfer-encoding", "upgrade", "host", "content-length"})
RESP_DROP = HOP | {"date", "server", "content-encoding"}
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def relay(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    session = request.app[SESSION]
    async with session.request(request.method, request.app[UPSTREAM] + request.path_qs, data=body,
                               headers=headers, allow_redirects=False) as up:
        out = {k: v for k, v in up.headers.items() if k.lower() not in RESP_DROP}
        resp = web.StreamResponse(status=up.status, headers=out)
        await resp.prepare(request)
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def build_app(upstream: str, max_connections: int) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[UPSTREAM] = upstream.rstrip("/")

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        connector = aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=30)
        app[SESSION] = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=True,
            timeout=aiohttp.ClientTimeout(total=None),
            skip_auto_headers=("User-Agent",),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/_bare/health", health)
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="bare aiohttp relay (benchmark floor)")
    parser.add_argument("--upstream", required=True, help="root URL of the upstream, e.g. http://127.0.0.1:9000")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--max-connections", type=int, default=2048)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        loop = None
    else:
        loop = uvloop.new_event_loop()
    web.run_app(
        build_app(args.upstream, args.max_connections),
        host=args.host,
        port=args.port,
        access_log=None,
        handler_cancellation=True,
        print=None,
        loop=loop,
    )


if __name__ == "__main__":
    main()
