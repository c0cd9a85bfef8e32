"""What the raw client raises; ``gateway/upstream.py`` maps them to ``UpstreamFailure`` kinds."""
from __future__ import annotations

import os
import socket
import ssl


class ConnectTimeout(Exception):
    """No connection within ``connect_s``."""


class ConnectFailed(Exception):
    """Refused, unreachable, name resolution or TLS handshake failed. ``reason`` never names an address."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(type(os_error).__name__)
        self.os_error = os_error

    @property
    def reason(self) -> str:
        err = self.os_error
        if isinstance(err, socket.gaierror):
            return "name resolution failed"
        if isinstance(err, ssl.SSLError):
            return "tls handshake failed"
        code = err.errno
        return os.strerror(code).lower() if isinstance(code, int) and code > 0 else "connect failed"


class MalformedResponse(ConnectionError):
    """The upstream's bytes are not an HTTP/1.1 response (or break their own framing)."""
