"""LocklessRegistry: one scheduler instance's lock-free view of the node registry.

A facade over parts that each have one job (DESIGN.md sections 4-6)::

    reads ------> ReadPath (reads.py) --- L1Store (no lock, no I/O on a hit) --miss--> RedisStore
    writes -----> WritePath (writes.py) --> RedisStore Lua scripts, else WriteJournal (LOCAL_ONLY)
    pub/sub ----> Subscriber --> PoolSync (sync.py): one applier task --> PoolSequencer --> L1Store
                                   gap: log catch-up; trimmed/new epoch: relist; recovery: replay + repair
    every part -- facts --> HealthMonitor (health.py) --> ModeController --> NORMAL | L2_ONLY | LOCAL_ONLY
    Reaper (reaper.py): the reap script, in NORMAL only and after the post-outage grace

Every mode transition is fired from one table, ``lockless.health.FACTS``. Time comes
from one injected :class:`~lockless.clock.Clock`. This class only builds and wires the
parts, runs their tasks, and answers the ``Registry`` protocol by delegation.

On a Redis Cluster (``redis+cluster://``, DESIGN.md section 8a) the same parts run with
the store routing by slot (``redis/cluster.py``), a subscription per shard
(``redis/cluster_subscriber.py``), and a mode, journal and data age per pool: a fault on
one shard degrades only the pools on it. :attr:`LocklessRegistry.mode` is then the worst
pool's mode, and :meth:`LocklessRegistry.mode_of` gives one pool's.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lockless.aio import cancel_and_wait
from lockless.clock import SYSTEM_CLOCK, Clock
from lockless.config import RegistryConfig
from lockless.core.journal import WriteJournal
from lockless.core.l1 import L1Store
from lockless.core.modes import Mode, ModeSwitch
from lockless.core.selection import Selection
from lockless.core.snapshot import NodeSnapshot, NodeSpec, Requirements
from lockless.errors import RedisUnavailable
from lockless.health import Fact, HealthMonitor
from lockless.metrics import Metrics, MetricsSnapshot
from lockless.protocol import Admission, Heartbeat, HeartbeatResult, Placement, ReadResult, place
from lockless.reads import ReadPath
from lockless.reaper import Reaper
from lockless.redis.cluster_subscriber import ClusterSubscriber
from lockless.redis.store import RedisStore
from lockless.redis.subscriber import Subscriber
from lockless.sync import PoolSync
from lockless.work import Recover, RelistPool
from lockless.writes import WritePath


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistryState:
    """What an instance knows about its own position, for operators and tests."""

    mode: Mode
    #: pool -> its mode (all the same on one server; each pool its own on a cluster).
    modes: Mapping[str, Mode]
    #: pool -> (last seq applied, epoch of the records held); seq None while a relist is pending.
    positions: Mapping[str, tuple[int | None, str | None]]
    journal_depth: int
    #: Monotonic time the current outage began (None unless recovering from one).
    outage_started_at: float | None
    #: Monotonic time the instance last got back to NORMAL after an outage (None if never).
    last_recovered_at: float | None
    #: pool -> nodes whose cached snapshot is this instance's own write, not yet confirmed by
    #: a snapshot from Redis (an "assumed" admission or release, DESIGN.md section 6).
    assumed: Mapping[str, frozenset[str]]


@dataclass(slots=True)
class _Parts:
    """The parts of one instance, wired together by :func:`_assemble`."""

    store: RedisStore
    metrics: Metrics
    health: HealthMonitor
    reads: ReadPath
    writes: WritePath
    sync: PoolSync
    subscriber: Subscriber | ClusterSubscriber
    reaper: Reaper


def _assemble(config: RegistryConfig, instance: str, store: RedisStore | None, clock: Clock) -> _Parts:
    """Build every part of an instance and connect them through narrow callbacks."""
    pools = frozenset(config.pools)
    metrics = Metrics(instance)
    store = store or RedisStore(config.redis, config.nodes, metrics=metrics)
    rng = random.Random(config.cache.seed)
    cache = config.cache
    l1 = L1Store(
        entry_ttl_s=cache.entry_ttl_s,
        ttl_jitter=cache.ttl_jitter,
        negative_ttl_s=cache.negative_ttl_s,
        rng=rng,
    )
    common = {"clock": clock, "metrics": metrics, "instance": instance}
    shared = {"pools": pools, "store": store, "l1": l1}
    # Callbacks name parts built after them (the synchroniser, the subscriber): closures
    # look the names up when they fire, by which time both exist.
    health = HealthMonitor(
        config.modes,
        clock=clock,
        instance=instance,
        on_recovery=lambda why, of: sync.request(Recover(why, of)),
        pools=pools,
        per_pool=store.cluster is not None,
    )
    # One journal per mode domain: every pool's on one server, a pool's own on a cluster.
    journals = {p: WriteJournal(config.journal.capacity) for p in sorted(pools)}
    for domain in health.domains:
        shared_journal = journals[min(domain.pools)]
        journals.update(dict.fromkeys(domain.pools, shared_journal))

    def lost_data(pool: str, why: str) -> None:
        # A write's answer or a read showed that Redis lost the pool's data: as the probe does,
        # report it and queue the recovery that relists the pool (with reset: it sees the loss).
        health.report(Fact.DATA_LOST, why, frozenset({pool}))
        sync.request(Recover(why, frozenset({pool})))

    writes = WritePath(
        journals=journals,
        health=health,
        on_lost_data=lost_data,
        **shared,
        **common,
    )
    reads = ReadPath(
        cache,
        health=health,
        epoch_of=lambda pool: sync.sequencer.epoch(pool),
        on_lost_data=lost_data,
        rng=rng,
        **shared,
        **common,
    )
    sync = PoolSync(
        config.subscriber,
        health=health,
        replay_journal=writes.replay,
        stream_up=lambda pool: subscriber.is_up(pool),
        **shared,
        **common,
    )
    channels = [store.keys.events(p) for p in sorted(pools)]
    sub_rng = random.Random(rng.random())
    subscriber: Subscriber | ClusterSubscriber
    if store.cluster is not None:
        by_pool = {p: store.keys.events(p) for p in sorted(pools)}
        subscriber = ClusterSubscriber(store, config.subscriber, by_pool, sync, rng=sub_rng)
    else:
        subscriber = Subscriber(store.connections, config.subscriber, channels, sync, rng=sub_rng)
    reaper = Reaper(config.nodes, pools=pools, store=store, health=health, clock=clock, metrics=metrics)
    return _Parts(store, metrics, health, reads, writes, sync, subscriber, reaper)


class LocklessRegistry:
    """The lockless architecture: an in-process cache of immutable snapshots kept fresh by events."""

    def __init__(
        self,
        config: RegistryConfig,
        *,
        name: str = "lockless",
        instance: str | None = None,
        store: RedisStore | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.name = name
        self.config = config
        self.instance = instance or f"{name}-{id(self):x}"
        self._pools = frozenset(config.pools)
        p = _assemble(config, self.instance, store, clock)
        self._store, self._metrics, self._health, self._reads = p.store, p.metrics, p.health, p.reads
        self._writes, self._sync, self._subscriber, self._reaper = p.writes, p.sync, p.subscriber, p.reaper
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        # The two hot reads skip the facade's own frame: an L1 hit costs about 1 us, and a
        # delegating coroutine would add a third of that. (The methods below document them.)
        self.get_node = self._reads.get_node  # type: ignore[method-assign]
        self.cached = self._reads.cached  # type: ignore[method-assign]

    # ================================================================ lifecycle
    async def start(self, *, timeout: float = 10.0) -> None:
        """Check the connection, load scripts, subscribe, then relist every pool (events arriving
        meanwhile are queued). A TLS, AUTH or connect problem raises at once, saying which."""
        await self._store.connections.check()
        await self._store.load_scripts()
        self._subscriber.start()
        try:
            await asyncio.wait_for(self._subscriber.connected.wait(), timeout)
        except TimeoutError:
            await self._subscriber.stop()
            raise RedisUnavailable(f"event subscription not established within {timeout} s") from None
        for pool in sorted(self._pools):
            await self._sync.relist(pool)
        closing = self._is_closing
        self._tasks = [
            asyncio.create_task(self._sync.run(closing), name=f"{self.instance}-applier"),
            asyncio.create_task(
                self._health.run(self._sync.probe, self.config.subscriber.ping_interval_s, closing),
                name=f"{self.instance}-health",
            ),
        ]
        if self.config.nodes.reap_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._reaper.run(closing), name=f"{self.instance}-reaper"))

    def _is_closing(self) -> bool:
        return self._closing

    async def close(self) -> None:
        """Stop background tasks and release connections. Idempotent."""
        self._closing = True
        await cancel_and_wait(self._tasks)
        self._tasks = []
        await self._subscriber.stop()
        with contextlib.suppress(Exception):
            await self._store.close()

    async def __aenter__(self) -> LocklessRegistry:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ================================================================== status
    @property
    def mode(self) -> Mode:
        """The instance's mode: the worst of its pools' (on one server they always agree)."""
        return self._health.mode

    def mode_of(self, pool: str) -> Mode:
        """The mode of one pool (on a cluster each pool has its own: a shard down degrades its pools)."""
        self._reads.check_pool(pool)
        return self._health.mode_of(pool)

    @property
    def pools(self) -> frozenset[str]:
        return self._pools

    def last_sync_age(self, pool: str | None = None) -> float:
        """Seconds since this instance last heard from Redis (a message, a PONG or a reply) about
        ``pool``; None: about the pool heard from longest ago."""
        if pool is not None:
            self._reads.check_pool(pool)
        return self._health.last_sync_age(pool)

    def last_seq(self, pool: str) -> int | None:
        """Highest ``seq`` of ``pool`` applied to L1 (None while a relist is pending)."""
        return self._sync.sequencer.last_seq(pool)

    def caught_up(self) -> bool:
        """NORMAL, no queued events or repairs, every pool positioned."""
        return self._sync.caught_up()

    def state(self) -> RegistryState:
        """This instance's mode, pool positions, journal depth and outage times."""
        health, seq = self._health, self._sync.sequencer
        indexes = {p: self._reads.l1_pool(p) for p in sorted(self._pools)}
        return RegistryState(
            mode=health.mode,
            modes={p: health.mode_of(p) for p in sorted(self._pools)},
            positions={p: (seq.last_seq(p), seq.epoch(p)) for p in sorted(self._pools)},
            journal_depth=self._writes.journal_depth,
            outage_started_at=health.outage_started_at,
            last_recovered_at=health.last_recovered_at,
            assumed={p: frozenset(i.assumed) if i is not None else frozenset() for p, i in indexes.items()},
        )

    def mode_switches(self) -> tuple[ModeSwitch, ...]:
        """Recent mode switches, oldest first; each names the pools it concerns (``ModeSwitch.pools``)."""
        return self._health.switches()

    def take_replay_rejections(self) -> list[Admission]:
        """Journaled admissions Redis refused on replay since the last call; the scheduler re-places them."""
        return self._writes.take_replay_rejections()

    def metrics(self) -> MetricsSnapshot:
        health = self._health
        self._metrics.counters["singleflight_joins"] = self._reads.flight.joins
        return self._metrics.snapshot(
            mode=health.mode.value,
            mode_switches={(a.value, b.value): n for (a, b), n in health.switch_counts().items()},
            journal_depth=self._writes.journal_depth,
        )

    # =================================================================== reads
    async def get_node(self, pool: str, node_id: str) -> NodeSnapshot | None:
        """The node's snapshot, or None. An L1 hit in NORMAL mode takes no lock and does no I/O."""
        return await self._reads.get_node(pool, node_id)

    def cached(self, pool: str, node_id: str) -> NodeSnapshot | None:
        """L1's snapshot as it is (None if not cached): never awaits, never does I/O (hot loops)."""
        return self._reads.cached(pool, node_id)

    def cached_nodes(self, pool: str) -> dict[str, NodeSnapshot]:
        """A copy of the L1 view of ``pool``, without I/O."""
        self._reads.check_pool(pool)
        index = self._reads.l1_pool(pool)
        return dict(index.nodes) if index is not None else {}

    async def cached_view(self, pool: str) -> dict[str, NodeSnapshot]:
        """:meth:`cached_nodes`, as the ``Registry`` protocol asks for it."""
        return self.cached_nodes(pool)

    async def read_node(self, pool: str, node_id: str) -> ReadResult:
        """Like :meth:`get_node`, with the data's age and whether it is stale."""
        return await self._reads.read_node(pool, node_id)

    async def get_nodes_batch(self, pool: str, node_ids: Sequence[str]) -> dict[str, NodeSnapshot | None]:
        """Several nodes; the L1 misses are read in one pipelined round trip."""
        return await self._reads.get_nodes_batch(pool, node_ids)

    async def refresh_node(self, pool: str, node_id: str) -> NodeSnapshot | None:
        """Re-read one node from Redis into L1, whatever L1 holds."""
        return await self._reads.refresh_node(pool, node_id)

    async def relist_pool(self, pool: str) -> int:
        """Re-read the whole pool from Redis (through the applier, in order). Returns nodes cached."""
        self._reads.check_pool(pool)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sync.request(RelistPool(pool, done))
        await done
        return len(self.cached_nodes(pool))

    async def select_nodes(
        self,
        pool: str,
        count: int = 1,
        requirements: Requirements | None = None,
        *,
        policy: str | None = None,
    ) -> Selection:
        """Pick placeable nodes from L1 (no lock, no I/O); explains what was filtered."""
        return self._reads.select_nodes(pool, count, requirements, policy)

    async def place_job(
        self, pool: str, job_id: str, requirements: Requirements | None = None, *, policy: str | None = None
    ) -> Placement:
        """Select from L1, then admit at the first candidate that accepts (``lockless.place``)."""
        return await place(self, pool, job_id, requirements, policy=policy)

    # ================================================================== writes
    async def register_node(self, spec: NodeSpec) -> int:
        """Create or replace a node record; returns its version (0 when journaled)."""
        return await self._writes.register(spec)

    async def heartbeat(
        self,
        pool: str,
        node_id: str,
        *,
        load: float = 0.0,
        running_jobs: Sequence[str] | None = None,
        spec: NodeSpec | None = None,
    ) -> HeartbeatResult:
        beat = Heartbeat(pool=pool, node_id=node_id, load=load, running_jobs=running_jobs, spec=spec)
        return await self._writes.heartbeat(beat)

    async def heartbeat_many(self, beats: Sequence[Heartbeat]) -> list[HeartbeatResult]:
        """Heartbeats in one pipelined round trip (journaled one by one in LOCAL_ONLY)."""
        return await self._writes.heartbeat_many(beats)

    async def remove_node(self, pool: str, node_id: str) -> bool:
        return await self._writes.remove(pool, node_id)

    async def job_start(self, pool: str, node_id: str, job_id: str) -> Admission:
        """Admission control in Redis; an admission is reflected in L1 at once ("assumed")."""
        return await self._writes.job_start(pool, node_id, job_id)

    async def job_finish(self, pool: str, node_id: str, job_id: str) -> bool:
        """Release ``job_id``'s slot. Idempotent; True if this call released it (or journaled it)."""
        return await self._writes.job_finish(pool, node_id, job_id)

    async def reap_once(self) -> list[str]:
        """Reap dead nodes of every pool, unless outside NORMAL or within the post-outage grace period."""
        return await self._reaper.reap_once()

    async def job_started(self, pool: str, node_id: str, job_id: str) -> Admission:
        """Deprecated alias of :meth:`job_start`."""
        warnings.warn("job_started() is deprecated; use job_start()", DeprecationWarning, stacklevel=2)
        return await self.job_start(pool, node_id, job_id)

    async def job_finished(self, pool: str, node_id: str, job_id: str) -> bool:
        """Deprecated alias of :meth:`job_finish`."""
        warnings.warn("job_finished() is deprecated; use job_finish()", DeprecationWarning, stacklevel=2)
        return await self.job_finish(pool, node_id, job_id)
