"""The ``tracing`` block."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True, slots=True, kw_only=True)
class TracingConfig:
    enabled: bool = False
    endpoint: str | None = None  # OTLP/HTTP traces endpoint; else OTEL_EXPORTER_OTLP_* variables
    headers: dict[str, str] = field(default_factory=dict)
    service_name: str = "llm-gateway"
    sample_ratio: float = 1.0
    capture_content: bool = False
    exporter: Literal["otlp", "console", "memory"] = "otlp"  # memory: kept in-process (tests, debugging)
