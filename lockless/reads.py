"""The read path: node reads and selection from L1, with Redis behind it (DESIGN.md section 4).

How a read is served is decided by one pure rule (``lockless.core.freshness``): the mode
says where (L1, L1 checked against Redis, last-known-good) and the staleness bound says
whether the answer is marked stale or refused. This module carries the plan out:

* an L1 hit in NORMAL mode takes no lock and does no I/O (the hot path, inlined);
* a miss or an expired entry reads Redis once per key however many readers miss at once
  (single flight), and remembers a node Redis does not have (negative cache);
* in L2_ONLY a read checks L1 against Redis within ``version_check_budget_s`` and serves
  L1 if Redis is slower; the check is never cancelled (its connection would be left
  mid-reply), it finishes in the background and refreshes L1 for the next reader;
* in LOCAL_ONLY reads serve last-known-good L1, marked stale.

A read of Redis fills L1 only with records of the life of the pool's data that L1's
records belong to: it reads the pool's epoch with them, and a record of another epoch
(Redis lost its data and the instance has not relisted yet) is answered but kept out of
L1, and the loss reported, so that L1 never mixes two lives under one epoch.

The mode and the data age of a read are those of its pool (its mode domain, ``health.py``):
on a cluster a pool whose shard is down serves last-known-good while the others read L1.

:meth:`ReadPath.cached` is the synchronous read for hot loops: L1 as it is, never I/O.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence

from lockless.clock import Clock
from lockless.config import CacheConfig
from lockless.core.freshness import Source, is_fresh, plan_read
from lockless.core.l1 import NEGATIVE, L1Store, PoolIndex
from lockless.core.modes import Mode
from lockless.core.selection import Selection, select
from lockless.core.snapshot import NodeSnapshot, Requirements
from lockless.errors import MalformedRecord, RedisUnavailable, StaleRead, UnknownPool
from lockless.health import Fact, HealthMonitor
from lockless.metrics import Metrics
from lockless.protocol import ReadResult
from lockless.redis.store import RedisStore
from lockless.singleflight import SingleFlight

log = logging.getLogger("lockless.registry")


class ReadPath:
    """Reads of one instance. See the module docstring."""

    def __init__(
        self,
        config: CacheConfig,
        *,
        pools: frozenset[str],
        store: RedisStore,
        l1: L1Store,
        health: HealthMonitor,
        epoch_of: Callable[[str], str | None],
        on_lost_data: Callable[[str, str], None],
        clock: Clock,
        metrics: Metrics,
        rng: random.Random,
        instance: str,
    ) -> None:
        self._config = config
        self._pools = pools
        self._store = store
        self._l1 = l1
        self._l1_pools = l1.pools
        self._health = health
        #: pool -> its mode domain (mode and last_heard as plain attributes: the hot path reads them).
        self._domains = health.of
        #: The epoch of L1's records of a pool (the sequencer's), and where a loss of data is told.
        self._epoch_of, self._on_lost_data = epoch_of, on_lost_data
        self._clock = clock
        self._metrics = metrics
        self._counters = metrics.counters
        self._rng = rng
        self._instance = instance
        self._bound = config.staleness_bound_s
        self._refuse_stale = config.stale_reads == "refuse"
        self.flight: SingleFlight[NodeSnapshot | None] = SingleFlight()

    def check_pool(self, pool: str) -> None:
        if pool not in self._pools:
            raise UnknownPool(pool, tuple(sorted(self._pools)))

    def l1_pool(self, pool: str) -> PoolIndex | None:
        """L1's index of ``pool`` (None before anything was cached for it)."""
        return self._l1_pools.get(pool)

    def _check_fresh(self, pool: str) -> None:
        """Raise StaleRead if ``pool``'s data is past the bound and the policy refuses stale reads."""
        if self._refuse_stale:
            age = self._health.last_sync_age(pool)
            if not is_fresh(age, self._bound):
                self._metrics.inc("stale_refusals")
                raise StaleRead(age, self._bound)

    # ----------------------------------------------------------------- reads
    async def get_node(self, pool: str, node_id: str) -> NodeSnapshot | None:
        """The node's snapshot, or None. An L1 hit in NORMAL mode takes no lock and does no I/O."""
        # The hit path inlines L1Store.get and the freshness rule: it runs on every placement
        # and every attribute hop shows at this scale (about 1 us in all).
        domain = self._domains.get(pool)
        if domain is None:
            return (await self.read_node(pool, node_id)).node  # raises UnknownPool
        mode = domain.mode
        if mode is Mode.NORMAL and (index := self._l1_pools.get(pool)) is not None:
            node = index.nodes.get(node_id)
            if node is not None:
                now = self._clock.monotonic()
                if index.expiry[node_id] > now and is_fresh(now - domain.last_heard, self._bound):
                    self._counters["l1_hits"] += 1
                    return node
        elif mode is Mode.LOCAL_ONLY and not self._refuse_stale and (index := self._l1_pools.get(pool)):
            # An outage must not make reads slower: last-known-good, as read_node would serve it.
            # (A PoolIndex is always truthy: the walrus only tells a served pool from None.)
            node = index.nodes.get(node_id)
            if node is not None:
                self._counters["stale_reads"] += 1
                return node
        return (await self.read_node(pool, node_id)).node

    def cached(self, pool: str, node_id: str) -> NodeSnapshot | None:
        """L1's snapshot of the node as it is (None if not cached). Never awaits, never does I/O.

        For hot loops that must not yield. It does not refresh an expired entry or fill a
        miss, and counts nothing (the hit/miss counters describe the async reads, whose
        misses go to Redis); it refuses past the staleness bound when the policy is ``refuse``.
        """
        index = self._l1_pools.get(pool)
        if index is None:
            self.check_pool(pool)  # raises for a pool not served; a served pool is just empty
            return None
        if self._refuse_stale:
            self._check_fresh(pool)
        return index.nodes.get(node_id)

    async def read_node(self, pool: str, node_id: str) -> ReadResult:
        """Like :meth:`get_node`, with the data's age and whether it is stale."""
        self.check_pool(pool)
        age = self._health.last_sync_age(pool)
        mode = self._domains[pool].mode
        plan = plan_read(mode, age, self._bound, refuse_stale=self._refuse_stale)
        if plan is None:
            self._metrics.inc("stale_refusals")
            raise StaleRead(age, self._bound)
        if plan.stale:
            self._metrics.inc("stale_reads")
        if plan.source is Source.LAST_KNOWN_GOOD:
            node = self._l1.peek(pool, node_id)
        elif plan.source is Source.CHECKED:
            node = await self._checked_read(pool, node_id)
        else:
            cached = self._l1.get(pool, node_id, self._clock.monotonic())
            if cached is NEGATIVE:
                self._metrics.inc("negative_hits")
                node = None
            elif cached is not None:
                self._metrics.inc("l1_hits")
                node = cached  # type: ignore[assignment]
            else:
                self._metrics.inc("misses")
                node = await self.flight.do((pool, node_id), lambda: self._fill(pool, node_id))
        return ReadResult(node=node, last_sync_age_s=age, stale=plan.stale, mode=mode)

    async def _checked_read(self, pool: str, node_id: str) -> NodeSnapshot | None:
        """L2_ONLY: L1 checked against Redis within the budget; on timeout, L1 as it is."""
        self._metrics.inc("version_checks")
        task = self.flight.task((pool, node_id), lambda: self._fill(pool, node_id))
        done, _ = await asyncio.wait({task}, timeout=self._config.version_check_budget_s)
        if not done:
            self._metrics.inc("version_check_timeouts")
            return self._l1.peek(pool, node_id)
        if task.exception() is not None:
            return self._l1.peek(pool, node_id)
        return task.result()

    async def _fill(self, pool: str, node_id: str) -> NodeSnapshot | None:
        """Read one record from Redis into L1; return the newest snapshot known afterwards."""
        try:
            epoch, found = await self._store.get_nodes_and_epoch(pool, [node_id])
            record = found[node_id]
            if isinstance(record, MalformedRecord):
                raise record
        except MalformedRecord as exc:
            self._metrics.inc("events_malformed")
            log.error("%s: %s", self._instance, exc)
            raise
        except RedisUnavailable as exc:
            self._health.report(Fact.REDIS_FAILED, str(exc), (pool,))
            if (known := self._l1.peek(pool, node_id)) is not None:
                return known
            raise
        self._health.heard((pool,))
        self._metrics.inc("l2_reads")
        now = self._clock.monotonic()
        if record is None:
            if self._l1.peek(pool, node_id) is not None:
                # Expired entry of a node Redis no longer has: its removal event is overdue.
                self._l1.remove(pool, node_id, self._l1.version_of(pool, node_id))
            self._l1.remember_missing(pool, node_id, now)
            return None
        if self._other_life(pool, epoch):
            return record  # Redis's answer, but not L1's life: the relist will install it
        self._l1.apply(record, now)
        return self._l1.peek(pool, node_id)

    def _other_life(self, pool: str, epoch: str | None) -> bool:
        """True, and the loss reported, if records read with ``epoch`` belong to another life of the
        pool's data than L1's (an unknown epoch of L1 cannot tell: ``high_water`` covers that)."""
        known = self._epoch_of(pool)
        if known is None or epoch == known:
            return False
        self._on_lost_data(pool, f"a read of {pool} found epoch {epoch!r}, L1 holds {known!r}")
        return True

    async def refresh_node(self, pool: str, node_id: str) -> NodeSnapshot | None:
        """Re-read one node from Redis into L1, whatever L1 holds."""
        self.check_pool(pool)
        return await self.flight.do((pool, node_id), lambda: self._fill(pool, node_id))

    async def get_nodes_batch(self, pool: str, node_ids: Sequence[str]) -> dict[str, NodeSnapshot | None]:
        """Several nodes; the L1 misses are read in one pipelined round trip."""
        self.check_pool(pool)
        now = self._clock.monotonic()
        out: dict[str, NodeSnapshot | None] = {}
        missing: list[str] = []
        local = self._domains[pool].mode is Mode.LOCAL_ONLY
        for node_id in node_ids:
            cached = self._l1.peek(pool, node_id) if local else self._l1.get(pool, node_id, now)
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
                epoch, records = await self._store.get_nodes_and_epoch(pool, missing)
            except RedisUnavailable as exc:
                self._health.report(Fact.REDIS_FAILED, str(exc), (pool,))
                raise
            self._health.heard((pool,))
            self._metrics.inc("l2_reads", len(missing))
            other_life = self._other_life(pool, epoch)
            for node_id, record in records.items():
                if isinstance(record, MalformedRecord):
                    self._metrics.inc("events_malformed")
                    log.error("%s: %s", self._instance, record)
                    out[node_id] = None
                elif record is None:
                    self._l1.remember_missing(pool, node_id, now)
                    out[node_id] = None
                elif other_life:
                    out[node_id] = record
                else:
                    self._l1.apply(record, now)
                    out[node_id] = self._l1.peek(pool, node_id)
        return out

    def select_nodes(
        self, pool: str, count: int, requirements: Requirements | None, policy: str | None
    ) -> Selection:
        """Pick placeable nodes from L1 (no lock, no I/O); explains what was filtered."""
        self.check_pool(pool)
        self._check_fresh(pool)
        return select(
            self._l1.pool(pool),
            pool=pool,
            count=count,
            requirements=requirements,
            policy=policy or self._config.policy,
            rng=self._rng,
        )
