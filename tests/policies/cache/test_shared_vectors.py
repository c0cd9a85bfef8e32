"""The shared semantic index on a real Redis 8 (vector sets): one replica's entry found by another,
never across tenants, expired answers removed, and an older Redis leaving each replica its own index."""
from __future__ import annotations

import secrets
import time

import numpy as np

from gateway.config_model import StateConfig
from gateway.state.redis_client import GuardedRedis
from policies.cache.entry import CachedAnswer
from policies.cache.guards import question_digest
from policies.cache.shared_vectors import SharedVectors
from tests.support.servers import RedisServer


def unit(*v: float) -> np.ndarray:
    a = np.array(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def replica(url: str, prefix: str) -> SharedVectors:
    backend = GuardedRedis.from_config(StateConfig(backend="redis", redis_url=url, timeout_ms=5000),
                                       time.monotonic)
    return SharedVectors(backend, prefix, time.time)


def answer(text: str) -> CachedAnswer:
    return CachedAnswer(operation="chat", body=b'{"choices":[]}', created=time.time(), text=text)


async def test_an_entry_from_one_replica_is_found_by_another_in_its_tenant_only(
        redis8_server: RedisServer) -> None:
    prefix = f"v{secrets.token_hex(3)}:"
    a, b = replica(redis8_server.url, prefix), replica(redis8_server.url, prefix)
    digest = "ab" * 32  # the same exact namespace digest under two tenants
    a.add(f"t:team-a:{digest}", unit(1, 0, 0), answer(""), "undo my commit", 30)  # the text: a parameter
    await a.flush()
    found = await b.candidates(f"t:team-a:{digest}", unit(1, 0.1, 0))
    assert [item.text for _, item in found] == ["undo my commit"]  # positive control: B sees A's entry
    assert abs(found[0][0] - float(unit(1, 0, 0) @ unit(1, 0.1, 0))) < 1e-3  # cosine, as the local index
    assert await b.candidates(f"t:team-b:{digest}", unit(1, 0.1, 0)) == []  # another tenant: nothing
    vkey_a, _ = b.keys(f"t:team-a:{digest}")
    vkey_b, _ = b.keys(f"t:team-b:{digest}")
    assert vkey_a != vkey_b and "team-a" in vkey_a  # a separate vector set per tenant namespace


async def test_an_expired_answer_is_dropped_from_the_set(redis8_server: RedisServer) -> None:
    prefix = f"v{secrets.token_hex(3)}:"
    a = replica(redis8_server.url, prefix)
    ns = f"t:team-a:{'cd' * 32}"
    a.add(ns, unit(0, 1, 0), answer("short lived"), "short lived", 30)
    a.add(ns, unit(0, 1, 0.1), answer("kept"), "kept", 30)
    await a.flush()
    vkey, akey = a.keys(ns)
    for name in await a.backend.client.keys(akey + "*"):
        stored = CachedAnswer.decode(await a.backend.client.get(name))
        if stored is not None and stored.text == "short lived":
            await a.backend.client.delete(name)  # as if its TTL ran out
    assert [i.text for _, i in await a.candidates(ns, unit(0, 1, 0))] == ["kept"]
    await a.flush()
    assert await a.backend.client.execute_command("VCARD", vkey) == 1


async def test_redis_without_vector_sets_leaves_each_replica_its_own(redis_server: RedisServer) -> None:
    a = replica(redis_server.url, f"v{secrets.token_hex(3)}:")  # Redis 6: no VADD/VSIM
    a.add("t:team-a:" + "ef" * 32, unit(1, 0, 0), answer("q"), "q", 30)
    await a.flush()
    assert a.available is False
    assert await a.candidates("t:team-a:" + "ef" * 32, unit(1, 0, 0)) == []


async def test_a_long_question_is_kept_cut_and_must_match_whole(redis8_server: RedisServer) -> None:
    """As the local index: 4 KiB of a long question kept for the guards, plus its digest."""
    a = replica(redis8_server.url, f"v{secrets.token_hex(3)}:")
    ns, question = f"t:team-a:{'aa' * 32}", "why " * 5000
    a.add(ns, unit(1, 0, 0), answer(""), question, 30)
    await a.flush()
    (_, item), = await a.candidates(ns, unit(1, 0, 0))
    assert len(item.text) == 4096 and item.digest == question_digest(question)
    assert question_digest(question + "?") != item.digest  # the layer's check: the very same question
