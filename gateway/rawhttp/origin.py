"""Where an upstream lives: scheme, host, port, base path and the Host header, parsed once from base_url."""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Origin:
    host: str
    port: int
    tls: bool
    prefix: str  # the base URL's path without its trailing slash ("" or "/v1")
    host_header: str

    @classmethod
    def from_url(cls, base_url: str) -> Origin:
        parts = urlsplit(base_url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"needs an http:// or https:// URL with a host, got {base_url!r}")
        host = parts.hostname
        port = parts.port or _DEFAULT_PORTS[parts.scheme]  # ValueError: a port out of range or not a number
        shown = f"[{host}]" if ":" in host else host
        host_header = shown if port == _DEFAULT_PORTS[parts.scheme] else f"{shown}:{port}"
        return cls(host=host, port=port, tls=parts.scheme == "https", prefix=parts.path.rstrip("/"),
                   host_header=host_header)

    def ssl_context(self) -> ssl.SSLContext | None:
        """Certificate and host name checked, as aiohttp does by default (``SSL_CERT_FILE`` is honoured)."""
        return ssl.create_default_context() if self.tls else None
