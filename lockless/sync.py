"""The pool synchroniser: keeps L1 in step with Redis (DESIGN.md section 5).

Everything that changes L1 because of what Redis says happens here, in one task (the
applier), in ``seq`` order: change events from the subscription, gap catch-up from the
pool log, relists, recovery after an outage (journal replay, then every pool repaired)
and the periodic probe's findings. Work reaches the applier as typed items on one queue
(:data:`Work`); what to do with an event, or with Redis's position of a pool, is decided
by the pure ``PoolSequencer``; this class carries the decisions out through the store.

One exception keeps events cheap: the subscriber's callback applies an in-order event
inline when the applier is idle and its queue empty, so the order is the same either way.

Facts that bear on the mode (a gap, a new epoch, lost data, caught up) are
reported to the :class:`~lockless.health.HealthMonitor`, never acted on here, each naming
the pools it concerns; recovery and the probe work per mode domain (one domain of every
pool on one server, a domain per pool on a cluster: ``health.py``), so a shard that
fails or loses its subscription delays only the repair of its own pools.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable

from lockless.clock import Clock
from lockless.config import SubscriberConfig
from lockless.core.l1 import L1Store
from lockless.core.modes import Mode
from lockless.core.sequencer import (
    APPLY,
    DIVERGED,
    IGNORE,
    NEW_EPOCH,
    RELIST,
    CatchUp,
    PoolSequencer,
    Verdict,
)
from lockless.core.snapshot import ChangeEvent, parse_event
from lockless.errors import MalformedRecord, RedisUnavailable
from lockless.health import Domain, Fact, HealthMonitor
from lockless.metrics import Metrics
from lockless.probe import PoolProbe
from lockless.redis.pool_reader import PoolPosition
from lockless.redis.store import RedisStore
from lockless.work import EventArrived, Recover, RelistPool, RepairPool, Work

log = logging.getLogger("lockless.registry")




class PoolSync:
    """L1's synchroniser and the subscription's sink. See the module docstring."""

    def __init__(
        self,
        config: SubscriberConfig,
        *,
        pools: Iterable[str],
        store: RedisStore,
        l1: L1Store,
        health: HealthMonitor,
        replay_journal: Callable[[Collection[str]], Awaitable[None]],
        stream_up: Callable[[str], bool],
        clock: Clock,
        metrics: Metrics,
        instance: str,
    ) -> None:
        self._config = config
        self._pools = frozenset(pools)
        self._store = store
        self._l1 = l1
        self._health = health
        self._replay_journal = replay_journal
        self._stream_up = stream_up
        self._clock = clock
        self._metrics = metrics
        self._instance = instance
        self.sequencer = PoolSequencer()
        self._queue: asyncio.Queue[Work] = asyncio.Queue()
        #: Domains whose recovery is running (see _recover).
        self._recovering: set[int] = set()
        # False while the applier works on an item (see on_message's fast path).
        self._idle = False
        self._probe = PoolProbe(
            pools=self._pools,
            store=store,
            l1=l1,
            health=health,
            sequencer=self.sequencer,
            metrics=metrics,
            request=self.request,
            queue_empty=self._queue.empty,
            stream_up=stream_up,
        )

    def request(self, work: Work) -> None:
        """Queue work for the applier."""
        self._queue.put_nowait(work)

    def caught_up(self) -> bool:
        """NORMAL, nothing queued, every pool positioned."""
        positioned = all(self.sequencer.last_seq(p) is not None for p in self._pools)
        return self._health.mode is Mode.NORMAL and self._queue.empty() and positioned

    # ------------------------------------------------------- subscription sink
    # Callbacks of the subscriber task: they only enqueue (or apply in order, see above).
    def on_message(self, channel: str, data: bytes) -> None:
        pool = self._store.keys.pool_of_channel(channel)
        self._health.heard_pool(pool)  # type: ignore[arg-type]
        if self._idle and self._queue.empty() and self._apply_inline(pool, data):
            return
        self._queue.put_nowait(EventArrived(channel, data))

    def _apply_inline(self, pool: str | None, data: bytes) -> bool:
        try:
            event = parse_event(data)
        except MalformedRecord:
            return False  # the applier counts it and repairs
        if event.pool != pool or pool not in self._pools:
            return False
        decision = self.sequencer.on_event(pool, event.seq, event.epoch, event.ts_us)
        if decision is APPLY:
            self._apply(event, live=True)
            return True
        if decision is IGNORE:
            self._metrics.counters["events_ignored"] += 1
            return True
        return False  # on_event changed no position for these; the applier judges again

    def on_subscribed(self, reconnect: bool, pools: frozenset[str] | None = None) -> None:
        self._health.heard(pools)
        if reconnect:
            self._metrics.inc("reconnects")
            # Maybe to another server (a failover): the history is checked before events follow on.
            self.sequencer.unverify(self._pools if pools is None else pools & self._pools)
            self.request(Recover("event subscription re-established", pools))

    def on_stream_lost(self, reason: str, pools: frozenset[str] | None = None) -> None:
        self._health.report(Fact.SUBSCRIPTION_LOST, f"event subscription lost: {reason}", pools)

    def on_pong(self, rtt_s: float, pools: frozenset[str] | None = None) -> None:
        self._health.heard(pools)

    # ------------------------------------------------------------ the applier
    async def run(self, closing: Callable[[], bool]) -> None:
        """The applier task: one work item at a time, until ``closing()``."""
        while not closing():
            self._idle = True
            work = await self._queue.get()
            self._idle = False
            done = work.done if isinstance(work, RelistPool) else None
            try:
                match work:
                    case EventArrived(channel, data):
                        await self._on_event(channel, data)
                    case RelistPool(pool):
                        await self.relist(pool)
                    case RepairPool(pool, reason):
                        await self._repair(pool, reason)
                    case Recover(reason, pools):
                        await self._recover(reason, pools)
            except RedisUnavailable as exc:
                concerned = _pools_of(work, self._store.keys.pool_of_channel)
                self._health.report(Fact.REDIS_FAILED, f"applier: {exc}", concerned)
                self._health.report(Fact.REPAIR_INTERRUPTED, f"repair interrupted: {exc}", concerned)
                if done is not None and not done.done():
                    done.set_exception(exc)
            except Exception as exc:  # the loop must survive anything one item does
                log.exception("%s: applier failed on %r", self._instance, work)
                if done is not None and not done.done():
                    done.set_exception(exc)
            else:
                if done is not None and not done.done():
                    done.set_result(None)

    async def _on_event(self, channel: str, data: bytes) -> None:
        pool = self._store.keys.pool_of_channel(channel)
        try:
            event = parse_event(data)
            if pool not in self._pools or event.pool != pool:
                raise MalformedRecord(event.node_id, "pool", f"is {event.pool!r} on channel {channel!r}")
        except MalformedRecord as exc:
            self._metrics.inc("events_malformed")
            log.error("%s: bad event on %s (%s); relisting", self._instance, channel, exc)
            if pool in self._pools:
                self.sequencer.invalidate(pool)
                await self._repair(pool, f"malformed event: {exc}")
            return
        await self._judge(event)

    async def _judge(self, event: ChangeEvent) -> None:
        decision = self.sequencer.on_event(event.pool, event.seq, event.epoch, event.ts_us)
        if decision is APPLY:
            self._apply(event, live=True)
        elif decision is IGNORE:
            self._metrics.inc("events_ignored")
        elif decision is NEW_EPOCH or decision is DIVERGED:
            # Redis lost data: seqs restarted (new epoch), or writes L1 applied were lost and their
            # seqs reused (a failover): the event cannot be placed by seq.
            pools = frozenset({event.pool})
            if decision is NEW_EPOCH:
                self._health.report(Fact.NEW_EPOCH, f"pool {event.pool} epoch changed", pools)
            else:
                self._metrics.inc("history_diverged")
                self._health.report(
                    Fact.DIVERGED,
                    f"pool {event.pool}: seq {event.seq} is another write than L1 applied",
                    pools,
                )
            await self.relist(event.pool)
            if self._health.mode_of(event.pool) is Mode.L2_ONLY and not self._is_recovering(event.pool):
                self.request(Recover(f"pool {event.pool} relisted after epoch change", pools))
        elif decision is RELIST:
            await self._repair(event.pool, "event before the pool was listed")
            await self._judge(event)
        elif isinstance(decision, CatchUp):
            self._metrics.inc("gaps")
            pools = frozenset({event.pool})
            self._health.report(
                Fact.GAP, f"gap in {event.pool}: expected {decision.from_seq}, got {event.seq}", pools
            )
            await self._catch_up(event.pool, decision.to_seq)
            if self.sequencer.last_seq(event.pool) is not None:
                await self._judge(event)
            if (
                self._health.mode_of(event.pool) is Mode.L2_ONLY
                and self._stream_up(event.pool)
                and not self._is_recovering(event.pool)
            ):
                self._health.report(Fact.CAUGHT_UP, f"gap in {event.pool} repaired", pools)

    def _apply(self, event: ChangeEvent, *, live: bool) -> None:
        if event.record is None:
            self._l1.remove(event.pool, event.node_id, event.version)
        else:
            self._l1.apply(event.record, self._clock.monotonic())
        self._metrics.counters["events_applied"] += 1
        if live:
            sent_us = event.ts_us if event.ts_us is not None else event.ts_ms * 1000
            self._metrics.observe_us("propagation_us", self._clock.wall() * 1e6 - sent_us)

    # ---------------------------------------------------------------- repairs
    async def _catch_up(self, pool: str, to_seq: int) -> None:
        """Apply the pool log from ``last_seq + 1`` through ``to_seq``; relist if it was trimmed."""
        started = self._clock.monotonic()
        while (last := self.sequencer.last_seq(pool)) is not None and last < to_seq:
            read = await self._store.read_log(pool, last + 1, count=self._config.catchup_batch)
            if not read.complete or read.malformed:
                self._metrics.inc("events_malformed", len(read.malformed))
                await self.relist(pool)
                return
            for event in read.events:
                decision = self.sequencer.on_event(pool, event.seq, event.epoch, event.ts_us)
                if decision is DIVERGED:
                    self._metrics.inc("history_diverged")
                if decision is NEW_EPOCH or decision is DIVERGED:
                    # The log is of another life of the pool than L1's records: the relist
                    # sees the changed epoch, counts it and resets.
                    await self.relist(pool)
                    return
                if decision is APPLY:
                    self._apply(event, live=False)
            if self.sequencer.last_seq(pool) == last:  # nothing applied: the log has a hole
                await self.relist(pool)
                return
        self._metrics.inc("catchups")
        self._metrics.observe_us("catchup_us", (self._clock.monotonic() - started) * 1e6)

    async def relist(self, pool: str) -> None:
        """Install a full listing of ``pool`` read from Redis (``seq`` read before the records)."""
        started = self._clock.monotonic()
        high_water = self._l1.high_water(pool)
        listing = await self._store.relist(pool, batch=self._config.catchup_batch)
        lost = self.sequencer.lost_data(pool, listing.seq, listing.epoch, high_water)
        if lost:
            self._metrics.inc("epoch_changes")
            log.warning("%s: pool %s lost its data in Redis; versions restart", self._instance, pool)
        for bad in listing.malformed:
            self._metrics.inc("events_malformed")
            log.error("%s: relist of %s skipped a record: %s", self._instance, pool, bad)
        self._l1.replace_pool(pool, listing.nodes, self._clock.monotonic(), reset=lost, seq=listing.seq)
        self.sequencer.synced(pool, listing.seq, listing.epoch, listing.mark)
        self._health.heard((pool,))
        self._metrics.inc("relists")
        self._metrics.observe_us("catchup_us", (self._clock.monotonic() - started) * 1e6)

    async def _repair(self, pool: str, reason: str) -> None:
        """Bring one pool up to Redis: catch up from the log if possible, else relist."""
        log.info("%s: repairing pool %s (%s)", self._instance, pool, reason)
        high_water = self._l1.high_water(pool)
        at = self.sequencer.last_seq(pool)
        position = (await self._store.positions({pool: at}))[pool]
        await self._carry_out(pool, self._plan(pool, position, high_water))

    def _plan(self, pool: str, position: PoolPosition, high_water: int) -> Verdict | CatchUp:
        """The sequencer's plan for ``pool`` at Redis's ``position`` (counting a diverged history)."""
        if self.sequencer.diverged(pool, position.seq, position.mark, position.at):
            self._metrics.inc("history_diverged")
            self._health.report(
                Fact.DIVERGED, f"pool {pool}: Redis's log holds another write at seq {position.at}", (pool,)
            )
        return self.sequencer.plan(pool, position.seq, position.epoch, high_water, position.mark, position.at)

    async def _carry_out(self, pool: str, plan: Verdict | CatchUp) -> None:
        if plan is RELIST:
            await self.relist(pool)
        elif isinstance(plan, CatchUp):
            await self._catch_up(pool, plan.to_seq)

    def _is_recovering(self, pool: str) -> bool:
        return id(self._health.of[pool]) in self._recovering

    def _stream_up_all(self, domain: Domain) -> bool:
        return all(self._stream_up(p) for p in domain.pools)

    async def _recover(self, reason: str, pools: frozenset[str] | None = None) -> None:
        """After an outage or a reconnect: for each mode domain of ``pools`` (None: all) that is
        not LOCAL_ONLY, replay its journal, repair its pools, then report CAUGHT_UP for it.

        A domain whose Redis fails meanwhile is reported (REDIS_FAILED, REPAIR_INTERRUPTED)
        and left to its next recovery; the other domains go on (one server: one domain)."""
        for domain in self._health.domains_of(pools):
            if domain.mode is Mode.LOCAL_ONLY or id(domain) in self._recovering:
                continue
            try:
                await self._recover_domain(domain, reason)
            except RedisUnavailable as exc:
                self._health.report(Fact.REDIS_FAILED, f"applier: {exc}", domain.pools)
                self._health.report(Fact.REPAIR_INTERRUPTED, f"repair interrupted: {exc}", domain.pools)

    async def _recover_domain(self, domain: Domain, reason: str) -> None:
        self._recovering.add(id(domain))
        try:
            served = sorted(domain.pools & self._pools)
            await self._replay_journal(served)
            high_waters = {pool: self._l1.high_water(pool) for pool in served}
            positions = await self._store.positions({p: self.sequencer.last_seq(p) for p in served})
            for pool, position in positions.items():
                await self._carry_out(pool, self._plan(pool, position, high_waters[pool]))
        finally:
            self._recovering.discard(id(domain))
        if self._stream_up_all(domain):
            self._health.report(Fact.CAUGHT_UP, reason, domain.pools)

    # ------------------------------------------------------------------ probe
    async def probe(self, pools: Collection[str] | None = None) -> None:
        """Read the seq and epoch of ``pools`` (None: all): Redis liveness, lost data, and events
        lost silently; each mode domain is judged on its own pools' answers (``probe.py``)."""
        await self._probe.run(pools)


def _pools_of(work: Work, pool_of_channel: Callable[[str], str | None]) -> frozenset[str] | None:
    """The pools a work item concerns (None: every pool)."""
    match work:
        case EventArrived(channel, _):
            pool = pool_of_channel(channel)
            return frozenset({pool}) if pool is not None else None
        case RelistPool(pool) | RepairPool(pool, _):
            return frozenset({pool})
        case Recover(_, pools):
            return pools
    return None
