"""Start-up checks of the compression and budgets blocks."""
from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config
from policies.compression.budgets_validate import problems as budget_problems
from policies.compression.validate import problems as compression_problems

UPSTREAM = {"upstreams": {"u": {"base_url": "http://127.0.0.1:1"}}}


def test_defaults_are_valid() -> None:
    """The documented defaults pass."""
    cfg = parse_config({**UPSTREAM}, {})
    assert compression_problems(cfg) == [] and budget_problems(cfg) == []


def test_bad_values_are_reported_with_their_path() -> None:
    """Each bad value gives one dotted-path line, route blocks included, and check-config reports them."""
    raw = {
        **UPSTREAM,
        "compression": {"target": 1.5, "keep_last_turns": 0, "tool_output_max_tokens": 10},
        "budgets": {"max_tokens_cap": 0, "classes": [{"match": {}, "max_tokens": 5},
                                                     {"match": {"regex": "("}, "max_tokens": 0}]},
        "routes": [{"match": {"model": "*"}, "upstream": "u", "compression": {"min_saving_tokens": -1}}],
    }
    with pytest.raises(ConfigError) as err:
        parse_config(raw, {})
    found = err.value.problems
    assert any(p.startswith("compression.target:") for p in found)
    assert any(p.startswith("compression.keep_last_turns:") for p in found)
    assert any(p.startswith("compression.tool_output_max_tokens:") for p in found)
    assert any(p.startswith("routes[0].compression.min_saving_tokens:") for p in found)
    assert any(p.startswith("routes[0].compression.target:") for p in found)  # merged over the global block
    assert any(p.startswith("budgets.max_tokens_cap:") for p in found)
    assert any(p.startswith("budgets.classes[0].match:") for p in found)
    assert any(p.startswith("budgets.classes[1].match.regex:") for p in found)
    assert any(p.startswith("budgets.classes[1].max_tokens:") for p in found)
