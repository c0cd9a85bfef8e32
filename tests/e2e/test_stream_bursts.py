"""A long stream that reaches the gateway in bursts (64 KiB reads of ~200 events: a fast provider) through
the real gateway: handed on in pieces of whole events (``gateway.body.Observed``'s ``piece_bytes``, set by
the usage layer), its usage hidden and read (the stripper), its end seen (the inspector), its answer stored
(the exact cache's fill, assembled off the loop). The client must read exactly the provider's stream."""
from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from gateway.body import Observed
from gateway.mock import MockServer
from tests.e2e.conftest import GatewayFactory
from tests.e2e.test_observability import scrape, val
from tests.support.until import until

TOKENS = 3000  # ~900 KB with usage: many 64 KiB reads


async def _stream(url: str, body: dict[str, object]) -> tuple[str, bytes]:
    """The ``x-gateway-cache`` header and the body of a stream read as fast as it comes (``url``: up to
    ``/v1``)."""
    async with aiohttp.ClientSession() as session, session.post(
        url + "/chat/completions", json=body,
        headers={"authorization": "Bearer sk-client", "x-mock-tokens": str(TOKENS)},
    ) as resp:
        assert resp.status == 200
        return resp.headers.get("x-gateway-cache", ""), await resp.read()


def _events(data: bytes) -> list[dict[str, Any]]:
    assert data.endswith(b"data: [DONE]\n\n")
    return [orjson.loads(line[6:]) for line in data[:-len(b"data: [DONE]\n\n")].split(b"\n\n") if line]


def _without_ids(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in event.items() if k not in ("id", "created", "obfuscation")} for event in events]


def _text(events: list[dict[str, Any]]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])


async def test_a_burst_read_reaches_the_client_as_the_provider_sent_it(
    make_gateway: GatewayFactory, mock_upstream: MockServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    pieces: list[int] = []
    cut = Observed._piece

    def counted(self: Observed) -> bytes:
        pieces.append(1)
        return cut(self)

    monkeypatch.setattr(Observed, "_piece", counted)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "a long one"}], "stream": True,
            "temperature": 0, "max_tokens": 50_000}  # the header sets the length below it
    gw = await make_gateway(cache={"exact": {"enabled": True}})
    _, raw = await _stream(mock_upstream.url, body)
    direct = _events(raw)
    cache, got = await _stream(gw.url + "/v1", body)
    assert cache == "miss" and b'"usage"' not in got  # usage asked for by the gateway, hidden again
    assert _without_ids(_events(got)) == _without_ids(direct) and len(direct) == TOKENS + 2
    assert len(pieces) > 2  # the path under test was taken: reads longer than a piece were cut

    async def completion_tokens() -> float:
        return val(await scrape(gw.url), "gateway_tokens_total", kind="completion")

    await until(completion_tokens)
    assert await completion_tokens() == TOKENS  # the provider's figure, read from the hidden usage event

    async def hit() -> bytes | None:  # the answer is stored once assembled (off the loop): then a hit
        cache, data = await _stream(gw.url + "/v1", body)
        return data if cache == "hit" else None

    await until(hit)
    replayed = await hit()
    assert replayed is not None and _text(_events(replayed)) == _text(direct) and len(_text(direct)) > TOKENS
