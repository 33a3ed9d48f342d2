"""LocklessRegistry: one scheduler instance's lock-free view of the node registry.

This is the only class that both awaits and decides. It wires the pure core (L1 store,
pool sequencer, mode controller, write journal, selection) to Redis I/O (store,
subscriber) and to a clock (``time.monotonic``, the event loop's clock)::

    placement / reads --> L1Store (no lock, no I/O on a hit) --miss--> RedisStore (single flight)
    writes -----------> RedisStore Lua scripts --(LOCAL_ONLY)--> WriteJournal --(recovery)--> replay
    pub/sub --> Subscriber --> queue --> applier task --> PoolSequencer --> L1Store.apply
                                              |  gap: XRANGE catch-up; trimmed / bad / new epoch: relist
    health task --(probe: seq/epoch of every pool)--> ModeController --> NORMAL | L2_ONLY | LOCAL_ONLY

Every L1 mutation driven by Redis happens in the single applier task, in ``seq``
order; reads run concurrently and never wait on it. See DESIGN.md sections 4-6.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import warnings
from collections import deque
from collections.abc import Sequence
from typing import Any

from lockless.aio import cancel_and_wait
from lockless.applier import EventApplier
from lockless.config import RegistryConfig
from lockless.core.journal import JournalEntry, WriteJournal
from lockless.core.l1 import NEGATIVE, L1Store
from lockless.core.modes import Mode, ModeController, ModeSwitch, Signal
from lockless.core.selection import Selection, is_placeable, select
from lockless.core.sequencer import PoolSequencer
from lockless.core.snapshot import NodeSnapshot, NodeSpec, Requirements
from lockless.errors import JournalFull, MalformedRecord, RedisUnavailable, StaleRead, UnknownPool
from lockless.metrics import Metrics, MetricsSnapshot
from lockless.protocol import Admission, Heartbeat, HeartbeatResult, Placement, ReadResult, place
from lockless.redis.store import RedisStore
from lockless.redis.subscriber import Subscriber
from lockless.singleflight import SingleFlight

log = logging.getLogger(__name__)

class LocklessRegistry(EventApplier):
    """The lockless architecture: an in-process cache of immutable snapshots kept fresh by events."""

    def __init__(
        self,
        config: RegistryConfig,
        *,
        name: str = "lockless",
        instance: str | None = None,
        store: RedisStore | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.instance = instance or f"{name}-{id(self):x}"
        self._metrics = Metrics(self.instance)
        self.store = store or RedisStore(config.redis, config.nodes, metrics=self._metrics)
        self._rng = random.Random(config.cache.seed)
        self.l1 = L1Store(
            entry_ttl_s=config.cache.entry_ttl_s,
            ttl_jitter=config.cache.ttl_jitter,
            negative_ttl_s=config.cache.negative_ttl_s,
            rng=self._rng,
        )
        self._l1_pools = self.l1.pools
        self._staleness_bound_s = config.cache.staleness_bound_s
        self._serve_stale = config.cache.stale_reads == "serve"
        self._counters = self._metrics.counters
        self.sequencer = PoolSequencer()
        self.modes = ModeController(config.modes, now=time.monotonic())
        self.journal = WriteJournal(config.journal.capacity)
        self._pools = frozenset(config.pools)
        self._flight: SingleFlight[NodeSnapshot | None] = SingleFlight()
        self._queue: asyncio.Queue[tuple[str, str, Any]] = asyncio.Queue()
        self._last_heard = time.monotonic()
        self._behind: dict[str, int] = {}
        self._recovering = False
        # False while the applier task works on an item (see on_message's fast path).
        self._applier_idle = False
        self._tasks: list[asyncio.Task[None]] = []
        self._subscriber = Subscriber(
            config.redis,
            config.subscriber,
            [self.store.keys.events(p) for p in config.pools],
            self,
            rng=random.Random(self._rng.random()),
        )
        #: Journaled job admissions that Redis rejected on replay (the scheduler must re-place them).
        self.replay_rejections: deque[Admission] = deque(maxlen=10_000)
        self._started = False
        self._closing = False

    # ================================================================ lifecycle
    async def start(self, *, timeout: float = 10.0) -> None:
        """Load scripts, subscribe, then relist every pool (events arriving meanwhile are queued)."""
        await self.store.load_scripts()
        self._subscriber.start()
        try:
            await asyncio.wait_for(self._subscriber.connected.wait(), timeout)
        except TimeoutError:
            await self._subscriber.stop()
            raise RedisUnavailable(f"event subscription not established within {timeout} s") from None
        for pool in sorted(self._pools):
            await self._relist(pool)
        self._tasks = [
            asyncio.create_task(self._apply_loop(), name=f"{self.instance}-applier"),
            asyncio.create_task(self._health_loop(), name=f"{self.instance}-health"),
        ]
        if self.config.nodes.reap_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._reap_loop(), name=f"{self.instance}-reaper"))
        self._started = True

    async def close(self) -> None:
        """Stop background tasks and release connections. Idempotent."""
        self._closing = True
        await cancel_and_wait(self._tasks)
        self._tasks = []
        await self._subscriber.stop()
        with contextlib.suppress(Exception):
            await self.store.close()

    async def __aenter__(self) -> LocklessRegistry:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ================================================================== status
    @property
    def mode(self) -> Mode:
        return self.modes.mode

    @property
    def pools(self) -> frozenset[str]:
        return self._pools

    def last_sync_age(self) -> float:
        """Seconds since this instance last heard from Redis (a message, a PONG or a reply)."""
        return time.monotonic() - self._last_heard

    def last_seq(self, pool: str) -> int | None:
        """Highest ``seq`` of ``pool`` applied to L1 (None while a relist is pending)."""
        return self.sequencer.last_seq(pool)

    def caught_up(self) -> bool:
        """NORMAL, no queued events or repairs, every pool positioned."""
        return (
            self.mode is Mode.NORMAL
            and self._queue.empty()
            and all(self.sequencer.last_seq(p) is not None for p in self._pools)
        )

    def cached_nodes(self, pool: str) -> dict[str, NodeSnapshot]:
        """A copy of the L1 view of ``pool``, without I/O (for convergence checks and debugging)."""
        self._check_pool(pool)
        return dict(self.l1.pool(pool).nodes)

    async def cached_view(self, pool: str) -> dict[str, NodeSnapshot]:
        """:meth:`cached_nodes`, as the :class:`~lockless.protocol.Registry` protocol asks for it."""
        return self.cached_nodes(pool)

    def take_replay_rejections(self) -> list[Admission]:
        """Journaled admissions Redis refused on replay since the last call; the scheduler re-places them."""
        taken = list(self.replay_rejections)
        self.replay_rejections.clear()
        return taken

    def mode_switches(self) -> tuple[ModeSwitch, ...]:
        return self.modes.switches

    def metrics(self) -> MetricsSnapshot:
        self._metrics.counters["singleflight_joins"] = self._flight.joins
        return self._metrics.snapshot(
            mode=self.mode.value,
            mode_switches={(a.value, b.value): n for (a, b), n in self.modes.switch_counts.items()},
            journal_depth=len(self.journal),
        )

    def _check_pool(self, pool: str) -> None:
        if pool not in self._pools:
            raise UnknownPool(pool, tuple(sorted(self._pools)))

    def _signal(self, signal: Signal, reason: str = "") -> None:
        was = self.modes.mode
        switch = self.modes.on_signal(signal, time.monotonic(), reason)
        if switch is None:
            return
        log.warning(
            "%s mode %s -> %s: %s", self.instance, switch.from_mode.value, switch.to_mode.value, switch.reason
        )
        if was is Mode.LOCAL_ONLY and switch.to_mode is Mode.L2_ONLY:
            self._queue.put_nowait(("recover", "", "redis answered probes"))

    # =================================================================== reads
    async def get_node(self, pool: str, node_id: str) -> NodeSnapshot | None:
        """The node's snapshot, or None. An L1 hit in NORMAL mode takes no lock and does no I/O."""
        # The hit path inlines L1Store.get and reads config once: it runs on every placement
        # and every attribute hop shows at this scale (about 1 us in all).
        mode = self.modes.mode
        if mode is Mode.NORMAL and (index := self._l1_pools.get(pool)) is not None:
            node = index.nodes.get(node_id)
            if node is not None:
                now = time.monotonic()
                if index.expiry[node_id] > now and now - self._last_heard <= self._staleness_bound_s:
                    self._counters["l1_hits"] += 1
                    return node
        elif mode is Mode.LOCAL_ONLY and self._serve_stale and (index := self._l1_pools.get(pool)):
            # An outage must not make reads slower: last-known-good, as read_node would serve it.
            # (A PoolIndex is always truthy: the walrus only tells a served pool from None.)
            node = index.nodes.get(node_id)
            if node is not None:
                self._counters["stale_reads"] += 1
                return node
        return (await self.read_node(pool, node_id)).node

    async def read_node(self, pool: str, node_id: str) -> ReadResult:
        """Like :meth:`get_node`, with the data's age and whether it is stale."""
        self._check_pool(pool)
        now = time.monotonic()
        age = now - self._last_heard
        mode = self.modes.mode
        past_bound = age > self.config.cache.staleness_bound_s
        if past_bound and self.config.cache.stale_reads == "refuse":
            self._metrics.inc("stale_refusals")
            raise StaleRead(age, self.config.cache.staleness_bound_s)
        if mode is Mode.LOCAL_ONLY:
            self._metrics.inc("stale_reads")
            return ReadResult(node=self.l1.peek(pool, node_id), last_sync_age_s=age, stale=True, mode=mode)
        if past_bound:
            self._metrics.inc("stale_reads")
        if mode is Mode.L2_ONLY:
            return ReadResult(
                node=await self._checked_read(pool, node_id), last_sync_age_s=age, stale=past_bound, mode=mode
            )
        cached = self.l1.get(pool, node_id, now)
        if cached is NEGATIVE:
            self._metrics.inc("negative_hits")
            return ReadResult(node=None, last_sync_age_s=age, stale=past_bound, mode=mode)
        if cached is not None:
            self._metrics.inc("l1_hits")
            return ReadResult(node=cached, last_sync_age_s=age, stale=past_bound, mode=mode)  # type: ignore[arg-type]
        self._metrics.inc("misses")
        node = await self._flight.do((pool, node_id), lambda: self._fill(pool, node_id))
        return ReadResult(node=node, last_sync_age_s=age, stale=past_bound, mode=mode)

    async def _checked_read(self, pool: str, node_id: str) -> NodeSnapshot | None:
        """L2_ONLY: L1 checked against Redis within the budget; on timeout, L1 as it is."""
        self._metrics.inc("version_checks")
        task = self._flight.task((pool, node_id), lambda: self._fill(pool, node_id))
        # The read is never cancelled on timeout (its connection would be left mid-reply);
        # it finishes in the background and refreshes L1 for the next reader.
        done, _ = await asyncio.wait({task}, timeout=self.config.cache.version_check_budget_s)
        if not done:
            self._metrics.inc("version_check_timeouts")
            return self.l1.peek(pool, node_id)
        if task.exception() is not None:
            return self.l1.peek(pool, node_id)
        return task.result()

    async def _fill(self, pool: str, node_id: str) -> NodeSnapshot | None:
        """Read one record from Redis into L1; return the newest snapshot known afterwards."""
        try:
            record = await self.store.get_node(pool, node_id)
        except MalformedRecord as exc:
            self._metrics.inc("events_malformed")
            log.error("%s: %s", self.instance, exc)
            raise
        except RedisUnavailable as exc:
            self._signal(Signal.REDIS_FAILED, str(exc))
            if self.l1.peek(pool, node_id) is not None:
                return self.l1.peek(pool, node_id)
            raise
        self._heard()
        self._metrics.inc("l2_reads")
        now = time.monotonic()
        if record is None:
            if self.l1.peek(pool, node_id) is not None:
                # Expired entry of a node Redis no longer has: its removal event is overdue.
                self.l1.remove(pool, node_id, self.l1.version_of(pool, node_id))
            self.l1.remember_missing(pool, node_id, now)
            return None
        self.l1.apply(record, now)
        return self.l1.peek(pool, node_id)

    async def get_nodes_batch(self, pool: str, node_ids: Sequence[str]) -> dict[str, NodeSnapshot | None]:
        """Several nodes; the L1 misses are read in one pipelined round trip."""
        self._check_pool(pool)
        now = time.monotonic()
        out: dict[str, NodeSnapshot | None] = {}
        missing: list[str] = []
        local = self.modes.mode is Mode.LOCAL_ONLY
        for node_id in node_ids:
            cached = self.l1.peek(pool, node_id) if local else self.l1.get(pool, node_id, now)
            if cached is NEGATIVE:
                self._metrics.inc("negative_hits")
                out[node_id] = None
            elif cached is not None or local:
                self._metrics.inc("l1_hits" if cached is not None else "misses")
                out[node_id] = cached  # type: ignore[assignment]
            else:
                self._metrics.inc("misses")
                missing.append(node_id)
        if missing:
            try:
                records = await self.store.get_nodes(pool, missing)
            except RedisUnavailable as exc:
                self._signal(Signal.REDIS_FAILED, str(exc))
                raise
            self._heard()
            self._metrics.inc("l2_reads", len(missing))
            for node_id, record in records.items():
                if isinstance(record, MalformedRecord):
                    self._metrics.inc("events_malformed")
                    log.error("%s: %s", self.instance, record)
                    out[node_id] = None
                elif record is None:
                    self.l1.remember_missing(pool, node_id, now)
                    out[node_id] = None
                else:
                    self.l1.apply(record, now)
                    out[node_id] = self.l1.peek(pool, node_id)
        return out

    async def refresh_node(self, pool: str, node_id: str) -> NodeSnapshot | None:
        """Re-read one node from Redis into L1, whatever L1 holds."""
        self._check_pool(pool)
        return await self._flight.do((pool, node_id), lambda: self._fill(pool, node_id))

    async def relist_pool(self, pool: str) -> int:
        """Re-read the whole pool from Redis (through the applier, in order). Returns nodes cached."""
        self._check_pool(pool)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(("relist", pool, done))
        await done
        return len(self.l1.pool(pool).nodes)

    async def select_nodes(
        self,
        pool: str,
        count: int = 1,
        requirements: Requirements | None = None,
        *,
        policy: str | None = None,
    ) -> Selection:
        """Pick placeable nodes from L1 (no lock, no I/O); explains what was filtered."""
        self._check_pool(pool)
        if self.config.cache.stale_reads == "refuse":
            age = time.monotonic() - self._last_heard
            if age > self.config.cache.staleness_bound_s:
                self._metrics.inc("stale_refusals")
                raise StaleRead(age, self.config.cache.staleness_bound_s)
        return select(
            self.l1.pool(pool),
            pool=pool,
            count=count,
            requirements=requirements,
            policy=policy or self.config.cache.policy,
            rng=self._rng,
        )

    async def place_job(
        self, pool: str, job_id: str, requirements: Requirements | None = None, *, policy: str | None = None
    ) -> Placement:
        """Select from L1, then admit at the first candidate that accepts (see ``place``)."""
        return await place(self, pool, job_id, requirements, policy=policy)

    # ================================================================== writes
    async def _write(self, op: str, pool: str, node_id: str, payload: dict[str, Any], call: Any) -> Any:
        """Run a write; in LOCAL_ONLY (or when this failure opens the circuit) journal it instead.

        Returns the call's result, or the journal entry when journaled.
        """
        self._check_pool(pool)
        # While a journal is pending, new writes queue behind it: a live job_finish must not
        # reach Redis before the journaled job_start it undoes.
        if self.modes.mode is not Mode.LOCAL_ONLY and not len(self.journal):
            try:
                result = await call()
            except RedisUnavailable as exc:
                self._signal(Signal.REDIS_FAILED, f"{op}: {exc}")
                if self.modes.mode is not Mode.LOCAL_ONLY:
                    raise
            else:
                self._heard()
                self._signal(Signal.REDIS_OK)
                return result
        try:
            entry = self.journal.append(op, pool, node_id, payload, now=time.monotonic())
        except JournalFull:
            self._metrics.inc("journal_rejections")
            raise
        self._metrics.inc("journal_appends")
        return entry

    async def register_node(self, spec: NodeSpec) -> int:
        """Create or replace a node record; returns its version (0 when journaled)."""
        result = await self._write(
            "register", spec.pool, spec.node_id, {"spec": spec}, lambda: self.store.register(spec)
        )
        return 0 if isinstance(result, JournalEntry) else int(result)

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
        result = await self._write(
            "heartbeat", pool, node_id, {"beat": beat}, lambda: self.store.heartbeat(beat)
        )
        if isinstance(result, JournalEntry):
            return HeartbeatResult(
                node_id=node_id, version=self.l1.version_of(pool, node_id), changed=False, journaled=True
            )
        return result

    async def heartbeat_many(self, beats: Sequence[Heartbeat]) -> list[HeartbeatResult]:
        """Heartbeats in one pipelined round trip (journaled one by one in LOCAL_ONLY)."""
        if not beats:
            return []
        for beat in beats:
            self._check_pool(beat.pool)
        if self.modes.mode is not Mode.LOCAL_ONLY and not len(self.journal):
            try:
                results = await self.store.heartbeat_many(beats)
            except RedisUnavailable as exc:
                self._signal(Signal.REDIS_FAILED, f"heartbeat x{len(beats)}: {exc}")
                if self.modes.mode is not Mode.LOCAL_ONLY:
                    raise
            else:
                self._heard()
                self._signal(Signal.REDIS_OK)
                return results
        return [
            await self.heartbeat(b.pool, b.node_id, load=b.load, running_jobs=b.running_jobs, spec=b.spec)
            for b in beats
        ]

    async def remove_node(self, pool: str, node_id: str) -> bool:
        result = await self._write("remove", pool, node_id, {}, lambda: self.store.remove(pool, node_id))
        if isinstance(result, JournalEntry):
            return self.l1.peek(pool, node_id) is not None
        if result:
            self.l1.remove(pool, node_id, int(result))
        return bool(result)

    async def job_start(self, pool: str, node_id: str, job_id: str) -> Admission:
        """Admission control in Redis; an admission is reflected in L1 at once ("assumed")."""
        self._check_pool(pool)
        if self.modes.mode is Mode.LOCAL_ONLY or len(self.journal):
            return self._admit_locally(pool, node_id, job_id)
        try:
            admission = await self.store.job_start(pool, node_id, job_id)
        except RedisUnavailable as exc:
            self._signal(Signal.REDIS_FAILED, f"job_start: {exc}")
            if self.modes.mode is Mode.LOCAL_ONLY:
                return self._admit_locally(pool, node_id, job_id)
            raise
        self._heard()
        self._signal(Signal.REDIS_OK)
        self._metrics.inc("admissions" if admission.admitted else "rejections")
        base = self.l1.peek(pool, node_id)
        if base is not None and admission.version > 0:
            # Our own write told us the node's job count at a version: use it now rather than
            # wait for the event (it also corrects a stale "free" view after a 'full' rejection).
            self.l1.assume(base.with_jobs(admission.current_jobs, admission.version), time.monotonic())
        return admission

    def _admit_locally(self, pool: str, node_id: str, job_id: str) -> Admission:
        """LOCAL_ONLY: admit against the local view and journal; Redis re-checks on replay."""
        node = self.l1.peek(pool, node_id)
        if node is None or not is_placeable(node):
            reason = "not_alive" if node is None else ("draining" if node.status != "up" else "full")
            self._metrics.inc("rejections")
            return Admission(
                admitted=False,
                node_id=node_id,
                job_id=job_id,
                reason=reason,
                version=node.version if node else 0,
            )
        try:
            self.journal.append("job_start", pool, node_id, {"job_id": job_id}, now=time.monotonic())
        except JournalFull:
            self._metrics.inc("journal_rejections")
            raise
        self._metrics.inc("journal_appends")
        # Same version: the local count is an assumption until Redis confirms it on replay.
        self.l1.assume(node.with_jobs(node.current_jobs + 1, node.version), time.monotonic())
        return Admission(
            admitted=True,
            node_id=node_id,
            job_id=job_id,
            version=node.version,
            reason="journaled",
            current_jobs=node.current_jobs + 1,
            max_jobs=node.max_jobs,
        )

    async def job_finish(self, pool: str, node_id: str, job_id: str) -> bool:
        """Release ``job_id``'s slot. Idempotent; True if this call released it (or journaled it)."""
        result = await self._write(
            "job_finish",
            pool,
            node_id,
            {"job_id": job_id},
            lambda: self.store.job_finish(pool, node_id, job_id),
        )
        if isinstance(result, JournalEntry):
            return True
        released, version, current = result
        base = self.l1.peek(pool, node_id)
        if released and base is not None:
            self.l1.assume(base.with_jobs(current, version), time.monotonic())
        return released

    async def reap_once(self) -> list[str]:
        """Reap dead nodes of every pool, unless within the post-outage grace period."""
        recovered = self.modes.last_recovered_at
        if self.modes.mode is not Mode.NORMAL or (
            recovered is not None and time.monotonic() - recovered < self.config.nodes.reap_grace_s
        ):
            return []
        reaped: list[str] = []
        for pool in sorted(self._pools):
            reaped += await self.store.reap(pool)
        self._metrics.inc("reaped", len(reaped))
        return reaped

    # ============================================================ deprecated
    async def job_started(self, pool: str, node_id: str, job_id: str) -> Admission:
        """Deprecated alias of :meth:`job_start`."""
        warnings.warn("job_started() is deprecated; use job_start()", DeprecationWarning, stacklevel=2)
        return await self.job_start(pool, node_id, job_id)

    async def job_finished(self, pool: str, node_id: str, job_id: str) -> bool:
        """Deprecated alias of :meth:`job_finish`."""
        warnings.warn("job_finished() is deprecated; use job_finish()", DeprecationWarning, stacklevel=2)
        return await self.job_finish(pool, node_id, job_id)
