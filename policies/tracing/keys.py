"""The request state the tracing layer and the tracer share, importable without OpenTelemetry.

The registry imports the tracing layer whether tracing is on or not; the OpenTelemetry SDK (~1.4 MB
resident, ~75 modules) is imported only when tracing is on (``policies.tracing.tracer``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.exchange import StateKey

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from gateway.exchange import Attempt

# One CLIENT span per upstream attempt, with the Attempt the terminal recorded (None: never sent).
ATTEMPTS_KEY: StateKey[list[tuple[Span, Attempt | None]]] = StateKey("tracing.attempts")
