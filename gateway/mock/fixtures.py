"""Replay a recorded-style provider answer byte for byte (``x-mock-fixture: <provider>/<case>``).

A fixture file (``tests/data/providers/<provider>.json`` by default; ``MockConfig.fixtures_dir``
elsewhere) holds a provider's answers as they appear on the wire: ``status``, ``content_type``,
``body`` (the exact text, any line ends) and optional ``splits``: byte offsets at which the body is
cut into separately written chunks (events and UTF-8 sequences may be cut anywhere). A new provider
is one file; nothing here knows any provider.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from .context import RequestContext
from .errors import MockHTTPError

HEADER = "x-mock-fixture"
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "providers"
_NAME = re.compile(r"^[a-z0-9_-]{1,64}/[a-z0-9_-]{1,64}$")


def load_case(directory: Path, name: str) -> dict[str, Any]:
    """The case ``provider/case`` of ``directory``; a 400 for a name that is not one."""
    if not _NAME.match(name):
        raise MockHTTPError(400, f"invalid {HEADER} header: expected provider/case")
    provider, case = name.split("/")
    path = directory / f"{provider}.json"
    if not path.is_file():
        raise MockHTTPError(400, f"no fixture file for provider {provider!r}")
    cases = orjson.loads(path.read_bytes()).get("cases", {})
    if case not in cases:
        raise MockHTTPError(400, f"no case {case!r} for provider {provider!r}")
    found: dict[str, Any] = cases[case]
    return found


def chunks_of(case: dict[str, Any]) -> list[bytes]:
    """The body as written: cut at ``splits`` (byte offsets), else one chunk per SSE event."""
    body = str(case["body"]).encode()
    splits = case.get("splits")
    if splits is None:
        return _per_event(body) if case.get("content_type", "").startswith("text/event-stream") else [body]
    edges = [0, *sorted(int(s) for s in splits), len(body)]
    return [body[a:b] for a, b in zip(edges, edges[1:]) if b > a]


def _per_event(body: bytes) -> list[bytes]:
    parts = re.split(rb"(?<=\r\n\r\n)|(?<=\n\n)|(?<=\r\r)(?!\n)", body)
    return [part for part in parts if part]


async def replay_fixture(ctx: RequestContext, directory: Path, name: str) -> web.StreamResponse:
    case = load_case(directory, name)
    resp = web.StreamResponse(status=int(case.get("status", 200)))
    resp.content_type = case.get("content_type", "application/json").split(";")[0]
    for key, value in (case.get("headers") or {}).items():
        resp.headers[key] = value
    await resp.prepare(ctx.request)
    for chunk in chunks_of(case):
        await resp.write(chunk)
    await resp.write_eof()
    return resp
