"""Deterministic prompt compression: fit a chat request into its token budget.

Pure functions over the messages list (no I/O, no state between calls), used by
``policies/compression.py``. See ``engine`` for the order of the steps and
``prune`` for how the provider's prompt cache is kept warm.
"""
from __future__ import annotations

from gateway.compress.engine import STEPS, CompressionBug, Outcome, Plan, compress
from gateway.compress.meter import Meter, tokenizer_meter
from gateway.compress.turns import layout, tool_call_problems

__all__ = ["STEPS", "CompressionBug", "Meter", "Outcome", "Plan", "compress", "layout", "tokenizer_meter", "tool_call_problems"]
