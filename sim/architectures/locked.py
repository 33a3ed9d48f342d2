"""``locked`` and ``direct``: no cache; every selection reads the pool from Redis.

* ``locked`` - the old design, as strong as an honest locked design gets: one registry
  object behind one ``asyncio.Lock``. Selection takes the lock, reads the pool with
  :func:`read_pool` (``HMGET`` of only the fields selection needs, pipelined in batches
  as large as the library's relist, full nodes counted and never parsed), then selects;
  every write takes the same lock. Its time is split into lock wait, Redis, parsing and
  selecting (``BREAKDOWN`` histograms), so a reader sees where a locked placement goes.
* ``direct`` - the same read with no lock: what the lock costs is the difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from lockless import RegistryConfig, Requirements, Selection, select
from sim.architectures.base import RedisBackedRegistry
from sim.architectures.options import BaselineOptions
from sim.architectures.pool_read import read_pool


class DirectRegistry(RedisBackedRegistry):
    """No cache, no lock: every read from Redis."""

    name = "direct"

    def __init__(
        self, config: RegistryConfig, *, instance: str | None = None, options: BaselineOptions | None = None
    ) -> None:
        super().__init__(config, instance=instance, options=options)
        for name in ("redis_read_us", "parse_us", "select_us"):
            self._timer(name)

    async def select_nodes(
        self,
        pool: str,
        count: int = 1,
        requirements: Requirements | None = None,
        *,
        policy: str | None = None,
    ) -> Selection:
        self._check_pool(pool)
        async with self._guard():
            read = await self._redis(read_pool(self.store, pool, batch=self.options.read_batch, full=False))
            t = time.perf_counter()
            picked = select(
                read.view,
                pool=pool,
                count=count,
                requirements=requirements,
                policy=policy or self.config.cache.policy,
                rng=self._rng,
            )
            self._observe("select_us", time.perf_counter() - t)
        self._observe("redis_read_us", read.redis_s)
        self._observe("parse_us", read.parse_s)
        return picked


class LockedRegistry(DirectRegistry):
    """The old design: one registry behind one ``asyncio.Lock``; reads go to Redis under it."""

    name = "locked"

    def __init__(
        self, config: RegistryConfig, *, instance: str | None = None, options: BaselineOptions | None = None
    ) -> None:
        super().__init__(config, instance=instance, options=options)
        self._lock = asyncio.Lock()
        self._timer("lock_wait_us")

    @contextlib.asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        t = time.perf_counter()
        async with self._lock:
            self._observe("lock_wait_us", time.perf_counter() - t)
            yield
