"""Peak RSS of a gateway process serving one large request: ``python -m bench.body_rss [MB] [--stream]``.

Starts the fake provider here and ``gateway serve`` as a subprocess, sends one chat request carrying
a base64 image of MB megabytes (after one small warm-up request, so lazily loaded parts such as the
tokenizer are not counted), and prints the gateway's resident memory before and its peak (``VmHWM``)
after, and the growth as a multiple of the body size.
"""
from __future__ import annotations

import asyncio
import base64
import os
import sys

import aiohttp
import orjson

from gateway.mock import MockConfig, start_mock
from tests.support.servers import gateway_config, spawn_gateway, wait_ready


def _status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


async def main(megabytes: int, stream: bool) -> None:
    mock = await start_mock(MockConfig())
    gw = spawn_gateway(gateway_config(mock.url, server={"max_body_bytes": 64 * 1024 * 1024}))
    try:
        await wait_ready(gw.url)
        image = base64.b64encode(os.urandom(megabytes * 1024 * 1024 * 3 // 4)).decode()
        body = orjson.dumps({"model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + image}}]}]})
        del image
        async with aiohttp.ClientSession() as session:
            # Warm up first (tokenizer, pools, lazily loaded modules): only the large body's cost is measured.
            warm = {"model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
            async with session.post(gw.url + "/v1/chat/completions", json=warm) as resp:
                await resp.read()
            before = _status(gw.proc.pid, "VmRSS")
            async with session.post(gw.url + "/v1/chat/completions", data=body,
                                    headers={"content-type": "application/json"}) as resp:
                await resp.read()
                status = resp.status
        peak = _status(gw.proc.pid, "VmHWM")
        mb = 1024 * 1024
        print(
            f"status={status} body={len(body) / mb:.1f} MB stream={stream} rss_before={before / mb:.1f} MB "
            f"peak={peak / mb:.1f} MB growth={(peak - before) / mb:.1f} MB"
            f" = {(peak - before) / len(body):.2f}x body"
        )
    finally:
        gw.proc.terminate()
        gw.proc.wait(10)
        await mock.close()


if __name__ == "__main__":
    asyncio.run(main(int(next((a for a in sys.argv[1:] if a.isdigit()), "50")), "--stream" in sys.argv))
