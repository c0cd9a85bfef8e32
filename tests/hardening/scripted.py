"""A provider whose every answer the test scripts: odd bodies the fake provider never sends."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest_asyncio
from aiohttp import web


@dataclass
class Scripted:
    """Answers from ``script`` first (status, JSON, headers), then ``default``; records what it saw."""

    url: str = ""
    script: list[tuple[int, Any, dict[str, str]]] = field(default_factory=list)
    default: tuple[int, Any, dict[str, str]] = (200, {}, {})
    seen: list[web.Request] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    delay_s: float = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(request)
        self.bodies.append(await request.read())
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        status, payload, headers = self.script.pop(0) if self.script else self.default
        return web.Response(status=status, body=orjson.dumps(payload), headers=headers,
                            content_type="application/json")


def chat_answer(text: str, finish: Any = "stop", **extra: Any) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                              "finish_reason": finish}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [choice],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        **extra,
    }


@pytest_asyncio.fixture
async def scripted() -> AsyncIterator[Scripted]:
    provider = Scripted(default=(200, chat_answer("default"), {}))
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", provider.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    provider.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        yield provider
    finally:
        await runner.cleanup()
