"""The architectures under test, behind the one ``Registry`` interface.

* ``lockless`` - the library (:class:`lockless.registry.LocklessRegistry`).
* ``locked``   - the old design, built as people build it: one registry object behind one
  ``asyncio.Lock``. Selection takes the lock and reads the pool's node records from Redis
  under it (ZRANGE of ``alive`` + pipelined HGETALL), then selects; every write takes
  the same lock. Placement latency therefore grows with pool size and with load.
* ``direct``   - no cache and no lock: every read goes to Redis (same relist + select).

The baselines share the library's Redis write path (:class:`RedisStore`, the same Lua
scripts with the same admission control) and its selection code, so the comparison
isolates what the architectures differ in: where reads come from and who waits for whom.
They read a pool in pipelined batches of :data:`RELIST_BATCH`, yielding the event loop
between batches as a careful implementation would (one 10,000-record read would stall
every other task on the loop, harness included, for tens of milliseconds).

Baselines have no degradation modes. They report ``LOCAL_ONLY`` after a failed Redis call
and ``NORMAL`` after a successful one, and log those switches like the library does, so
the mode timeline shows their outages too. They keep no cache (``cached_view`` is
``None``) and never admit locally (no replay rejections); they place through the same
:func:`lockless.protocol.place` as the library.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from lockless import (
    Admission,
    ConfigError,
    Heartbeat,
    HeartbeatResult,
    Metrics,
    MetricsSnapshot,
    Mode,
    ModeSwitch,
    NodeSnapshot,
    NodeSpec,
    Placement,
    RedisStore,
    RedisUnavailable,
    Registry,
    RegistryConfig,
    Requirements,
    Selection,
    UnknownPool,
    is_placeable,
    place,
    placement_key,
    select,
)

ARCHITECTURES = ("lockless", "locked", "direct")
#: Records per pipelined HGETALL batch when a baseline reads a pool.
RELIST_BATCH = 25


@dataclass(frozen=True, slots=True)
class _ListedPool:
    """A pool as read from Redis, shaped as selection's ``PoolView``."""

    nodes: Mapping[str, NodeSnapshot]
    placeable: Sequence[tuple[float, float, str]]
    draining: int

    @classmethod
    def of(cls, nodes: Sequence[NodeSnapshot]) -> _ListedPool:
        # One sort of the placeable keys: cheaper than growing a SortedList node by node.
        by_id = {n.node_id: n for n in nodes}
        placeable = sorted(placement_key(n) for n in nodes if is_placeable(n))
        draining = sum(1 for n in nodes if n.status == "draining")
        return cls(by_id, placeable, draining)


