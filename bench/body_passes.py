"""Loop time per MB of each pass a large chat body goes through (issue 15), in this process.

For five bodies (3.5 MB of whitespace messages, escaped to ~5 MB of JSON; one 4 MB question of words;
``bench.heavy_prompts``' 500 KB conversation; a 500 KB agent conversation of tool calls and tool results
whose JSON text is escaped, non-ASCII included; 100k embeddings inputs) prints,
per step, the best-of-5 CPU milliseconds per MB, and the longest stall of an event loop
ticking while the step runs inline or in a thread. A step that holds the GIL (orjson's parse and
canonical dump) stalls the loop as long in a thread as inline; hashing releases it. The process takes
the serving process's GIL switch interval and malloc thresholds first (``gateway/switching.py``,
``gateway/memory.py``): with CPython's default 5 ms interval every threaded step would show ~5 ms.

Run: ``python -m bench.body_passes``.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import orjson

from bench.heavy_prompts import heavy_body
from gateway.decode import decode
from gateway.memory import pin_malloc_thresholds
from gateway.switching import share_the_gil
from policies.cache.guards import question_digest
from policies.cache.keys import answer_fields, make_key


def chat(contents: list[str]) -> bytes:
    return orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": c} for c in contents]})


def agent_conversation(target_bytes: int = 500_000) -> bytes:
    """Tool calls and their JSON results (escaped quotes, ``\\n``, ``\\u`` escapes), as agents send them."""
    rows = json.dumps({"rows": [{"id": i, "name": "café ☕ item", "note": "line1\nline2"}
                                for i in range(20)]})
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are an agent.\nUse tools."}]
    while len(orjson.dumps(messages)) < target_bytes:
        call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"a": 1}'}}
        messages.append({"role": "assistant", "content": 'Looking at "rows":\n- ok', "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": "call_1", "content": rows})
    return orjson.dumps({"model": "gpt-4o", "messages": messages, "stream": True})


def best_ms(fn: Callable[[], object], runs: int = 5) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best * 1000


async def stall_ms(fn: Callable[[], object], thread: bool) -> float:
    """The longest gap between two loop iterations while ``fn`` runs 5 times."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.01)
    for _ in range(5):
        if thread:
            await asyncio.to_thread(fn)
        else:
            fn()
            await asyncio.sleep(0)
    done.set()
    await ticker
    return max(gaps) * 1000


def steps(raw: bytes, operation: str = "chat") -> dict[str, Callable[[], object]]:
    if operation != "chat":
        return {"decode (blobs+parse+validate)": lambda: decode(raw, operation)}
    body, _ = decode(raw, "chat")
    question = body["messages"][-1]["content"]
    return {
        "decode (blobs+parse+validate)": lambda: decode(raw, "chat"),
        "exact cache key": lambda: make_key(namespace="n", upstream="u", model="m", operation="chat",
                                            config_version="v", fields=answer_fields(body)),
        "semantic question digest": lambda: question_digest(question),
        "re-serialise (orjson.dumps)": lambda: orjson.dumps(body),
        "sha256(raw)": lambda: hashlib.sha256(raw).digest(),
    }


async def main() -> None:
    pin_malloc_thresholds()
    share_the_gil()
    words = ("invoice order refund status customer shipping " * 90_000)[:4_000_000]
    inputs = orjson.dumps({"model": "text-embedding-3-small", "input": [f"item {i}" for i in range(100_000)]})
    bodies = {"whitespace 3.5MB": (chat([" \n" * 50_000] * 35), "chat"),
              "words 4MB": (chat(["q: " + words]), "chat"), "heavy_prompts 500KB": (heavy_body(0), "chat"),
              "agent tool calls 500KB": (agent_conversation(), "chat"),
              "embeddings 100k inputs": (inputs, "embeddings")}
    for name, (raw, operation) in bodies.items():
        mb = len(raw) / 2**20
        print(f"{name} ({mb:.2f} MB of JSON)")
        for step, fn in steps(raw, operation).items():
            inline, threaded = await stall_ms(fn, False), await stall_ms(fn, True)
            print(f"  {step:32} {best_ms(fn) / mb:6.2f} ms/MB   loop stall inline {inline:6.1f} ms,"
                  f" in a thread {threaded:6.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
