"""The reaper: removes nodes whose last heartbeat is older than ``dead_after`` (DESIGN.md section 3).

The removal itself is the ``reap`` script (atomic per pool; concurrent reapers on other
instances are safe: each node is removed and announced by exactly one). This part
decides *when* an instance may reap: only in NORMAL mode, and not within
``reap_grace_s`` of recovering from an outage, because during the outage nodes could
not heartbeat either and would all look dead (DESIGN.md section 5).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

from lockless.clock import Clock
from lockless.config import NodeLifecycleConfig
from lockless.core.modes import Mode
from lockless.errors import RedisUnavailable
from lockless.health import HealthMonitor
from lockless.metrics import Metrics
from lockless.redis.store import RedisStore


class Reaper:
    """Runs the reap script over every served pool, when the instance may (per pool's mode domain)."""

    def __init__(
        self,
        config: NodeLifecycleConfig,
        *,
        pools: Iterable[str],
        store: RedisStore,
        health: HealthMonitor,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self._config = config
        self._pools = sorted(pools)
        self._store = store
        self._health = health
        self._clock = clock
        self._metrics = metrics

    def may_reap(self, pool: str | None = None) -> bool:
        """``pool``'s mode (None: every pool's) is NORMAL, and past the grace period after its last
        recovery (if any)."""
        for domain in self._health.domains_of(None if pool is None else (pool,)):
            recovered = domain.modes.last_recovered_at
            now = self._clock.monotonic()
            in_grace = recovered is not None and now - recovered < self._config.reap_grace_s
            if domain.mode is not Mode.NORMAL or in_grace:
                return False
        return True

    async def reap_once(self) -> list[str]:
        """Reap dead nodes of every pool that :meth:`may_reap`; returns their ids."""
        reaped: list[str] = []
        # Decided for every pool before the first await, on the modes of this moment.
        allowed = [pool for pool in self._pools if self.may_reap(pool)]
        for pool in allowed:
            reaped += await self._store.reap(pool)
        self._metrics.inc("reaped", len(reaped))
        return reaped

    async def run(self, closing: Callable[[], bool]) -> None:
        """Reap every ``reap_interval_s`` until ``closing()``."""
        while not closing():
            await asyncio.sleep(self._config.reap_interval_s)
            with contextlib.suppress(RedisUnavailable):
                await self.reap_once()
