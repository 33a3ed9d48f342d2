"""The write path: every write to Redis, or to the journal when Redis is out of reach.

Each write is a command value (``lockless.core.commands``) and takes one path,
:meth:`WritePath._redis_else`: send it to Redis, or, in LOCAL_ONLY (or when this very
failure opens the circuit), hand it to its offline fallback, which journals it. While a
journal is pending, new writes queue behind it, so a live ``job_finish`` can never reach
Redis before the journaled ``job_start`` it undoes.

The answers of our own writes update L1 at once ("assumed", DESIGN.md section 6): an
admission or a release carries the node's job count at a version, and a removal its
version. The first real snapshot at that version or newer retires the assumption.
An answer at a version not above what L1 had seen before the write was sent comes from a
Redis that lost data (``answered_by_a_new_life``): it stays out of L1 (it would mix two
lives of the pool under the old epoch), and the pool is reported lost and relisted.

``job_start`` is the one write with a different offline fallback: in LOCAL_ONLY it
admits against the local view (never past the node's free slots) and journals; Redis
re-checks on replay, and an admission refused then is kept for the scheduler
(:meth:`WritePath.take_replay_rejections`): the job must be placed again.

Modes and journals are per mode domain (``health.py``): every pool on one server shares
one mode and one journal, as before; on a cluster each pool has its own, so a pool whose
shard is down journals its writes while the pools of the other shards write to Redis.
The order the journal keeps is the order within a pool (pools share no keys).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import TypeVar

from lockless.clock import Clock
from lockless.core.commands import Heartbeat, JobFinish, JobStart, Register, Remove, WriteCommand
from lockless.core.journal import JournalEntry, WriteJournal
from lockless.core.l1 import L1Store
from lockless.core.modes import Mode
from lockless.core.selection import is_placeable
from lockless.core.sequencer import answered_by_a_new_life
from lockless.core.snapshot import NodeSnapshot, NodeSpec
from lockless.errors import JournalFull, RedisUnavailable, UnknownPool, WriteNotReplicated
from lockless.health import Fact, HealthMonitor
from lockless.metrics import Metrics
from lockless.protocol import Admission, HeartbeatResult
from lockless.redis.runner import without_wait
from lockless.redis.store import RedisStore

log = logging.getLogger("lockless.registry")

T = TypeVar("T")
U = TypeVar("U")


class WritePath:
    """Writes of one instance: Redis, else the journal; and the journal's replay."""

    def __init__(
        self,
        *,
        pools: frozenset[str],
        store: RedisStore,
        l1: L1Store,
        journals: Mapping[str, WriteJournal],
        health: HealthMonitor,
        on_lost_data: Callable[[str, str], None],
        clock: Clock,
        metrics: Metrics,
        instance: str,
    ) -> None:
        self._pools = pools
        self._store = store
        self._l1 = l1
        #: pool -> its domain's journal (one object shared by the pools of a domain).
        self._journals = dict(journals)
        self._health = health
        #: (what, pool, version, high_water) -> True, reported, if that answer shows lost data.
        self._new_life = functools.partial(_from_a_new_life, on_lost_data)
        self._clock = clock
        self._metrics = metrics
        self._instance = instance
        #: Journaled admissions Redis refused on replay, not yet taken by the scheduler.
        self._replay_rejections: deque[Admission] = deque(maxlen=10_000)

    def _check_pool(self, pool: str) -> None:
        if pool not in self._pools:
            raise UnknownPool(pool, tuple(sorted(self._pools)))

    # ------------------------------------------------------------ the one path
    async def _redis_else(
        self, what: str, pool: str, call: Callable[[], Awaitable[T]], offline: Callable[[bool], U]
    ) -> T | U:
        """Run ``call`` (a write of ``pool``) against Redis; in LOCAL_ONLY, or if this failure opens
        the circuit, ``offline``. The mode and journal are those of ``pool``'s domain.

        ``offline(sent)`` is told whether this write was sent and failed: then Redis may yet
        have run it (a timeout leaves the command in the server's socket), so its outcome is
        unknown, and an offline answer must not contradict any outcome Redis may choose.
        """
        sent = False
        domain = self._health.of[pool]
        if domain.mode is not Mode.LOCAL_ONLY and not len(self._journals[pool]):
            sent = True
            try:
                result = await call()
            except WriteNotReplicated:
                # Redis answered: the shard works, its replica does not. Not acknowledged, but
                # not an outage either (no journal: the primary already ran the write).
                self._health.report(Fact.REDIS_ANSWERED, pools=domain.pools)
                raise
            except RedisUnavailable as exc:
                self._health.report(Fact.REDIS_FAILED, f"{what}: {exc}", domain.pools)
                if domain.mode is not Mode.LOCAL_ONLY:
                    raise
            else:
                self._health.report(Fact.REDIS_ANSWERED, pools=domain.pools)
                return result
        return offline(sent)

    def _to_journal(self, command: WriteCommand) -> JournalEntry:
        try:
            entry = self._journals[command.pool].append(command, now=self._clock.monotonic())
        except JournalFull:
            self._metrics.inc("journal_rejections")
            raise
        self._metrics.inc("journal_appends")
        return entry

    def _assume(self, base: NodeSnapshot | None, current_jobs: int, version: int) -> None:
        if base is not None:
            self._l1.assume(base.with_jobs(current_jobs, version), self._clock.monotonic())

    # ----------------------------------------------------------------- writes
    async def register(self, spec: NodeSpec) -> int:
        """Create or replace a node record; its version (0 when journaled)."""
        self._check_pool(spec.pool)
        command = Register(spec=spec)
        high_water = self._l1.high_water(spec.pool)
        result = await self._redis_else(
            "register",
            spec.pool,
            lambda: self._store.register_and_read(spec),
            lambda _: self._to_journal(command),
        )
        if isinstance(result, JournalEntry):
            return 0
        version, record = result
        if record is not None and not self._new_life("register", spec.pool, version, high_water):
            # Read-your-writes: the registering instance sees the node now, not when its event arrives.
            self._l1.apply(record, self._clock.monotonic())
        return version

    async def heartbeat(self, beat: Heartbeat) -> HeartbeatResult:
        self._check_pool(beat.pool)
        result = await self._redis_else(
            "heartbeat", beat.pool, lambda: self._store.heartbeat(beat), lambda _: self._to_journal(beat)
        )
        if isinstance(result, JournalEntry):
            version = self._l1.version_of(beat.pool, beat.node_id)
            return HeartbeatResult(node_id=beat.node_id, version=version, changed=False, journaled=True)
        return result

    async def heartbeat_many(self, beats: Sequence[Heartbeat]) -> list[HeartbeatResult]:
        """Heartbeats in one pipelined round trip (journaled one by one offline)."""
        if not beats:
            return []
        for beat in beats:
            self._check_pool(beat.pool)
        groups: dict[int, list[int]] = {}
        for i, beat in enumerate(beats):
            groups.setdefault(id(self._journals[beat.pool]), []).append(i)
        if len(groups) == 1:
            return await self._heartbeats_of_domain(beats)
        # Several domains (a cluster): each its own batch, mode and journal, sent at once; an
        # error of one domain is raised once every batch has finished.
        parts = [[beats[i] for i in idx] for idx in groups.values()]
        done = await asyncio.gather(*(self._heartbeats_of_domain(p) for p in parts), return_exceptions=True)
        out: list[HeartbeatResult | None] = [None] * len(beats)
        for idx, got in zip(groups.values(), done, strict=True):
            if isinstance(got, BaseException):
                raise got
            for i, result in zip(idx, got, strict=True):
                out[i] = result
        return out  # type: ignore[return-value]

    async def _heartbeats_of_domain(self, beats: Sequence[Heartbeat]) -> list[HeartbeatResult]:
        results = await self._redis_else(
            f"heartbeat x{len(beats)}",
            beats[0].pool,
            lambda: self._store.heartbeat_many(beats),
            lambda _: None,
        )
        if results is not None:
            return results
        return [await self.heartbeat(beat) for beat in beats]

    async def remove(self, pool: str, node_id: str) -> bool:
        """Remove a node; True if it existed (offline: if this instance knows it)."""
        self._check_pool(pool)
        command = Remove(pool=pool, node_id=node_id)
        high_water = self._l1.high_water(pool)
        result = await self._redis_else(
            "remove", pool, lambda: self._store.remove(pool, node_id), lambda _: self._to_journal(command)
        )
        if isinstance(result, JournalEntry):
            return self._l1.peek(pool, node_id) is not None
        if result and not self._new_life("remove", pool, result, high_water):
            self._l1.remove(pool, node_id, result)
        return bool(result)

    async def job_start(self, pool: str, node_id: str, job_id: str) -> Admission:
        """Admission control in Redis; the answer is reflected in L1 at once ("assumed")."""
        self._check_pool(pool)
        command = JobStart(pool=pool, node_id=node_id, job_id=job_id)
        local: list[Admission] = []
        high_water = self._l1.high_water(pool)

        def offline(sent: bool) -> Admission:
            local.append(self._admit_locally(command, sent=sent))
            return local[0]

        admission = await self._redis_else(
            "job_start", pool, lambda: self._store.job_start(pool, node_id, job_id), offline
        )
        if local:
            # Decided (and counted) on the local view: nothing new to learn from it, and its
            # counts are the local view's, which must not be assumed back as Redis's answer.
            return admission
        self._metrics.inc("admissions" if admission.admitted else "rejections")
        new = admission.reason == "admitted"  # (a rejection's version is the node's, not a new one)
        if new and self._new_life("job_start", pool, admission.version, high_water):
            return admission
        if admission.version > 0:
            # Our own write told us the node's job count at a version: use it now rather than
            # wait for the event (it also corrects a stale "free" view after a 'full' rejection).
            self._assume(self._l1.peek(pool, node_id), admission.current_jobs, admission.version)
        return admission

    def _admit_locally(self, command: JobStart, *, sent: bool) -> Admission:
        """LOCAL_ONLY: admit against the local view and journal; Redis re-checks on replay.

        A rejection of a job_start that was ``sent`` (and timed out) also journals its
        release: Redis may still run the held command and admit the job the caller is told
        was rejected, and the replayed ``job_finish`` (it releases only that job id) undoes it.
        """
        node = self._l1.peek(command.pool, command.node_id)
        if node is None or not is_placeable(node):
            reason = "not_alive" if node is None else ("draining" if node.status != "up" else "full")
            if sent:
                self._to_journal(JobFinish(pool=command.pool, node_id=command.node_id, job_id=command.job_id))
            self._metrics.inc("rejections")
            return Admission(
                admitted=False,
                node_id=command.node_id,
                job_id=command.job_id,
                reason=reason,
                version=node.version if node else 0,
                current_jobs=node.current_jobs if node else 0,
                max_jobs=node.max_jobs if node else 0,
            )
        self._to_journal(command)
        # Same version: the local count is an assumption until Redis confirms it on replay.
        self._assume(node, node.current_jobs + 1, node.version)
        return Admission(
            admitted=True,
            node_id=command.node_id,
            job_id=command.job_id,
            version=node.version,
            reason="journaled",
            current_jobs=node.current_jobs + 1,
            max_jobs=node.max_jobs,
        )

    async def job_finish(self, pool: str, node_id: str, job_id: str) -> bool:
        """Release ``job_id``'s slot. Idempotent; True if this call released it (or journaled it)."""
        self._check_pool(pool)
        command = JobFinish(pool=pool, node_id=node_id, job_id=job_id)
        high_water = self._l1.high_water(pool)
        result = await self._redis_else(
            "job_finish",
            pool,
            lambda: self._store.job_finish(pool, node_id, job_id),
            lambda _: self._to_journal(command),
        )
        if isinstance(result, JournalEntry):
            return True
        released, version, current = result
        if released and not self._new_life("job_finish", pool, version, high_water):
            self._assume(self._l1.peek(pool, node_id), current, version)
        return released

    # ----------------------------------------------------------------- replay
    @property
    def journal_depth(self) -> int:
        return sum(len(j) for j in {id(j): j for j in self._journals.values()}.values())

    def journal_depth_of(self, pool: str) -> int:
        """Entries waiting in ``pool``'s journal (its domain's: every pool's on one server)."""
        return len(self._journals[pool])

    def take_replay_rejections(self) -> list[Admission]:
        """Journaled admissions Redis refused on replay since the last call."""
        taken = list(self._replay_rejections)
        self._replay_rejections.clear()
        return taken

    async def replay(self, pools: Collection[str] | None = None) -> None:
        """Send the journal of ``pools`` (None: every journal) to Redis, oldest first; raises
        RedisUnavailable if Redis fails meanwhile (what was not acknowledged stays journaled
        for the next attempt)."""
        chosen = self._journals if pools is None else {p: self._journals[p] for p in pools}
        for journal in {id(j): j for j in chosen.values()}.values():
            await self._replay(journal)

    async def _replay(self, journal: WriteJournal) -> None:
        # No WAIT (redis.wait_replicas) for replays: a journaled write was answered "journaled",
        # never promised durable; and a replay refused for want of a replica would block recovery.
        with without_wait():
            await self._replay_entries(journal)

    async def _replay_entries(self, journal: WriteJournal) -> None:
        admitted_locally: dict[str, set[str]] = {}
        # Re-read the head each time: writes made during the replay are journaled behind it
        # (see _redis_else), and a heartbeat coalesced into the head must be replayed again.
        while (entry := journal.head()) is not None:
            command = entry.command
            result = await self._store.send(command)
            if isinstance(command, JobStart):
                admitted_locally.setdefault(command.pool, set()).add(command.node_id)
                assert isinstance(result, Admission)
                if not result.admitted:
                    self._replay_rejections.append(result)
                    self._metrics.inc("replay_rejections")
                    log.warning(
                        "%s: journaled admission of %s on %s rejected on replay (%s)",
                        self._instance,
                        result.job_id,
                        command.node_id,
                        result.reason,
                    )
            if journal.ack(entry):
                self._metrics.inc("journal_replays")
        # A local admission is assumed in L1 at the node's old version. When Redis refused the
        # job on replay (or already held it) no new version follows, so no event would ever
        # retire the assumption: re-read those nodes, which replaces same-version assumptions.
        now = self._clock.monotonic()
        for pool, node_ids in admitted_locally.items():
            for node in (await self._store.get_nodes(pool, sorted(node_ids))).values():
                if isinstance(node, NodeSnapshot):
                    self._l1.apply(node, now)


def _from_a_new_life(
    on_lost_data: Callable[[str, str], None], what: str, pool: str, version: int, high_water: int
) -> bool:
    """True, and the loss reported to ``on_lost_data(pool, reason)``, if ``version`` (a new write's)
    shows that Redis lost data since L1 reached ``high_water`` (read before the write was sent)."""
    if not answered_by_a_new_life(version, high_water):
        return False
    on_lost_data(pool, f"{what} in {pool} answered version {version}, not above {high_water} seen before it")
    return True
