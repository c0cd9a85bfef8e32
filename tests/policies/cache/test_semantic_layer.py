"""The semantic cache policy with a scripted embedder: threshold, guards, namespaces, failures."""
from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from gateway.tokens.pool import WorkPool
from policies.cache.embedder import EmbedderUnavailable, MemoEmbedder
from policies.cache.runtime import COMPONENT as CACHE_COMPONENT
from policies.cache.semantic_key import semantic_namespace, split_question
from policies.cache.semantic_layer import factory
from tests.policies.cache.support import ANSWER, Upstream, drain, exchange, make_state

VECTORS = {"how do i undo a commit": (1.0, 0.0), "how can i undo a commit": (0.99, 0.14),
           "how do i not undo a commit": (0.99, 0.1), "something else": (0.0, 1.0)}


class Scripted:
    name = "scripted"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    async def embed(self, texts: list[str]) -> Any:
        if self.fail:
            raise EmbedderUnavailable("down")
        return np.array([VECTORS[t] for t in texts], dtype=np.float32) / np.linalg.norm(
            np.array([VECTORS[t] for t in texts], dtype=np.float32), axis=1, keepdims=True)

    async def close(self) -> None:
        return None


def chat(text: str, system: str = "be brief") -> dict[str, Any]:
    return {"model": "gpt-4o",
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}]}


async def policy_with(embedder: Scripted, **cache: Any):  # type: ignore[no-untyped-def]
    st = make_state(cache={"semantic": {"enabled": True, **cache}})
    policy = await factory(st, st.config)
    assert policy is not None
    parts = st.components[CACHE_COMPONENT].semantic
    assert parts is not None
    parts.embedder = MemoEmbedder(embedder)
    return st, policy


async def test_threshold_guards_and_namespace() -> None:
    """A close paraphrase hits; a negation above the threshold is vetoed; another system prompt misses."""
    st, policy = await policy_with(Scripted())
    up = Upstream()
    await drain(await policy(exchange(st, chat("how do i undo a commit")), up))
    hit = exchange(st, chat("how can i undo a commit"))
    resp = await policy(hit, up)
    assert hit.record.cache_result == "semantic-hit" and orjson.loads(await drain(resp)) == ANSWER
    for ex in (exchange(st, chat("how do i not undo a commit")),
               exchange(st, chat("how can i undo a commit", "x"))):
        await drain(await policy(ex, up))
        assert ex.record.cache_result == "miss"
    assert up.calls == 3


async def test_threshold_is_config_only() -> None:
    """A stricter configured threshold turns the paraphrase into a miss."""
    st, policy = await policy_with(Scripted(), threshold=0.999)
    up = Upstream()
    for text in ("how do i undo a commit", "how can i undo a commit"):
        await drain(await policy(exchange(st, chat(text), headers={"x-gateway-semantic-threshold": "0"}), up))
    assert up.calls == 2


async def test_embedder_failure_is_a_miss() -> None:
    """When the embedder cannot run the request is still answered (from upstream) and counted."""
    st, policy = await policy_with(Scripted(fail=True))
    up = Upstream()
    assert orjson.loads(await drain(await policy(exchange(st, chat("something else")), up))) == ANSWER
    value = st.metrics.registry.get_sample_value("gateway_cache_requests_total",
                                                 {"kind": "semantic", "result": "error"})
    assert value == 1


async def test_disabled_by_default() -> None:
    """No semantic block enabled: the factory builds nothing."""
    st = make_state()
    assert await factory(st, st.config) is None


class Constant(Scripted):
    async def embed(self, texts: list[str]) -> Any:
        return np.array([[1.0, 0.0]] * len(texts), dtype=np.float32)


async def test_a_long_question_hits_only_itself() -> None:
    """Past 256 Ki characters the question is hashed once per request, in a thread: the very same question
    hits; the same head with another tail (the same vector) is a miss."""
    st, policy = await policy_with(Constant())
    up = Upstream()
    long = "why is the invoice late " * 20_000  # 480,000 characters
    await drain(await policy(exchange(st, chat(long)), up))
    same, other = exchange(st, chat(long)), exchange(st, chat(long + "?"))
    for ex in (same, other):
        await drain(await policy(ex, up))
    assert same.record.cache_result == "semantic-hit" and other.record.cache_result == "miss"
    assert up.calls == 2


