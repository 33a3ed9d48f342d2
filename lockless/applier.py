"""The Redis-driven half of :class:`~lockless.registry.LocklessRegistry`.

Everything that changes L1 because of what Redis says lives here: the subscriber's
callbacks, the single applier task that applies events in ``seq`` order, gap catch-up
from the pool log, relists, recovery after an outage (journal replay, then catch-up),
and the health probe that feeds the mode controller. The registry class mixes this in;
both halves share one instance's state (``l1``, ``sequencer``, ``modes``, ``journal``,
``store``, metrics), so this is a split of one class across two files for size, not a
second object with a protocol between them.

Ordering rule: only the applier task mutates L1 from Redis data, except the subscriber
fast path, which applies an in-order event inline only while the applier is idle and
its queue is empty, so the order is the same either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from lockless.config import RegistryConfig
from lockless.core.journal import WriteJournal
from lockless.core.l1 import L1Store
from lockless.core.modes import Mode, ModeController, Signal
from lockless.core.sequencer import APPLY, IGNORE, RELIST, CatchUp, PoolSequencer
from lockless.core.snapshot import ChangeEvent, NodeSnapshot, parse_event
from lockless.errors import MalformedRecord, RedisUnavailable
from lockless.metrics import Metrics
from lockless.protocol import Admission
from lockless.redis.store import RedisStore

if TYPE_CHECKING:
    from lockless.redis.subscriber import Subscriber

log = logging.getLogger("lockless.registry")


class EventApplier:
    """Mixin: event application, repair, recovery and health probing (see module docstring)."""

    # State owned by LocklessRegistry.__init__.
    config: RegistryConfig
    instance: str
    store: RedisStore
    l1: L1Store
    sequencer: PoolSequencer
    modes: ModeController
    journal: WriteJournal
    replay_rejections: deque[Admission]
    _metrics: Metrics
    _pools: frozenset[str]
    _queue: asyncio.Queue[tuple[str, str, Any]]
    _subscriber: Subscriber
    _last_heard: float
    _behind: dict[str, int]
    _recovering: bool
    _applier_idle: bool
    _closing: bool

    def _signal(self, signal: Signal, reason: str = "") -> None:  # pragma: no cover - defined by the registry
        raise NotImplementedError

    async def reap_once(self) -> list[str]:  # pragma: no cover - defined by the registry
        raise NotImplementedError

    # ======================================================= event application
    # Subscriber callbacks run in the subscriber task; they only enqueue, so that every
    # L1 mutation stays in the applier task, in order.
    def on_message(self, channel: str, data: bytes) -> None:
        self._heard()
        # Fast path: with the applier idle and nothing queued, an in-order event is applied
        # right here, saving a queue hop and a task switch per event. Anything else (a gap,
        # a bad event, an epoch change) goes through the applier, which keeps the order.
        if self._applier_idle and self._queue.empty() and self._apply_inline(channel, data):
            return
        self._queue.put_nowait(("event", channel, data))

    def _apply_inline(self, channel: str, data: bytes) -> bool:
        pool = self.store.keys.pool_of_channel(channel)
        try:
            event = parse_event(data)
        except MalformedRecord:
            return False
        if event.pool != pool or pool not in self._pools:
            return False
        if event.epoch is not None and event.epoch != self.sequencer.epoch(pool):
            return False
        decision = self.sequencer.on_event(pool, event.seq)
        if decision == APPLY:
            self._apply(event, live=True)
            return True
        if decision == IGNORE:
            self._metrics.counters["events_ignored"] += 1
            return True
        return False  # on_event changed nothing for these; the applier judges again

    def on_subscribed(self, reconnect: bool) -> None:
        self._heard()
        if reconnect:
            self._metrics.inc("reconnects")
            self._queue.put_nowait(("recover", "", "event subscription re-established"))

    def on_stream_lost(self, reason: str) -> None:
        self._signal(Signal.STREAM_LOST, f"event subscription lost: {reason}")

    def on_pong(self, rtt_s: float) -> None:
        self._heard()

    def _heard(self) -> None:
        self._last_heard = time.monotonic()

    async def _apply_loop(self) -> None:
        while not self._closing:
            self._applier_idle = True
            kind, target, payload = await self._queue.get()
            self._applier_idle = False
            try:
                if kind == "event":
                    await self._on_event(target, payload)
                elif kind == "relist":
                    await self._relist(target)
                elif kind == "repair":
                    await self._repair(target, payload)
                elif kind == "recover":
                    await self._recover(payload)
                if isinstance(payload, asyncio.Future) and not payload.done():
                    payload.set_result(None)
            except RedisUnavailable as exc:
                self._signal(Signal.REDIS_FAILED, f"applier: {exc}")
                self._signal(Signal.STREAM_LOST, f"repair interrupted: {exc}")
                if isinstance(payload, asyncio.Future) and not payload.done():
                    payload.set_exception(exc)
            except Exception as exc:  # the loop must survive anything one item does
                log.exception("%s: applier failed on %s %s", self.instance, kind, target)
                if isinstance(payload, asyncio.Future) and not payload.done():
                    payload.set_exception(exc)

    async def _on_event(self, channel: str, data: bytes) -> None:
        pool = self.store.keys.pool_of_channel(channel)
        try:
            event = parse_event(data)
            if pool not in self._pools or event.pool != pool:
                raise MalformedRecord(event.node_id, "pool", f"is {event.pool!r} on channel {channel!r}")
        except MalformedRecord as exc:
            self._metrics.inc("events_malformed")
            log.error("%s: bad event on %s (%s); relisting", self.instance, channel, exc)
            if pool in self._pools:
                self.sequencer.invalidate(pool)
                await self._repair(pool, f"malformed event: {exc}")
            return
        await self._judge(event, live=True)

    async def _judge(self, event: ChangeEvent, *, live: bool) -> None:
        if self.sequencer.foreign_epoch(event.pool, event.epoch):
            # Redis lost its data: seqs restarted, so the event cannot be placed by seq.
            self._signal(Signal.STREAM_LOST, f"pool {event.pool} epoch changed")
            await self._relist(event.pool)
            if self.modes.mode is Mode.L2_ONLY and not self._recovering:
                self._queue.put_nowait(("recover", "", f"pool {event.pool} relisted after epoch change"))
            return
        decision = self.sequencer.on_event(event.pool, event.seq)
        if decision == APPLY:
            self._apply(event, live=live)
        elif decision == IGNORE:
            self._metrics.inc("events_ignored")
        elif decision == RELIST:
            await self._repair(event.pool, "event before the pool was listed")
            await self._judge(event, live=live)
        elif isinstance(decision, CatchUp):
            self._metrics.inc("gaps")
            self._signal(
                Signal.STREAM_LOST, f"gap in {event.pool}: expected {decision.from_seq}, got {event.seq}"
            )
            await self._catch_up(event.pool, decision.to_seq)
            if self.sequencer.last_seq(event.pool) is not None:
                await self._judge(event, live=live)
            if (
                self.modes.mode is Mode.L2_ONLY
                and self._subscriber.connected.is_set()
                and not self._recovering
            ):
                self._signal(Signal.CAUGHT_UP, f"gap in {event.pool} repaired")

    def _apply(self, event: ChangeEvent, *, live: bool) -> None:
        if event.record is None:
            self.l1.remove(event.pool, event.node_id, event.version)
        else:
            self.l1.apply(event.record, time.monotonic())
        self._metrics.counters["events_applied"] += 1
        if live:
            sent_us = event.ts_us if event.ts_us is not None else event.ts_ms * 1000
            self._metrics.observe_us("propagation_us", time.time() * 1e6 - sent_us)

    async def _catch_up(self, pool: str, to_seq: int) -> None:
        """Apply the pool log from ``last_seq + 1`` through ``to_seq``; relist if it was trimmed."""
        started = time.perf_counter()
        while True:
            last = self.sequencer.last_seq(pool)
            if last is None or last >= to_seq:
                break
            read = await self.store.read_log(pool, last + 1, count=self.config.subscriber.catchup_batch)
            if not read.complete or read.malformed:
                if read.malformed:
                    self._metrics.inc("events_malformed", len(read.malformed))
                await self._relist(pool)
                return
            for event in read.events:
                if self.sequencer.foreign_epoch(pool, event.epoch):
                    # The log is of another life of the pool than L1's records: the relist
                    # sees the changed epoch, counts it and resets.
                    await self._relist(pool)
                    return
                if self.sequencer.on_event(pool, event.seq) == APPLY:
                    self._apply(event, live=False)
            if self.sequencer.last_seq(pool) == last:  # nothing applied: the log has a hole
                await self._relist(pool)
                return
        self._metrics.inc("catchups")
        self._metrics.observe_us("catchup_us", (time.perf_counter() - started) * 1e6)

    def _lost_data(self, pool: str, seq: int, epoch: str | None, high_water: int) -> bool:
        """Redis lost this pool's data: a new epoch, or a seq below a version L1 had seen.

        ``high_water`` must be read *before* the read that returned ``seq``: our own writes
        may put newer versions into L1 while that read is in flight.
        """
        return self.sequencer.epoch_changed(pool, epoch) or seq < high_water

    async def _relist(self, pool: str, *, reset: bool = False) -> None:
        started = time.perf_counter()
        high_water = self.l1.high_water(pool)
        listing = await self.store.relist(pool, batch=self.config.subscriber.catchup_batch)
        epoch_changed = self._lost_data(pool, listing.seq, listing.epoch, high_water)
        if epoch_changed:
            self._metrics.inc("epoch_changes")
            log.warning(
                "%s: pool %s epoch changed: Redis lost its data; versions restart", self.instance, pool
            )
        for bad in listing.malformed:
            self._metrics.inc("events_malformed")
            log.error("%s: relist of %s skipped a record: %s", self.instance, pool, bad)
        self.l1.replace_pool(
            pool, listing.nodes, time.monotonic(), reset=reset or epoch_changed, seq=listing.seq
        )
        self.sequencer.synced(pool, listing.seq, listing.epoch)
        self._behind.pop(pool, None)
        self._heard()
        self._metrics.inc("relists")
        self._metrics.observe_us("catchup_us", (time.perf_counter() - started) * 1e6)

    async def _repair(self, pool: str, reason: str) -> None:
        """Bring one pool up to Redis: catch up from the log if possible, else relist."""
        high_water = self.l1.high_water(pool)
        seq, epoch = (await self.store.pool_states([pool]))[pool]
        await self._sync_pool(pool, seq, epoch, high_water)

    async def _sync_pool(self, pool: str, seq: int, epoch: str | None, high_water: int) -> None:
        """Given Redis's ``seq``/``epoch`` for ``pool``: relist, catch up from the log, or nothing."""
        last = self.sequencer.last_seq(pool)
        if last is None or self._lost_data(pool, seq, epoch, high_water) or seq < last:
            await self._relist(pool)
        elif seq > last:
            await self._catch_up(pool, seq)

    async def _recover(self, reason: str) -> None:
        """After an outage or a reconnect: replay the journal, repair every pool, then CAUGHT_UP."""
        if self.modes.mode is Mode.LOCAL_ONLY or self._recovering:
            return
        self._recovering = True
        try:
            await self._replay_journal()
            high_waters = {pool: self.l1.high_water(pool) for pool in self._pools}
            states = await self.store.pool_states(sorted(self._pools))
            for pool, (seq, epoch) in states.items():
                await self._sync_pool(pool, seq, epoch, high_waters[pool])
        finally:
            self._recovering = False
        if self._subscriber.connected.is_set():
            self._signal(Signal.CAUGHT_UP, reason)

    async def _replay_journal(self) -> None:
        # Re-read the head each time: writes made during the replay are journaled behind it
        # (see _write), and a heartbeat coalesced into the head must be replayed again.
        admitted_locally: dict[str, set[str]] = {}
        while pending := self.journal.pending():
            entry = pending[0]
            payload = entry.payload
            if entry.op == "job_start":
                admitted_locally.setdefault(entry.pool, set()).add(entry.node_id)
            if entry.op == "register":
                await self.store.register(payload["spec"])
            elif entry.op == "heartbeat":
                await self.store.heartbeat(payload["beat"])
            elif entry.op == "remove":
                await self.store.remove(entry.pool, entry.node_id)
            elif entry.op == "job_start":
                admission = await self.store.job_start(entry.pool, entry.node_id, str(payload["job_id"]))
                if not admission.admitted:
                    self.replay_rejections.append(admission)
                    log.warning(
                        "%s: journaled admission of %s on %s rejected on replay (%s)",
                        self.instance,
                        admission.job_id,
                        entry.node_id,
                        admission.reason,
                    )
            elif entry.op == "job_finish":
                await self.store.job_finish(entry.pool, entry.node_id, str(payload["job_id"]))
            if self.journal.ack(entry):
                self._metrics.inc("journal_replays")
        # A local admission is assumed in L1 at the node's old version. When Redis refused the
        # job on replay (or already held it) no new version follows, so no event would ever
        # retire the assumption: re-read those nodes, which replaces same-version assumptions.
        now = time.monotonic()
        for pool, node_ids in admitted_locally.items():
            for node in (await self.store.get_nodes(pool, sorted(node_ids))).values():
                if isinstance(node, NodeSnapshot):
                    self.l1.apply(node, now)

    # ================================================================== health
    async def _health_loop(self) -> None:
        interval = self.config.subscriber.ping_interval_s
        while not self._closing:
            if self.modes.mode is Mode.LOCAL_ONLY:
                deadline = self.modes.next_deadline()
                delay = interval if deadline is None else max(0.0, deadline - time.monotonic())
                await asyncio.sleep(delay)
                if not self.modes.on_timer(time.monotonic()):
                    continue
            else:
                await asyncio.sleep(interval if self.modes.consecutive_failures == 0 else 0.0)
            with contextlib.suppress(Exception):
                await self._probe()

    async def _probe(self) -> None:
        """Read every pool's seq and epoch: Redis liveness, lost data, and events lost silently."""
        high_waters = {pool: self.l1.high_water(pool) for pool in self._pools}
        try:
            states = await self.store.pool_states(sorted(self._pools))
        except RedisUnavailable as exc:
            self._signal(Signal.REDIS_FAILED, f"probe: {exc}")
            return
        self._heard()
        self._signal(Signal.REDIS_OK)
        if self.modes.mode is not Mode.NORMAL:
            if (
                self.modes.mode is Mode.L2_ONLY
                and self._subscriber.connected.is_set()
                and self._queue.empty()
            ):
                self._queue.put_nowait(("recover", "", "probe found the stream healthy"))
            return
        for pool, (seq, epoch) in states.items():
            last = self.sequencer.last_seq(pool)
            # Listed before its first write: learn the epoch that write created, so that a
            # later loss of data is recognised.
            self.sequencer.adopt_first_epoch(pool, epoch)
            if self._lost_data(pool, seq, epoch, high_waters[pool]):
                self._signal(Signal.STREAM_LOST, f"pool {pool} lost its data (epoch or seq went back)")
                self._queue.put_nowait(("recover", "", f"pool {pool} relisted after a loss of data"))
            elif self.sequencer.behind(pool, seq):
                # Behind at two probes in a row means events were lost, not merely in flight.
                previous = self._behind.get(pool)
                last = self.sequencer.last_seq(pool) or 0
                if previous is not None and last < previous:
                    self._metrics.inc("gaps")
                    self._queue.put_nowait(("repair", pool, f"{pool} behind Redis: {last} < {previous}"))
                self._behind[pool] = seq
            else:
                self._behind.pop(pool, None)

    async def _reap_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.config.nodes.reap_interval_s)
            with contextlib.suppress(RedisUnavailable):
                await self.reap_once()
