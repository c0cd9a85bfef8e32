"""The ``tracing`` block."""
from __future__ import annotations

from collections.abc import Mapping
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


def tracing_enabled(cfg: TracingConfig, env: Mapping[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return cfg.enabled or env.get("OTEL_TRACES_EXPORTER", "").strip().lower() in ("otlp", "console")
