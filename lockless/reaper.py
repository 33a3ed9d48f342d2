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
from lockless.core.modes import Mode, ModeController
from lockless.errors import RedisUnavailable
from lockless.metrics import Metrics
from lockless.redis.store import RedisStore


class Reaper:
    """Runs the reap script over every served pool, when the instance may."""

    def __init__(
        self,
        config: NodeLifecycleConfig,
        *,
        pools: Iterable[str],
        store: RedisStore,
        modes: ModeController,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self._config = config
        self._pools = sorted(pools)
        self._store = store
        self._modes = modes
        self._clock = clock
        self._metrics = metrics

    def may_reap(self) -> bool:
        """NORMAL, and past the grace period after the last recovery (if any)."""
        recovered = self._modes.last_recovered_at
        in_grace = recovered is not None and self._clock.monotonic() - recovered < self._config.reap_grace_s
        return self._modes.mode is Mode.NORMAL and not in_grace

    async def reap_once(self) -> list[str]:
        """Reap dead nodes of every pool (unless :meth:`may_reap` says no); returns their ids."""
        if not self.may_reap():
            return []
        reaped: list[str] = []
        for pool in self._pools:
            reaped += await self._store.reap(pool)
        self._metrics.inc("reaped", len(reaped))
        return reaped

    async def run(self, closing: Callable[[], bool]) -> None:
        """Reap every ``reap_interval_s`` until ``closing()``."""
        while not closing():
            await asyncio.sleep(self._config.reap_interval_s)
            with contextlib.suppress(RedisUnavailable):
                await self.reap_once()
