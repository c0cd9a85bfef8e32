"""The shared state backend's one exception, importable without redis-py.

A gateway whose state stays in its own process (``state.backend: memory``, one worker) never imports
redis-py: its client pulls in ~10 MB of resident modules (OpenTelemetry, cryptography among them) and
~0.25 s of start-up. Features catch ``RedisUnavailable`` whatever their backend, so it lives here.
"""
from __future__ import annotations


class RedisUnavailable(Exception):
    """Redis is down, slow or cooling off: use the local fallback."""
