"""https:// on the raw client: a local aiohttp server with a self-signed certificate (made here with
``cryptography``). Trusted through ``SSL_CERT_FILE``: the answer arrives over TLS with SNI; untrusted
(the control): the handshake fails as a clean connect_error that names no address."""
from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web

from gateway.config_common import PoolConfig
from gateway.config_model import UpstreamConfig
from gateway.errors import UpstreamFailure
from gateway.upstream import UpstreamClient
from tests.support.exchange import build_exchange
from tests.support.tls import self_signed


@pytest_asyncio.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    cert_file, key_file = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)

    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path, "host": request.host, "tls": request.secure})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}/v1", cert_file
    finally:
        await runner.cleanup()


async def test_https_upstream_trusted_and_untrusted(tls_server: tuple[str, Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    url, cert_file = tls_server
    cfg = UpstreamConfig(base_url=url, pool=PoolConfig(client="raw"))
    untrusted = UpstreamClient.create("up", cfg)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    trusted = UpstreamClient.create("up", cfg)
    deadline = asyncio.get_running_loop().time() + 30
    try:
        resp = await trusted.send(build_exchange(deadline=deadline))
        body = b"".join([chunk async for chunk in resp.body])
        assert resp.status == 200 and b'"tls": true' in body and b'"/v1/chat/completions"' in body
        with pytest.raises(UpstreamFailure) as err:
            await untrusted.send(build_exchange(deadline=deadline))
        assert err.value.kind == "connect_error"
        assert str(err.value) == "Upstream up unreachable (tls handshake failed)"
    finally:
        await trusted.close()
        await untrusted.close()
