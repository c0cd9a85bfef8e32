"""What a streamed answer costs the exact cache: at its store, at its first hit, in Redis and in memory.

In process, on the loop's side of the work only (no server): a stream as the fake provider sends it (a
role chunk, ``--tokens`` content chunks, the finish chunk, the usage chunk the usage layer asks for,
``[DONE]``) is handed to the cache the way ``policies.cache.fill`` did before issue 21 (assembled into the
canonical body at once: ``eager``) and the way it does now (kept raw, its finish reason read from its
bytes: ``raw``). Then the first hit of each mode against each entry, a fresh copy per round (the cost of
the *first* hit; later hits are memoised in both), and the Redis side: the encoded size, ``encode`` at the
store, ``decode`` plus what a replica's first hit adds, and what writing the assembled form back would
cost the first hit instead (``encode`` of the canonical entry; the ``SET`` itself is a deferred write).

    python -m bench.stream_store --tokens 20 --rounds 2000

Figures are µs per operation, the best of ``--repeat`` timings (timeit), so load moves them little. For
instruction counts, ``--op NAME --count K`` runs one operation K times and nothing else (one fresh entry
each): under ``valgrind --tool=callgrind``, the count with K less the count with 0, over K, is its cost:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        python -m bench.stream_store --op raw-store --count 1000
"""
from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable

from gateway.mock.chat import ChatPlan, chat_stream_events
from policies.cache.canonical import answer_from_sse, finish_reasons, stream_reasons
from policies.cache.entry import RAW_MAX_BYTES, CachedAnswer
from policies.cache.replay import render_sse

WORDS = ("The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".")


def stream(tokens: int) -> bytes:
    """The fake provider's stream with a usage chunk (``gateway.mock.chat.chat_stream_events``)."""
    plan = ChatPlan(id="chatcmpl-bench0123456789", created=1733300000, model="gpt-4o-mini",
                    pieces=tuple(WORDS[i % len(WORDS)] for i in range(tokens)), tool_calls=(),
                    finish_reason="stop", prompt_tokens=12, completion_tokens=tokens)
    return b"".join(event.frame for event in chat_stream_events(plan, include_usage=True))


def eager(data: bytes) -> tuple[CachedAnswer, list[str]]:
    """The store before: assembled, dumped (``Fill._assemble``)."""
    obj = answer_from_sse("chat", data)
    assert obj is not None
    return CachedAnswer.from_obj("chat", obj, 0.0), finish_reasons("chat", obj)


def raw(data: bytes) -> tuple[CachedAnswer, list[str]]:
    """The store now: the finish reason read from the bytes, the bytes kept."""
    reasons = stream_reasons(data)
    assert reasons is not None
    return CachedAnswer.from_stream("chat", data, reasons, 0.0), reasons


def best(fn: Callable[[], object], rounds: int, repeat: int) -> float:
    """µs per call, the best of ``repeat`` timings."""
    return min(timeit.repeat(fn, number=rounds, repeat=repeat)) / rounds * 1e6


def fresh(made: CachedAnswer) -> CachedAnswer:
    """A copy as stored, before any hit (nothing assembled or rendered)."""
    return CachedAnswer(operation=made.operation, body=made.body, created=made.created, usage=made.usage,
                        raw=made.raw, packed=made.packed, reasons=made.reasons)


def first_stream_hit(entry: CachedAnswer, include_usage: bool) -> bytes:
    assert entry.ready()
    return entry.sse(include_usage, render_sse)


def first_json_hit(entry: CachedAnswer) -> bytes:
    assert entry.ready()
    return entry.body


def report(tokens: int, rounds: int, repeat: int) -> None:
    data = stream(tokens)
    old, new = eager(data)[0], raw(data)[0]
    rows: list[tuple[str, float, float]] = [
        ("store (at every streamed miss)", best(lambda: eager(data), rounds, repeat),
         best(lambda: raw(data), rounds, repeat)),
        ("first stream hit, usage asked (the default)",
         best(lambda: first_stream_hit(fresh(old), True), rounds, repeat),
         best(lambda: first_stream_hit(fresh(new), True), rounds, repeat)),
        ("first stream hit, no usage", best(lambda: first_stream_hit(fresh(old), False), rounds, repeat),
         best(lambda: first_stream_hit(fresh(new), False), rounds, repeat)),
        ("first JSON hit", best(lambda: first_json_hit(fresh(old)), rounds, repeat),
         best(lambda: first_json_hit(fresh(new)), rounds, repeat)),
        ("Redis: encode at the store", best(lambda: fresh(old).encode(), rounds, repeat),
         best(lambda: fresh(new).encode(), rounds, repeat)),
    ]
    old_data, new_data = fresh(old).encode(), fresh(new).encode()
    rows.append(("Redis: a replica's first hit (decode + assemble)",
                 best(lambda: CachedAnswer.decode(old_data), rounds, repeat),
                 best(lambda: first_json_hit(CachedAnswer.decode(new_data) or new), rounds, repeat)))
    assembled = fresh(new)
    assert assembled.ready()
    back = assembled.encode()
    rows.append(("Redis: write-back at the first hit (encode the assembled form)", 0.0,
                 best(lambda: assembled.encode(), rounds, repeat)))
    rows.append(("Redis: a replica's first hit after a write-back (decode)", 0.0,
                 best(lambda: CachedAnswer.decode(back), rounds, repeat)))
    print(f"{tokens}-token stream: {len(data)} bytes; canonical body {len(old.body)} bytes")
    if len(data) > RAW_MAX_BYTES:
        print(f"(over RAW_MAX_BYTES = {RAW_MAX_BYTES}: the fill assembles it; 'raw': what it'd cost)")
    print(f"{'µs per operation':66s} {'eager':>8s} {'raw':>8s}")
    for name, before, after in rows:
        print(f"{name:66s} {before:8.2f} {after:8.2f}")
    hit_old, hit_new = fresh(old), fresh(new)
    first_stream_hit(hit_old, True)
    first_stream_hit(hit_new, True)
    print(f"{'entry bytes counted, never hit':66s} {fresh(old).size:8d} {fresh(new).size:8d}")
    print(f"{'entry bytes counted, after a stream hit':66s} {hit_old.size:8d} {hit_new.size:8d}")
    print(f"{'Redis value bytes':66s} {len(old_data):8d} {len(new_data):8d}")


def ops(data: bytes) -> dict[str, Callable[[], object]]:
    """The operations ``--op`` runs: each store, and each first hit on a fresh copy of its entry."""
    old, new = eager(data)[0], raw(data)[0]
    return {"eager-store": lambda: eager(data), "raw-store": lambda: raw(data),
            "eager-first-stream-hit": lambda: first_stream_hit(fresh(old), True),
            "raw-first-stream-hit": lambda: first_stream_hit(fresh(new), True),
            "eager-first-json-hit": lambda: first_json_hit(fresh(old)),
            "raw-first-json-hit": lambda: first_json_hit(fresh(new))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="20", help="content chunks per stream, comma-separated")
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--op", help="run only this operation --count times (for valgrind)")
    parser.add_argument("--count", type=int, default=0)
    args = parser.parse_args()
    if args.op:
        run = ops(stream(int(args.tokens)))[args.op]
        for _ in range(args.count):
            run()
        return
    for tokens in args.tokens.split(","):
        report(int(tokens), args.rounds, args.repeat)
        print()


if __name__ == "__main__":
    main()
