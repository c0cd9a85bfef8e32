"""CPU per SSE chunk of the stream inspector: ``python -m bench.sse_cost [--baseline REV]``.

Feeds a typical compact OpenAI content chunk, a spaced-JSON (``json.dumps`` default) chunk and a
CRLF-framed chunk to ``StreamInspector.feed`` and prints microseconds per chunk (best of 5). With
``--baseline REV`` the ``gateway/sse.py`` of that git revision is measured alternately in the same
process (CPU here is shared, so only same-run figures compare).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path
from types import ModuleType
from typing import Any

_OBJ = {
    "id": "chatcmpl-9x8y7z",
    "object": "chat.completion.chunk",
    "created": 1733300000,
    "model": "gpt-4o-mini",
    "system_fingerprint": "fp_0ba0d124f1",
    "choices": [{"index": 0, "delta": {"content": " world"}, "logprobs": None, "finish_reason": None}],
}
COMPACT = b"data: " + json.dumps(_OBJ, separators=(",", ":")).encode() + b"\n\n"
SPACED = b"data: " + json.dumps(_OBJ).encode() + b"\n\n"
CRLF = COMPACT.replace(b"\n", b"\r\n")
CASES = (("compact", COMPACT), ("spaced", SPACED), ("crlf", CRLF))


def per_chunk_us(module: Any, chunk: bytes, number: int = 100_000) -> tuple[float, int]:
    insp = module.StreamInspector(clock=lambda: 1.0)
    insp.feed(chunk)  # the first chunk learns the model
    best = min(timeit.repeat(lambda: insp.feed(chunk), number=number, repeat=5))
    probe = module.StreamInspector(clock=lambda: 1.0)
    for _ in range(3):
        probe.feed(chunk)
    return best / number * 1e6, probe.content_chunks


def load_revision(rev: str) -> ModuleType:
    source = subprocess.run(["git", "show", f"{rev}:gateway/sse.py"], check=True, capture_output=True).stdout
    path = Path(tempfile.mkdtemp()) / "sse_baseline.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("sse_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sse_baseline"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", help="git revision whose gateway/sse.py to compare with")
    args = parser.parse_args()
    from gateway import sse

    modules: list[tuple[str, Any]] = [("current", sse)]
    if args.baseline:
        modules.insert(0, (args.baseline, load_revision(args.baseline)))
    for name, chunk in CASES:
        for label, module in modules:
            cost, tokens = per_chunk_us(module, chunk)
            print(f"{name:8s} {label:10s} {cost:8.3f} us/chunk  tokens_seen={tokens}/3")


if __name__ == "__main__":
    main()