class _RedisBackedRegistry:
    """What the baselines share: a store, selection over a pool read from Redis, a reaper.

    ``_guard`` is the only difference between them: a real lock for ``locked``, a no-op
    for ``direct``.
    """

    name = "baseline"

    def __init__(self, config: RegistryConfig, *, instance: str | None = None) -> None:
        self.config = config
        self.instance = instance or f"{self.name}-{id(self):x}"
        self._metrics = Metrics(self.instance)
        self.store = RedisStore(config.redis, config.nodes, metrics=self._metrics)
        self._rng = random.Random(config.cache.seed)
        self._mode = Mode.NORMAL
        self._switches: list[ModeSwitch] = []
        self._reaper: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        yield

    async def _redis(self, coro):  # type: ignore[no-untyped-def]
        """Await a store call, tracking the reported mode from its outcome."""
        try:
            result = await coro
        except RedisUnavailable as exc:
            self._set_mode(Mode.LOCAL_ONLY, f"redis call failed: {exc}")
            raise
        self._set_mode(Mode.NORMAL, "redis answered")
        return result

    def _set_mode(self, mode: Mode, reason: str) -> None:
        if mode is not self._mode:
            self._switches.append(
                ModeSwitch(at=time.monotonic(), from_mode=self._mode, to_mode=mode, reason=reason)
            )
            self._mode = mode

    # ----------------------------------------------------------- lifecycle
    async def start(self) -> None:
        await self._redis(self.store.load_scripts())
        if self.config.nodes.reap_interval_s > 0:
            self._reaper = asyncio.create_task(self._reap_loop(), name=f"{self.instance}-reaper")

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        with contextlib.suppress(Exception):
            await self.store.close()

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.nodes.reap_interval_s)
            for pool in self.config.pools:
                with contextlib.suppress(RedisUnavailable):
                    async with self._guard():
                        await self._redis(self.store.reap(pool))

    # --------------------------------------------------------------- status
    @property
    def mode(self) -> Mode:
        return self._mode

    def mode_switches(self) -> tuple[ModeSwitch, ...]:
        return tuple(self._switches)

    def last_sync_age(self) -> float:
        """Baselines read Redis on every decision: their data is as fresh as the read."""
        return 0.0

    async def cached_view(self, pool: str) -> None:
        """No cache: every read goes to Redis."""
        self._check_pool(pool)
        return None

    def take_replay_rejections(self) -> list[Admission]:
        """Never admits locally: nothing is replayed, nothing rejected."""
        return []

    def metrics(self) -> MetricsSnapshot:
        return self._metrics.snapshot(mode=self._mode.value)

    def _check_pool(self, pool: str) -> None:
        if pool not in self.config.pools:
            raise UnknownPool(pool, tuple(self.config.pools))

    # ---------------------------------------------------------------- reads
    async def get_node(self, pool: str, node_id: str) -> NodeSnapshot | None:
        self._check_pool(pool)
        async with self._guard():
            return await self._redis(self.store.get_node(pool, node_id))

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
            listing = await self._redis(self.store.relist(pool, batch=RELIST_BATCH))
            return select(
                _ListedPool.of(listing.nodes),
                pool=pool,
                count=count,
                requirements=requirements,
                policy=policy or self.config.cache.policy,
                rng=self._rng,
            )

    async def place_job(
        self, pool: str, job_id: str, requirements: Requirements | None = None, *, policy: str | None = None
    ) -> Placement:
        return await place(self, pool, job_id, requirements, policy=policy)

    # --------------------------------------------------------------- writes
    async def register_node(self, spec: NodeSpec) -> int:
        self._check_pool(spec.pool)
        async with self._guard():
            return await self._redis(self.store.register(spec))

    async def heartbeat(
        self,
        pool: str,
        node_id: str,
        *,
        load: float = 0.0,
        running_jobs: Sequence[str] | None = None,
        spec: NodeSpec | None = None,
    ) -> HeartbeatResult:
        self._check_pool(pool)
        beat = Heartbeat(pool=pool, node_id=node_id, load=load, running_jobs=running_jobs, spec=spec)
        async with self._guard():
            return await self._redis(self.store.heartbeat(beat))

    async def heartbeat_many(self, beats: Sequence[Heartbeat]) -> list[HeartbeatResult]:
        for beat in beats:
            self._check_pool(beat.pool)
        async with self._guard():
            return await self._redis(self.store.heartbeat_many(beats))

    async def remove_node(self, pool: str, node_id: str) -> bool:
        self._check_pool(pool)
        async with self._guard():
            return bool(await self._redis(self.store.remove(pool, node_id)))

    async def job_start(self, pool: str, node_id: str, job_id: str) -> Admission:
        self._check_pool(pool)
        async with self._guard():
            return await self._redis(self.store.job_start(pool, node_id, job_id))

    async def job_finish(self, pool: str, node_id: str, job_id: str) -> bool:
        self._check_pool(pool)
        async with self._guard():
            # (released, version[, current_jobs]): only the first field matters here.
            reply = await self._redis(self.store.job_finish(pool, node_id, job_id))
            return bool(reply[0])


class LockedRegistry(_RedisBackedRegistry):
    """The old design: one registry behind one ``asyncio.Lock``; reads go to Redis under it."""

    name = "locked"

    def __init__(self, config: RegistryConfig, *, instance: str | None = None) -> None:
        super().__init__(config, instance=instance)
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        async with self._lock:
            yield


class DirectRegistry(_RedisBackedRegistry):
    """No cache, no lock: every read from Redis."""

    name = "direct"


def build(name: str, config: RegistryConfig, *, instance: str | None = None) -> Registry:
    """A registry of architecture ``name`` (``lockless`` | ``locked`` | ``direct``), not yet started."""
    if name == "lockless":
        # Imported lazily: the baselines must not depend on the library's cache being importable.
        from lockless import LocklessRegistry

        return LocklessRegistry(config, name="lockless", instance=instance)
    if name == "locked":
        return LockedRegistry(config, instance=instance)
    if name == "direct":
        return DirectRegistry(config, instance=instance)
    raise ConfigError("architecture", name, " | ".join(ARCHITECTURES))
