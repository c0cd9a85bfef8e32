"""Observability end to end: scripted traffic through the real gateway, /metrics parsed, spans captured."""
from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from gateway.mock import MockServer
from gateway.tokens.tokenizer import Tokenizer
from tests.support.servers import InProcessGateway, free_port

GatewayFactory = Callable[..., Awaitable[InProcessGateway]]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
CHAT = [{"role": "user", "content": "Tell me about sidecars"}]
OBS: dict[str, Any] = {
    "metrics": {"models": ["gpt-4o"]},
    "pricing": {"gpt-4o": {"input": 2.5, "output": 10.0, "cached_input": 1.25}},
    "cache": {"exact": {"enabled": False}, "coalesce": {"enabled": False}},
}


async def scrape(url: str) -> Samples:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        assert r.status == 200
        text = await r.text()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def val(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


async def settled(url: str, requests: int, timeout_s: float = 10.0) -> Samples:
    """Poll until the sinks of ``requests`` requests ran
    (they run just after the client got its last byte)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        samples = await scrape(url)
        if val(samples, "gateway_requests_total") >= requests or loop.time() > deadline:
            return samples
        await asyncio.sleep(0.02)


async def raw_stream(
    gw: InProcessGateway, body: dict[str, Any], headers: dict[str, str] | None = None
) -> bytes:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            gw.base_url + "/chat/completions",
            json=body,
            headers={"authorization": "Bearer sk-c", **(headers or {})},
        ) as r,
    ):
        assert r.status == 200
        return await r.read()


async def test_counts_tokens_cost_and_histograms_match_the_traffic(make_gateway: GatewayFactory) -> None:
    """Requests, tokens by kind, cost and histogram counts equal exactly what the scripted traffic implies."""
    gw = await make_gateway(**OBS)
    tok = Tokenizer()
    async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-c", max_retries=0) as client:
        reported = [0, 0]
        for _ in range(3):
            r = await client.chat.completions.create(
                model="gpt-4o", messages=CHAT, extra_headers={"x-mock-tokens": "5"}
            )
            assert r.usage is not None
            reported[0] += r.usage.prompt_tokens
            reported[1] += r.usage.completion_tokens
        for _ in range(2):
            stream = await client.chat.completions.create(model="gpt-4o", messages=CHAT, stream=True,
                                                          stream_options={"include_usage": True},
                                                          extra_headers={"x-mock-tokens": "8"})
            async for chunk in stream:
                if chunk.usage is not None:
                    reported[0] += chunk.usage.prompt_tokens
                    reported[1] += chunk.usage.completion_tokens
        text = ""
        stream = await client.chat.completions.create(
            model="gpt-4o",
            messages=CHAT,
            stream=True,
            extra_headers={"x-mock-tokens": "6", "x-mock-no-usage": "1"},
        )
        async for chunk in stream:
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
    hidden = await raw_stream(gw, {"model": "gpt-4o", "messages": CHAT, "stream": True},
                              {"x-mock-tokens": "4"})
    samples = await settled(gw.url, 7)
    # asked nothing, got nothing extra
    assert b'"usage"' not in hidden and hidden.endswith(b"data: [DONE]\n\n")
    reported[0] += _mock_prompt_tokens()  # the hidden stream's usage was read by the gateway, not the client
    reported[1] += 4
    estimated_prompt = tok.count_request("chat", {"model": "gpt-4o", "messages": CHAT})
    estimated_completion = len(tok.encoding("o200k_base").encode_ordinary(text))
    labels = {"model": "gpt-4o", "upstream": "mock", "tenant": "default"}
    assert (
        val(samples, "gateway_requests_total", status_class="2xx", model="gpt-4o", route="*", cache="none")
        == 7
    )
    assert val(samples, "gateway_tokens_total", kind="prompt", **labels) == reported[0] + estimated_prompt
    assert (
        val(samples, "gateway_tokens_total", kind="completion", **labels)
        == reported[1] + estimated_completion
    )
    assert (
        val(samples, "gateway_tokens_estimated_total", kind="completion", **labels)
        == estimated_completion
        == 6
    )
    cost = ((reported[0] + estimated_prompt) * 2.5 + (reported[1] + estimated_completion) * 10.0) / 1e6
    assert val(samples, "gateway_cost_usd_total", model="gpt-4o", tenant="default") == pytest.approx(cost)
    assert val(samples, "gateway_request_duration_seconds_count", model="gpt-4o") == 7
    assert val(samples, "gateway_time_to_first_token_seconds_count", source="upstream") == 7
    assert val(samples, "gateway_upstream_duration_seconds_count", upstream="mock", outcome="ok") == 7
    assert val(samples, "gateway_overhead_seconds_count", route="*") == 7
    assert val(samples, "gateway_inflight_requests", upstream="mock") == 0


async def test_inter_token_latency_follows_the_provider_pace(make_gateway: GatewayFactory) -> None:
    """A stream paced at 25 tokens/s gives one gap per token after the first, each around 40 ms.

    A gap is measured between chunks as they arrive; two tokens read in one chunk (a stalled loop)
    are one arrival, so the count may fall short under load but never exceeds tokens - 1.
    """
    gw = await make_gateway(**OBS)
    await raw_stream(gw, {"model": "gpt-4o", "messages": CHAT, "stream": True},
                     {"x-mock-tokens": "12", "x-mock-fault": "tokens_per_s=25"})
    samples = await settled(gw.url, 1)
    count = val(samples, "gateway_inter_token_latency_seconds_count", model="gpt-4o")
    total = val(samples, "gateway_inter_token_latency_seconds_sum", model="gpt-4o")
    assert 6 <= count <= 11
    assert 0.03 <= total / count <= 0.2
    assert val(samples, "gateway_inter_token_latency_seconds_bucket", model="gpt-4o", le="0.02") == 0


def _mock_prompt_tokens() -> int:
    """The fake provider's own prompt count for CHAT (it reports this in usage)."""
    from gateway.mock.chat import chat_prompt_tokens

    return chat_prompt_tokens({"messages": CHAT})


async def test_ttft_lands_where_the_provider_puts_it(make_gateway: GatewayFactory) -> None:
    """With a 300 ms provider TTFT every TTFT observation is above 0.25 s and (generously) below 2.5 s."""
    gw = await make_gateway(**OBS)
    async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-c", max_retries=0) as client:
        async def one() -> None:
            stream = await client.chat.completions.create(model="gpt-4o", messages=CHAT, stream=True,
                                                          extra_headers={"x-mock-fault": "ttft_ms=300"})
            async for _ in stream:
                pass
        await asyncio.gather(*(one() for _ in range(4)))
    samples = await settled(gw.url, 4)
    bucket = "gateway_time_to_first_token_seconds_bucket"
    assert val(samples, bucket, model="gpt-4o", source="upstream", le="0.25") == 0
    assert val(samples, bucket, model="gpt-4o", source="upstream", le="2.5") == 4
    # The gateway's own share stays small even though the request took 300+ ms.
    assert val(samples, "gateway_overhead_seconds_bucket", route="*", le="0.1") == 4


async def test_partial_streams_are_charged_for_what_was_produced(make_gateway: GatewayFactory,
                                                                  mock_upstream: MockServer) -> None:
    """A client that leaves after 3 chunks, and an upstream reset after 6 events,
    are charged for those tokens."""
    gw = await make_gateway(
        **OBS,
        upstreams={
            "mock": {
                "base_url": mock_upstream.url,
                "api_key": "sk-upstream-secret",
                "retry": {"max_attempts": 1},
            }
        },
    )
    body = {"model": "gpt-4o", "messages": CHAT, "stream": True}
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.base_url + "/chat/completions", json=body,
                          headers={"x-mock-tokens": "200", "x-mock-fault": "tokens_per_s=20"}) as r:
            seen = 0
            async for _ in r.content.iter_any():
                seen += 1
                if seen >= 3:
                    break
        cut = await raw_stream(gw, body, {"x-mock-tokens": "50", "x-mock-fault": "reset_after_chunks=6"})
    samples = await settled(gw.url, 2)
    assert b'"error"' in cut and b"[DONE]" not in cut
    labels = {"model": "gpt-4o", "upstream": "mock", "tenant": "default", "kind": "completion"}
    charged = val(samples, "gateway_tokens_estimated_total", **labels)
    # the reset stream produced 5 content chunks; the other some, not all
    assert 5 + 1 <= charged < 100, charged
    assert val(samples, "gateway_tokens_estimated_total", model="gpt-4o", kind="prompt") > 0


