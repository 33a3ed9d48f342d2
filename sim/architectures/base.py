"""What every baseline shares: the library's store and selection, a reaper, a reported mode.

The baselines use the library's Redis write path (:class:`RedisStore`: the same Lua
scripts with the same admission control) and its selection code, so a comparison
isolates what the architectures differ in: where reads come from and who waits for whom.

Baselines have no degradation modes. They report ``LOCAL_ONLY`` after a failed Redis call
and ``NORMAL`` after a successful one, and log those switches like the library does, so
the mode timeline shows their outages too. They never admit locally (no replay
rejections). ``_guard`` is the hook a design puts its lock in (``locked``); by default it
is free.

Where time goes is recorded in the instance's metrics as extra histograms (microseconds),
which the runner merges into the run's distributions: :data:`BREAKDOWN`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence

from lockless import (
    Admission,
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
    RegistryConfig,
    Requirements,
    Selection,
    UnknownPool,
    cancel_and_wait,
    new_histogram,
    place,
)
from sim.architectures.options import BaselineOptions

#: Histograms (us) a baseline may add to its metrics, and what each measures.
BREAKDOWN = {
    "lock_wait_us": "waiting for the registry lock (locked: every guarded call)",
    "redis_read_us": "a selection's pool read: awaited round trips (network, Redis, reply decoding)",
    "parse_us": "a selection's pool read: Python turning replies into snapshots",
    "select_us": "selection over the pool view (pure CPU)",
    "relist_us": "ttl-cache: one background relist of a pool, end to end",
}


class RedisBackedRegistry:
    """The shared part of every baseline; see the module docstring."""

    name = "baseline"

    def __init__(
        self, config: RegistryConfig, *, instance: str | None = None, options: BaselineOptions | None = None
    ) -> None:
        self.config = config
        self.options = options or BaselineOptions()
        self.instance = instance or f"{self.name}-{id(self):x}"
        self._metrics = Metrics(self.instance)
        self.store = RedisStore(config.redis, config.nodes, metrics=self._metrics)
        self._rng = random.Random(config.cache.seed)
        self._mode = Mode.NORMAL
        self._switches: list[ModeSwitch] = []
        self._tasks: list[asyncio.Task[None]] = []

    def _timer(self, name: str) -> None:
        """Add the breakdown histogram ``name`` to this instance's metrics."""
        self._metrics.histograms.setdefault(name, new_histogram())

    def _observe(self, name: str, seconds: float) -> None:
        self._metrics.observe_us(name, seconds * 1e6)

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
            self._spawn(self._reap_loop(), "reaper")

    def _spawn(self, coro, what: str) -> None:  # type: ignore[no-untyped-def]
        self._tasks.append(asyncio.create_task(coro, name=f"{self.instance}-{what}"))

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        # One cancel() can be swallowed by redis-py's wait_for on Python 3.11; this repeats it.
        await cancel_and_wait(tasks)
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
        """Baselines without a cache read Redis on every decision: their data is as fresh as the read."""
        return 0.0

    async def cached_view(self, pool: str) -> Mapping[str, NodeSnapshot] | None:
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
        raise NotImplementedError

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