class Counting(Constant):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    async def embed(self, texts: list[str]) -> Any:
        self.seen.extend(texts)
        return await super().embed(texts)


async def test_a_long_question_is_not_run_through_the_model() -> None:
    """Past TEXT_CHARS only the very same question can hit, so its vector is drawn from its digest:
    the model runs for the short question (and learns the vectors' length), never for the long ones."""
    embedder = Counting()
    st, policy = await policy_with(embedder)
    up = Upstream()
    long = "where is my refund for order " * 1_000  # 29,000 characters: past TEXT_CHARS (4,096)
    first = exchange(st, chat(long))
    await drain(await policy(first, up))
    assert embedder.seen == [long[:4096]]  # control: before any vector the model runs (length unknown)
    await drain(await policy(exchange(st, chat("how do i undo a commit")), up))
    results = []
    for text in (long + "?", long, long + "!", long + "?"):
        ex = exchange(st, chat(text))
        await drain(await policy(ex, up))
        results.append(ex.record.cache_result)
    assert results == ["miss", "semantic-hit", "miss", "semantic-hit"]  # the very same question only
    assert len(embedder.seen) == 2  # the model ran for the first long question and the short one
    skipped = st.metrics.registry.get_sample_value(
        "gateway_policy_decisions_total", {"policy": "semantic_cache", "decision": "embed_skipped_long"})
    assert skipped == 4
    assert up.calls == 4


async def test_a_blank_question_is_skipped_without_a_copy() -> None:
    """Only whitespace (any Unicode space): no question, skipped; a question with trailing spaces is one."""
    embedder = Counting()
    st, policy = await policy_with(embedder)
    up = Upstream()
    for text in (" \n\t\u3000 ", "", "how do i undo a commit \n"):
        await drain(await policy(exchange(st, chat(text)), up))
    skips = st.metrics.registry.get_sample_value("gateway_policy_decisions_total",
                                                 {"policy": "semantic_cache", "decision": "skip"})
    assert skips == 2 and embedder.seen == ["how do i undo a commit \n"]


def test_the_namespace_hashes_each_earlier_turn_once_and_tells_them_apart() -> None:
    """Turns are dumped one by one: the same conversation gives the same namespace; moving text between
    turns, changing one, or adding an empty one gives another."""
    st = make_state(cache={"semantic": {"enabled": True}})

    def namespace(*turns: str) -> str:
        body = chat("the question")
        body["messages"] = [{"role": "user", "content": t} for t in turns] + body["messages"][-1:]
        split = split_question("chat", body, skip_tool_turns=True)
        assert split is not None
        return semantic_namespace(exchange(st, body), "v1", split[1])

    base = namespace("ab", "c")
    assert namespace("ab", "c") == base
    others = {namespace("a", "bc"), namespace("ab", "d"), namespace("ab", "c", ""), namespace("abc")}
    assert len(others) == 4 and base not in others
    assert base.startswith(exchange(st, chat("x")).request.namespace + ":")  # the tenant's hard prefix


async def test_a_large_conversation_is_namespaced_off_the_loop() -> None:
    """A 2 MB conversation before a short question: its namespace is made in the work pool (the same
    value: the repeat hits); a small one, and a large body that is all question, on the loop; with the
    tenant's queue full, the request skips the cache."""
    st, policy = await policy_with(Counting())
    st.work = WorkPool(threads=1, metrics=st.metrics)
    try:
        up = Upstream()
        big = chat("how do i undo a commit")
        big["messages"][1:1] = [{"role": "user", "content": "earlier turn " * 20_000}] * 8
        results = []
        for body in (big, big, chat("how do i undo a commit"), chat("why " * 100_000)):
            ex = exchange(st, body)
            await drain(await policy(ex, up))
            results.append(ex.record.cache_result)
        assert results == ["miss", "semantic-hit", "miss", "miss"] and up.calls == 3

        def work(outcome: str) -> float | None:
            return st.metrics.registry.get_sample_value(
                "gateway_work_total", {"kind": "semantic_namespace", "outcome": outcome})

        assert work("done") == 2  # the two large conversations only
        st.work.max_queued = 0
        busy = exchange(st, big)
        await drain(await policy(busy, up))
        assert work("queue_full") == 1 and up.calls == 4
        skipped = st.metrics.registry.get_sample_value(
            "gateway_policy_decisions_total", {"policy": "semantic_cache", "decision": "skip_busy"})
        assert skipped == 1
    finally:
        st.work.close()