async def test_tracing_spans_and_traceparent(make_gateway: GatewayFactory, mock_upstream: MockServer) -> None:
    """A request span continues the caller's trace, an attempt span's id is what the provider received."""
    gw = await make_gateway(**OBS, tracing={"enabled": True, "exporter": "memory"})
    caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-c", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=CHAT, stream=True, max_tokens=32, temperature=0.7,
            extra_headers={"traceparent": f"00-{caller_trace}-00f067aa0ba902b7-01", "x-mock-tokens": "3"})
        async for _ in stream:
            pass
    await settled(gw.url, 1)
    spans = gw.state.tracer.exporter.get_finished_spans()
    server = next(s for s in spans if s.kind.name == "SERVER")
    client_span = next(s for s in spans if s.kind.name == "CLIENT")
    assert server.name == "chat gpt-4o" and f"{server.context.trace_id:032x}" == caller_trace
    assert client_span.parent.span_id == server.context.span_id
    sent = mock_upstream.recorder.attempts[-1].headers
    assert sent["traceparent"] == f"00-{caller_trace}-{client_span.context.span_id:016x}-01"
    a = server.attributes
    assert a["gen_ai.usage.output_tokens"] == 3 and a["gen_ai.request.max_tokens"] == 32
    assert a["gen_ai.request.temperature"] == 0.7 and tuple(a["gen_ai.response.finish_reasons"]) == ("stop",)
    assert a["gen_ai.response.model"] == "gpt-4o" and a["gen_ai.provider.name"] == "openai"
    assert a["server.address"] == "127.0.0.1" and a["gen_ai.operation.name"] == "chat"
    assert [e.name for e in server.events] == ["gen_ai.first_token"]


