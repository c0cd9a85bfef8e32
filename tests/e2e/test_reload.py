"""Live reload of a running `gateway serve`: a ConfigMap-style swap applies a new route, a broken file is
refused, and a stream opened before both keeps flowing to its [DONE]."""
from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import openai
import yaml
from openai import AsyncOpenAI

from gateway.mock import MockServer
from tests.support.polling import poll_until
from tests.support.servers import gateway_config, spawn_gateway, wait_ready

MESSAGES = [{"role": "user", "content": "hello"}]


class ConfigMapMount:
    """The layout kubelet writes: config.yaml -> ..data/config.yaml, ..data -> a versioned directory."""

    def __init__(self, root: Path, cfg: dict[str, Any]) -> None:
        self.root, self.version = root, 0
        root.mkdir(parents=True)
        self.publish(cfg)
        (root / "config.yaml").symlink_to("..data/config.yaml")

    @property
    def path(self) -> Path:
        return self.root / "config.yaml"

    def publish(self, cfg: dict[str, Any] | str) -> None:
        self.version += 1
        version_dir = self.root / f"..v{self.version}"
        version_dir.mkdir()
        (version_dir / "config.yaml").write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
        (self.root / "..data_tmp").symlink_to(version_dir.name)
        os.replace(self.root / "..data_tmp", self.root / "..data")


async def _consume(stream: Any, first: asyncio.Event) -> tuple[int, float]:
    chunks = 0
    async for _ in stream:
        chunks += 1
        first.set()
    return chunks, time.monotonic()


async def test_reload_applies_a_route_and_refuses_a_broken_file_while_a_stream_stays_open(
        mock_upstream: MockServer, tmp_path: Path) -> None:
    """File swap -> new route and new upstream pool serve; broken file + SIGHUP -> refused;
    open stream ends clean."""
    cfg = gateway_config(mock_upstream.url, routes=[{"match": {"model": "gpt-*"}, "upstream": "mock"}])
    mount = ConfigMapMount(tmp_path / "mount", cfg)
    gw = spawn_gateway(cfg, extra_args=["--config", str(mount.path)])
    try:
        await wait_ready(gw.url, timeout_s=60)
        async with AsyncOpenAI(base_url=gw.url + "/v1", api_key="sk-client", max_retries=0) as client:
            try:
                await client.chat.completions.create(model="alias", messages=MESSAGES)
                raise AssertionError("alias must not route before the reload")
            except openai.NotFoundError:
                pass
            stream = await client.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, stream=True, max_tokens=8,
                extra_headers={"x-mock-fault": "stall_after_chunks=2;stall_ms=8000"})
            first = asyncio.Event()
            consumer = asyncio.create_task(_consume(stream, first))
            await asyncio.wait_for(first.wait(), 10)

            new_cfg = {
                **cfg,
                "routes": [
                    {"match": {"model": "alias"}, "upstream": "mock", "model": "gpt-4o-mini"},
                    *cfg["routes"],
                ],
                "upstreams": {"mock": {**cfg["upstreams"]["mock"], "headers": {"x-reloaded": "1"}}},
            }
            mount.publish(new_cfg)  # no signal: the watcher notices the swap
            reply = await _until_routes(client, "alias")
            assert reply.model == "gpt-4o-mini"
            # the new pool's headers
            assert mock_upstream.recorder.attempts[-1].headers.get("x-reloaded") == "1"

            mount.publish(
                {**new_cfg, "routes": [{"match": {"model": "*"}, "upstream": "nowhere"}], "typo": 1}
            )
            gw.proc.send_signal(signal.SIGHUP)
            async with asyncio.timeout(10):
                await poll_until(lambda: '"result":"refused"' in gw.logs(), 0.05)
            refused_at = time.monotonic()
            assert (
                await client.chat.completions.create(model="alias", messages=MESSAGES)
            ).model == "gpt-4o-mini"
            assert not consumer.done()  # the stream opened before both reloads is still open...

            # ...and ends normally ([DONE] seen by the SDK)
            chunks, ended_at = await asyncio.wait_for(consumer, 20)
        assert chunks > 2 and ended_at > refused_at
        refusal = next(line for line in gw.logs().splitlines() if '"result":"refused"' in line)
        assert "typo: unknown key" in refusal  # the problems are in the one log line
        gw.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(gw.proc.wait, 15) == 0
    finally:
        gw.stop()


async def _until_routes(client: AsyncOpenAI, model: str, timeout_s: float = 10.0) -> Any:
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                return await client.chat.completions.create(model=model, messages=MESSAGES)
            except openai.NotFoundError:
                await asyncio.sleep(0.05)
