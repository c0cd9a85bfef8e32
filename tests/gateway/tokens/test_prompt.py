"""Tests for gateway.tokens.prompt: large prompts are counted in the work pool, small ones inline."""
from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.appstate import AppState, Runtime
from gateway.auth import Authenticator
from gateway.config_model import AuthConfig, Config
from gateway.exchange import Exchange, Usage
from gateway.routing import Router
from gateway.telemetry.metrics import Metrics
from gateway.tokens.bounds import upper_bound
from gateway.tokens.pool import WorkPool
from gateway.tokens.prompt import count_prompt, loading_for_estimate, prompt_tokens
from tests.gateway.tokens.test_pool import outcomes


def state(budget_s: float = 30.0, counts_prompts: bool = True) -> AppState:
    config = Config()
    runtime = Runtime(config=config, router=Router(config.routes), auth=Authenticator(AuthConfig()),
                      chain=None, counts_prompts=counts_prompts)  # type: ignore[arg-type]
    metrics = Metrics()
    return AppState(runtime=runtime, metrics=metrics, work=WorkPool(budget_s=budget_s, metrics=metrics))


def chat(text: str) -> dict[str, object]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}


async def test_a_large_prompt_is_counted_in_the_pool(make_exchange: Callable[..., Exchange]) -> None:
    st = state()
    # the test's own heavy work off the loop too (the watchdog fails a test that blocks it > 100 ms: the
    # encoding's load and the expected count of 48 KB took that on a loaded machine)
    await asyncio.to_thread(st.tokenizer.preload, ["o200k_base"])
    ex = make_exchange(chat("hello world " * 4000))
    await count_prompt(st, ex)
    expected = await asyncio.to_thread(st.tokenizer.count_request, "chat", ex.body or {})
    assert ex.record.prompt_tokens == expected
    small = make_exchange(chat("hello"))
    await count_prompt(st, small)  # control: a small prompt stays lazy, inline
    assert small.record.prompt_tokens is None and prompt_tokens(st, small) > 0
    assert outcomes(st.metrics, "prompt_tokens") == {"done": 1.0}
    st.work.close()


async def test_the_first_count_loads_the_encoding_off_the_loop(
        make_exchange: Callable[..., Exchange]) -> None:
    st = state()
    ex = make_exchange(chat("hello"))
    await count_prompt(st, ex)
    assert ex.record.prompt_tokens is None  # a small prompt: counted inline later, the encoding is ready
    assert st.tokenizer.is_loaded("o200k_base")
    st.work.close()


async def test_without_a_layer_that_counts_every_prompt_no_encoding_is_loaded(
        make_exchange: Callable[..., Exchange]) -> None:
    st = state(counts_prompts=False)
    small = make_exchange(chat("hello"))
    await count_prompt(st, small)
    assert small.record.prompt_tokens is None and not st.tokenizer.is_loaded("o200k_base")
    large = make_exchange(chat("hello world " * 4000))  # nor is a large one: nobody reads the figure
    await count_prompt(st, large)
    assert large.record.prompt_tokens is None and not st.tokenizer.is_loaded("o200k_base")
    await count_prompt(st, large, needed=True)  # control: a caller that reads it gets it, from the pool
    assert large.record.prompt_tokens == st.tokenizer.count_request("chat", large.body or {})
    assert outcomes(st.metrics, "prompt_tokens") == {"done": 1.0}
    st.work.close()


async def test_a_panic_falls_back_to_the_byte_bound(make_exchange: Callable[..., Exchange]) -> None:
    st = state()
    ex = make_exchange(chat(" " * 1_300_000))
    await count_prompt(st, ex)
    assert ex.record.prompt_tokens == upper_bound("chat", ex.body or {}) == 1_300_010  # never an undercount
    assert outcomes(st.metrics, "prompt_tokens") == {"failed": 1.0}
    st.work.close()


async def test_an_answer_without_usage_waits_for_its_encoding_before_it_is_settled(
        make_exchange: Callable[..., Exchange]) -> None:
    st = state(counts_prompts=False)
    reported = make_exchange(chat("hello"))
    reported.record.source, reported.record.status = "upstream", 200
    reported.record.reported_usage = Usage(prompt=3, completion=2)
    assert loading_for_estimate(st, reported) is None  # control: the provider's figures need no encoding
    ex = make_exchange(chat("hello"))
    ex.record.source, ex.record.status = "upstream", 200
    loading = loading_for_estimate(st, ex)
    assert loading is not None
    await loading
    assert st.tokenizer.is_loaded("o200k_base") and loading_for_estimate(st, ex) is None
    st.work.close()


async def test_a_large_prompt_without_usage_is_counted_in_the_pool_before_it_is_settled(
        make_exchange: Callable[..., Exchange]) -> None:
    st = state(counts_prompts=False)
    st.tokenizer.preload(["o200k_base"])
    small = make_exchange(chat("hello"))
    small.record.source, small.record.status = "upstream", 200
    assert loading_for_estimate(st, small) is None  # control: loaded encoding, small prompt: settle now
    ex = make_exchange(chat("hello world " * 4000))
    ex.record.source, ex.record.status = "upstream", 200
    counting = loading_for_estimate(st, ex)
    assert counting is not None and ex.record.prompt_tokens is None
    await counting
    assert ex.record.prompt_tokens == st.tokenizer.count_request("chat", ex.body or {})
    assert outcomes(st.metrics, "prompt_tokens") == {"done": 1.0} and loading_for_estimate(st, ex) is None
    st.work.close()
