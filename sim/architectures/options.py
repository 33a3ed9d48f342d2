"""Settings of the baselines that the library's ``RegistryConfig`` has no field for.

They travel with the architecture name to wherever a registry is built (the harness
process, or a scheduler process of its own), so they are a small frozen, picklable value.
An experiment file sets them in its ``[baselines]`` table (``sim/config.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from lockless import ConfigError

#: The library's relist reads a pool in pipelined batches of this many records
#: (``RedisStore.relist``); the baselines read theirs in batches as large by default.
LIBRARY_RELIST_BATCH = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class BaselineOptions:
    """Per-baseline knobs (``lockless`` ignores them)."""

    refresh_s: float = 1.0
    """``ttl-cache``: each instance relists its pools every this many seconds (from the end
    of one relist to the start of the next, so a slow relist never overlaps the next)."""
    read_batch: int = LIBRARY_RELIST_BATCH
    """``locked``, ``direct``, ``ttl-cache``: records per pipelined read of a pool (the
    library's relist batch by default: a smaller one costs round trips, a larger one
    holds the event loop longer per reply)."""

    def __post_init__(self) -> None:
        ok = isinstance(self.refresh_s, int | float) and not isinstance(self.refresh_s, bool)
        if not ok or not 0 < self.refresh_s <= 3600:
            raise ConfigError("baselines.refresh_s", self.refresh_s, "a number of seconds in (0, 3600]")
        if not isinstance(self.read_batch, int) or isinstance(self.read_batch, bool) or self.read_batch < 1:
            raise ConfigError("baselines.read_batch", self.read_batch, "an integer >= 1")
