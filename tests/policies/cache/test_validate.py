"""Start-up checks of the cache block."""
from __future__ import annotations

from gateway.config_model import Config
from policies.cache.config import CacheConfig, CoalesceConfig
from policies.cache.validate import problems


def test_fleet_wait_is_bounded_to_ten_seconds() -> None:
    def found(wait: float) -> list[str]:
        return problems(Config(cache=CacheConfig(coalesce=CoalesceConfig(fleet_wait_s=wait))))

    assert found(11) == found(-1) == ["cache.coalesce.fleet_wait_s: must be between 0 and 10 seconds"]
    assert found(10) == found(0) == []  # control: the bounds themselves are fine
