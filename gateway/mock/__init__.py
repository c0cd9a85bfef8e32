"""Fake OpenAI-compatible provider used by tests, benchmarks and the demo.

Public API: `MockConfig`, `build_mock_app`, `start_mock` / `MockServer`,
`run_mock`, plus the recording types (`Attempt`, `Recorder`) and fault parsing.
"""

from __future__ import annotations

from .app import STATE_KEY, MockServer, MockState, build_mock_app, run_mock, start_mock
from .config import MockConfig
from .faults import FaultSpec, parse_fault_spec
from .quota import QuotaLimits
from .recorder import Attempt, Recorder

__all__ = [
    "STATE_KEY",
    "Attempt",
    "FaultSpec",
    "MockConfig",
    "MockServer",
    "MockState",
    "QuotaLimits",
    "Recorder",
    "build_mock_app",
    "parse_fault_spec",
    "run_mock",
    "start_mock",
]
