"""Every write Redis acknowledged, kept by the harness, so that a failover's losses can be counted.

A write's acknowledgement carries the version Redis gave it, which is the pool's ``seq``
(DESIGN.md section 3): ``register`` and a heartbeat that changed something answer their
new version, an admitted ``job_start`` the node's version after it. So an acknowledged
write is ``(pool, seq, node, op)`` with the wall time its answer arrived, and whether
Redis still holds it after a failover is a question about one log entry: the pool log
keeps one entry per seq (``<seq>-0``) naming its node, its op and its server time
(``ts_us``). :func:`lost_writes` asks it: a write is lost if the log no longer has its
seq, or has another write there (another node or op, or one written after the failover:
the new primary reused the seq).

Writes whose answer carries no version (``job_finish``, ``remove``) cannot be checked that
way; they are counted as ``unchecked``. A write answered "journaled" was never
acknowledged by Redis and is not recorded.

:class:`AckingRegistry` records the acknowledgements of a registry by wrapping it (the
dispatcher is not changed), :class:`AckingSink` those of the harness's own heartbeat
writer (``harness.heartbeats_via = "harness"``).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from lockless import Admission, Heartbeat, HeartbeatResult, NodeSpec, Placement, Requirements, place

__all__ = ["Ack", "AckLedger", "AckingRegistry", "AckingSink", "LogEntry", "lost_writes"]

#: Acknowledgements kept per pool (the newest): a failover's window is seconds, this is minutes.
KEEP = 200_000


@dataclass(frozen=True, slots=True)
class Ack:
    """One write Redis acknowledged."""

    pool: str
    seq: int
    node_id: str
    #: The script that ran: ``register`` | ``heartbeat`` | ``job_start``.
    op: str
    #: Wall time (``time.time()``) the answer arrived.
    wall: float


@dataclass(frozen=True, slots=True)
class LogEntry:
    """What the pool log holds at one seq (decoded from the event document)."""

    node_id: str
    op: str
    #: Server time of the write, microseconds.
    ts_us: int


#: Ops of the log that an acknowledged op may show as (a heartbeat that re-created its node
#: is logged as a registration).
_SAME_OP = {"register": {"register"}, "heartbeat": {"heartbeat", "register"}, "job_start": {"job_start"}}


class AckLedger:
    """The acknowledged writes of a phase, per pool, newest last."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._by_pool: dict[str, deque[Ack]] = {}
        #: Writes acknowledged without a version (job_finish, remove): not checkable by seq.
        self.unchecked = 0

    def record(self, pool: str, seq: int, node_id: str, op: str) -> None:
        acks = self._by_pool.get(pool)
        if acks is None:
            acks = self._by_pool[pool] = deque(maxlen=KEEP)
        acks.append(Ack(pool, seq, node_id, op, self._clock()))

    def window(self, pools: Iterable[str], start_wall: float, end_wall: float) -> list[Ack]:
        """The writes of ``pools`` acknowledged in ``[start_wall, end_wall]``."""
        out = []
        for pool in pools:
            out += [a for a in self._by_pool.get(pool, ()) if start_wall <= a.wall <= end_wall]
        return out

    def count(self) -> int:
        return sum(len(acks) for acks in self._by_pool.values())


def parse_log_entry(fields: dict[Any, Any]) -> LogEntry | None:
    """The log entry's node, op and server time (None if it does not decode)."""
    raw = fields.get("e", fields.get(b"e"))
    try:
        doc = json.loads(raw)
        return LogEntry(node_id=str(doc["node"]), op=str(doc["op"]), ts_us=int(doc["ts_us"]))
    except (TypeError, ValueError, KeyError):
        return None


def lost_writes(
    acks: Sequence[Ack],
    log_at: Callable[[str, Sequence[int]], dict[int, LogEntry | None]],
    failed_at_wall: float,
) -> list[Ack]:
    """The acknowledged writes Redis no longer holds after a failover at ``failed_at_wall``.

    ``log_at(pool, seqs)`` reads the pool log's entry at each seq (None where there is none).
    A write is held if its seq's entry names its node and op and was written before the
    failover; any other entry is a later write that reused the seq.
    """
    lost = []
    by_pool: dict[str, list[Ack]] = {}
    for ack in acks:
        by_pool.setdefault(ack.pool, []).append(ack)
    for pool, group in by_pool.items():
        entries = log_at(pool, sorted({a.seq for a in group}))
        for ack in group:
            entry = entries.get(ack.seq)
            held = (
                entry is not None
                and entry.node_id == ack.node_id
                and entry.op in _SAME_OP.get(ack.op, {ack.op})
                and entry.ts_us / 1e6 <= failed_at_wall
            )
            if not held:
                lost.append(ack)
    return lost


class AckingRegistry:
    """A registry whose acknowledged writes are recorded in an :class:`AckLedger`; the rest is delegated."""

    def __init__(self, inner: Any, ledger: AckLedger) -> None:
        self._inner = inner
        self._ledger = ledger

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def register_node(self, spec: NodeSpec) -> int:
        version = await self._inner.register_node(spec)
        if version > 0:
            self._ledger.record(spec.pool, version, spec.node_id, "register")
        return version

    async def heartbeat(self, pool: str, node_id: str, **kwargs: Any) -> HeartbeatResult:
        result = await self._inner.heartbeat(pool, node_id, **kwargs)
        _record_beat(self._ledger, pool, result)
        return result

    async def heartbeat_many(self, beats: Sequence[Heartbeat]) -> list[HeartbeatResult]:
        results = await self._inner.heartbeat_many(beats)
        for beat, result in zip(beats, results, strict=True):
            _record_beat(self._ledger, beat.pool, result)
        return results

    async def job_start(self, pool: str, node_id: str, job_id: str) -> Admission:
        admission = await self._inner.job_start(pool, node_id, job_id)
        if admission.reason == "admitted" and admission.version > 0:
            self._ledger.record(pool, admission.version, node_id, "job_start")
        return admission

    async def place_job(
        self, pool: str, job_id: str, requirements: Requirements | None = None, *, policy: str | None = None
    ) -> Placement:
        # Placed through this wrapper (select, then job_start here), so the admission is recorded.
        return await place(self, pool, job_id, requirements, policy=policy)

    async def job_finish(self, pool: str, node_id: str, job_id: str) -> bool:
        released = await self._inner.job_finish(pool, node_id, job_id)
        self._ledger.unchecked += bool(released)
        return released

    async def remove_node(self, pool: str, node_id: str) -> bool:
        removed = await self._inner.remove_node(pool, node_id)
        self._ledger.unchecked += bool(removed)
        return removed


class AckingSink:
    """The harness's heartbeat writer (a ``heartbeat_many``), recording what Redis acknowledged."""

    def __init__(self, inner: Any, ledger: AckLedger) -> None:
        self._inner = inner
        self._ledger = ledger

    async def heartbeat_many(self, beats: Sequence[Heartbeat]) -> list[HeartbeatResult]:
        results = await self._inner.heartbeat_many(beats)
        for beat, result in zip(beats, results, strict=True):
            _record_beat(self._ledger, beat.pool, result)
        return results


def _record_beat(ledger: AckLedger, pool: str, result: HeartbeatResult) -> None:
    # A quiet heartbeat (liveness only) has no version of its own: nothing to find in the log.
    if result.changed and not result.journaled and result.version > 0:
        ledger.record(pool, result.version, result.node_id, "heartbeat")
