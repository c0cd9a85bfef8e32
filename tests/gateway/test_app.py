"""gateway.app: encodings are loaded before serving only when a built layer counts every prompt."""
from __future__ import annotations

from gateway.appstate import APP_STATE
from gateway.mock import MockServer
from tests.support.servers import gateway_config, start_gateway


async def _loaded(mock_upstream: MockServer, **overrides: object) -> bool:
    gw = await start_gateway(gateway_config(mock_upstream.url, **overrides))
    try:
        return gw.app[APP_STATE].tokenizer.is_loaded("o200k_base")
    finally:
        await gw.close()


async def test_a_prompt_counting_layer_gets_its_encoding_before_the_first_request(
        mock_upstream: MockServer) -> None:
    limits = {"mock": {"base_url": mock_upstream.url, "rate_limit": {"max_concurrency": 4}}}
    assert await _loaded(mock_upstream, upstreams=limits)  # ready means counted without a 0.3 s load


async def test_a_config_that_never_counts_prompts_loads_nothing(mock_upstream: MockServer) -> None:
    assert not await _loaded(mock_upstream)  # the default config: idle memory stays small (issue 21)
