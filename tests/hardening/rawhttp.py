"""A tiny raw-socket HTTP/1.1 client: for requests no HTTP library will send (bad framing, trickles)."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return orjson.loads(self.body)


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    """One response: status line, headers, then a Content-Length body (or up to the close)."""
    head = await reader.readuntil(b"\r\n\r\n")
    while head.split(b" ", 2)[1].startswith(b"1"):  # 100 Continue and friends: the answer follows
        head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await reader.read()
    return RawResponse(status, headers, body)


async def send_raw(port: int, data: bytes | list[bytes], *, gap_s: float = 0.0, timeout_s: float = 10.0,
                   host: str = "127.0.0.1") -> RawResponse:
    """Send ``data`` (pieces with ``gap_s`` between them), return the first response."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        async with asyncio.timeout(timeout_s):
            pieces = [data] if isinstance(data, bytes) else data
            for i, piece in enumerate(pieces):
                if i and gap_s:
                    await asyncio.sleep(gap_s)
                try:
                    writer.write(piece)
                    await writer.drain()
                except ConnectionError:
                    break  # the server answered early and closed: read what it said
            return await read_response(reader)
    finally:
        writer.close()


def request(
    target: str,
    body: bytes | None = None,
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    version: str = "HTTP/1.1",
) -> bytes:
    """A well-formed request (unless the arguments say otherwise)."""
    head = {"Host": "gateway.test", "Content-Type": "application/json", **(headers or {})}
    if body is not None and not any(k.lower() in ("content-length", "transfer-encoding") for k in head):
        head["Content-Length"] = str(len(body))
    lines = [f"{method} {target} {version}"] + [f"{k}: {v}" for k, v in head.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