async def test_metrics_on_their_own_port(make_gateway: GatewayFactory) -> None:
    """metrics.port serves the same exposition on a second listener."""
    port = free_port()
    gw = await make_gateway(server={"drain_s": 5, "grace_s": 0, "host": "127.0.0.1"},
                            metrics={"port": port, "models": ["gpt-4o"]})
    async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-c", max_retries=0) as client:
        await client.chat.completions.create(model="gpt-4o", messages=CHAT)
    samples = await settled(f"http://127.0.0.1:{port}", 1)
    assert val(samples, "gateway_requests_total", model="gpt-4o") == 1


async def test_metrics_disabled(make_gateway: GatewayFactory) -> None:
    """metrics.enabled: false turns /metrics off (404) and the request families are not registered."""
    gw = await make_gateway(metrics={"enabled": False})
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/metrics") as r:
        assert r.status == 404
    assert "request_metrics" not in gw.state.components


async def test_estimates_work_with_the_network_blocked(make_gateway: GatewayFactory,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """With every non-loopback connection refused, a usage-less answer is still counted by the tokenizer."""
    real_connect = socket.socket.connect

    def loopback_only(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else str(address)
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise OSError(f"network blocked in test: {host}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "/nonexistent-tiktoken-cache")
    gw = await make_gateway(**OBS)
    async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-c", max_retries=0) as client:
        r = await client.chat.completions.create(model="gpt-4o", messages=CHAT,
                                                 extra_headers={"x-mock-no-usage": "1", "x-mock-tokens": "7"})
    assert r.usage is None
    samples = await settled(gw.url, 1)
    expected = len(Tokenizer().encoding("o200k_base").encode_ordinary(r.choices[0].message.content or ""))
    assert val(samples, "gateway_tokens_estimated_total", kind="completion") == expected > 0


async def test_admin_usage_auth_and_validation(make_gateway: GatewayFactory, tmp_path: Any) -> None:
    """/admin/usage: 404 without an admin key configured, 401 with a wrong key, 400 on a bad group_by."""
    off = await make_gateway(ledger={"enabled": True, "sqlite_path": str(tmp_path / "a.db")})
    on = await make_gateway(ledger={"enabled": True, "sqlite_path": str(tmp_path / "b.db")},
                            admin={"api_key": "adm-key"})
    async with aiohttp.ClientSession() as s:
        async with s.get(off.url + "/admin/usage") as r:
            assert r.status == 404
        async with s.get(on.url + "/admin/usage", headers={"authorization": "Bearer nope"}) as r:
            assert r.status == 401
        async with s.get(on.url + "/admin/usage?group_by=request_id",
                         headers={"authorization": "Bearer adm-key"}) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "group_by"
        async with s.get(
            on.url + "/admin/usage?since=yesterday", headers={"authorization": "Bearer adm-key"}
        ) as r:
            assert r.status == 400
        async with s.get(on.url + "/admin/usage?group_by=model&since=1h",
                         headers={"authorization": "Bearer adm-key"}) as r:
            assert r.status == 200 and orjson.loads(await r.read())["groups"] == []


async def test_otlp_export_configured_by_otel_variables(make_gateway: GatewayFactory,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """With only OTEL_* variables set,
    spans are exported over OTLP/HTTP and flushed when the gateway stops."""
    from aiohttp import web

    bodies: list[tuple[str, bytes]] = []

    async def traces(request: web.Request) -> web.Response:
        bodies.append((request.headers.get("content-type", ""), await request.read()))
        return web.Response(content_type="application/x-protobuf", body=b"")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{port}/v1/traces")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gw-under-test")
    try:
        gw = await make_gateway()
        assert gw.state.tracer is not None
        async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-c", max_retries=0) as client:
            await client.chat.completions.create(model="gpt-4o", messages=CHAT)
        await settled(gw.url, 1)
        await gw.close()  # the batch processor flushes on shutdown
        assert bodies and bodies[0][0] == "application/x-protobuf"
        assert b"gw-under-test" in bodies[0][1] and b"gen_ai.usage.output_tokens" in bodies[0][1]
    finally:
        await runner.cleanup()


async def test_requests_refused_before_parsing_are_counted(make_gateway: GatewayFactory) -> None:
    """Malformed JSON, wrong method and unknown paths each leave one 4xx record in gateway_requests_total."""
    gw = await make_gateway()
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.base_url + "/chat/completions", data=b"{not json") as r:
            assert r.status == 400
        async with s.get(gw.base_url + "/chat/completions") as r:
            assert r.status == 405
        async with s.post(gw.base_url + "/no/such/path", json={}) as r:
            assert r.status == 404
    samples = await settled(gw.url, 3)
    assert val(samples, "gateway_requests_total", status_class="4xx") == 3
