"""A run against a primary and a replica under Redis Sentinel: the group, its faults, what each cost.

``[sentinel] enabled = true`` in an experiment makes the runner use a :class:`SentinelTarget`
where it would start one server: a :class:`~sim.sentinel_server.SentinelGroup` on loopback
(a primary, a replica and three sentinels of the ``LOCKLESS_SERVER`` binary). Every client
of the run reaches it by the group's ``redis+sentinel://`` URL, as a production scheduler
would: the registries under test, the harness's heartbeat writer (node agents) and its
capacity checker. The harness's own reads for the loss check go to the new primary with a
plain redis-py client, not through the library under test.

Faults (``[[faults]]``, one failover at a time, every pool hit):

* ``sentinel_kill_primary``: SIGKILL; the sentinels promote the replica. With
  ``lose_writes_s`` the replica is first cut off that long (``sim.replica_lag``: frozen, its
  replication link closed; a lagging replica), so the writes acknowledged meanwhile are lost.
* ``sentinel_pause_primary``: SIGSTOP; its connections stay open and unanswered, the
  sentinels promote the replica meanwhile.

At ``duration_s`` (never before the promotion) the old primary comes back as a replica of
the new one (``SentinelGroup.restart_old_primary``: restarted empty, or resumed, and its
clients disconnected as the sentinels would).

Recorded per fault (``sim.failover.FaultRecord``): the promotion as the sentinels answered
it (first sentinel naming the new primary, and all of them), the **lost acknowledged
writes** (the writes the ``AckLedger`` saw acknowledged in the window before the fault,
looked up in the pool logs of the new primary, as on a cluster), and per instance when its
mode first changed (detection) and when it was back to NORMAL (recovery: NORMAL needs
commands answered on the new primary, the event stream subscribed there and every pool
repaired, so both paths followed and caught up), counted from the kill (or freeze), and
also from the promotion (what the library adds to what Sentinel takes).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from lockless import KeySpace
from sim.acks import AckLedger, LogEntry
from sim.config import FaultSpec, SentinelSection
from sim.failover import (
    WINDOW_S,
    CpuMeter,
    FaultRecord,
    PhaseFaults,
    count_lost,
    instance_cells,
    judge_phase,
    phase_report,
    read_log,
)
from sim.recorder import Recorder
from sim.sentinel_server import Address, SentinelGroup

__all__ = ["SentinelTarget", "report_lines"]


class SentinelTarget:
    """The Sentinel group of a run and its faults. Call the blocking methods through ``asyncio.to_thread``."""

    def __init__(self, section: SentinelSection) -> None:
        self.section = section
        self.group = SentinelGroup(
            sentinels=section.sentinels,
            quorum=section.quorum,
            down_after_ms=section.down_after_ms,
            failover_timeout_ms=section.failover_timeout_ms,
        )
        self.cpu = CpuMeter(self._pids)
        # A fault's end waits for its start (the failover) to be over: the plan spawns both.
        self._started: dict[int, asyncio.Event] = {}
        self.phase = PhaseFaults()  # renewed by begin_phase

    @property
    def report(self) -> dict[str, Any]:
        """The last phase's summary of its faults (set by :meth:`end_phase`)."""
        return self.phase.report

    # ------------------------------------------------------------------ life
    def start(self) -> None:
        self.group.start()

    def cleanup(self) -> None:
        self.group.cleanup()

    @property
    def url(self) -> str:
        """The library's URL of the group: ``redis+sentinel://<sentinels>/<service>/0``."""
        return self.group.url

    @property
    def version(self) -> str:
        return str(self.group.server)

    def reset(self, namespace: str) -> None:
        """Between phases: the group whole again (old primary back as replica), the phase's keys gone."""
        if self.group.degraded:
            self.group.restart_old_primary()
        client = _client(self.group.primary_address())
        try:
            for key in client.scan_iter(match=f"{namespace}:*", count=1000):
                client.unlink(key)
        finally:
            client.close()

    # ---------------------------------------------------------------- CPU
    def _pids(self) -> list[int]:
        nodes = (self.group.primary, self.group.replica)
        return [n.pid for n in nodes if n.pid]

    def cpu_mark(self) -> None:
        self.cpu.mark()

    def cpu_seconds(self) -> float:
        """CPU used by the data nodes since :meth:`cpu_mark` (a node restarted counts from 0)."""
        return self.cpu.seconds()

    # -------------------------------------------------------------- phases
    def begin_phase(self, namespace: str, pools: Sequence[str]) -> AckLedger:
        """A new phase on ``namespace``: a fresh ledger (returned, for the registries' wrappers)."""
        self.phase = PhaseFaults(keys=KeySpace(namespace), pools=tuple(pools))
        self._started = {}
        return self.phase.ledger

    async def apply(
        self,
        fault: FaultSpec,
        starting: bool,
        index: int,
        recorders: Sequence[Recorder],
        clock: Callable[[], float],
    ) -> None:
        """Carry out one Sentinel fault's start or end (the injector's call)."""
        started = self._started.setdefault(index, asyncio.Event())
        if not starting:
            await started.wait()  # bounded: the failover raises after its own timeout
            began = clock()
            if self.group.degraded:
                await asyncio.to_thread(self.group.restart_old_primary)
            for rec in recorders:
                rec.event(
                    began,
                    "fault_end",
                    f"{fault.kind}: old primary back as replica",
                    took_s=round(clock() - began, 4),
                )
            return
        try:
            await self._fail_over(fault, recorders, clock)
        finally:
            started.set()

    async def _fail_over(
        self, fault: FaultSpec, recorders: Sequence[Recorder], clock: Callable[[], float]
    ) -> None:
        group = self.group
        old = await asyncio.to_thread(group.primary_address)
        record = FaultRecord(fault.kind, "*", list(self.phase.pools), _name(old), started_at=clock())
        for rec in recorders:
            rec.event(record.started_at, "fault_start", f"{fault.kind} (primary {_name(old)})")
        if fault.lose_writes_s > 0:
            await asyncio.to_thread(group.cut_off_replica)
            for rec in recorders:
                rec.event(clock(), "replica_cut", "the replica cut off its primary")
            await asyncio.sleep(fault.lose_writes_s)  # the experiment's schedule, not a synchronisation
        inject = group.kill_primary if fault.kind == "sentinel_kill_primary" else group.pause_primary
        record.hit_wall = time.time()
        failover = await asyncio.to_thread(inject)
        record.done_at, done_wall = clock(), time.time()
        # The group timed the fault itself: the kill came all_sentinels_s before it returned.
        record.hit_at = record.done_at - failover.all_sentinels_s
        record.promotion = {
            "old_primary": _name(failover.old_primary),
            "new_primary": _name(failover.new_primary),
            "first_sentinel_s": round(failover.first_sentinel_s, 3),
            "all_sentinels_s": round(failover.all_sentinels_s, 3),
            "replica_cut_s": fault.lose_writes_s,
        }
        # Acknowledged before the fault (and by the new primary until now), gone from the new primary.
        client = _client(failover.new_primary)
        try:
            await count_lost(
                record,
                self.phase.ledger,
                lambda pool, seqs: self._log_at(client, pool, seqs),
                since_wall=record.hit_wall - WINDOW_S - fault.lose_writes_s,
                until_wall=done_wall,
                recorders=recorders,
            )
        finally:
            client.close()
        self.phase.records.append(record)
        for rec in recorders:
            rec.event(
                record.done_at,
                "sentinel_failover_done",
                f"{fault.kind}: {_name(failover.new_primary)} promoted {failover.first_sentinel_s:.2f} s "
                f"after the fault; {record.lost} of {record.acked_checked} acknowledged writes lost",
            )

    def _log_at(self, client: redis.Redis, pool: str, seqs: Sequence[int]) -> dict[int, LogEntry | None]:
        return read_log(client, self.phase.keys.log(pool), seqs)

    async def end_phase(self, registries: dict[int, Any], rec: Recorder) -> dict[str, Any]:
        """Per fault and instance: detection, recovery and follow times; lost data relisted."""
        records = self.phase.records
        relisted_lost = await judge_phase(records, registries, rec)
        follows: list[float] = []
        for record in records:
            promoted = record.promotion.get("first_sentinel_s")
            for timing in record.instances.values():
                back = timing["recovered_after_s"]
                after = None if back is None or promoted is None else round(back - promoted, 3)
                timing["followed_after_promotion_s"] = after
                if after is not None:
                    follows.append(after)
        self.phase.report = {
            **phase_report(self.phase, relisted_lost),
            "followed_after_promotion_s": _spread(follows),
            "recovered_after_fault_s": _spread(
                [
                    t["recovered_after_s"]
                    for r in records
                    for t in r.instances.values()
                    if t["recovered_after_s"] is not None
                ]
            ),
            "promotion_s": _spread([r.promotion["first_sentinel_s"] for r in records if r.promotion]),
            "unrecovered": sum(
                1 for r in records for t in r.instances.values() if t["recovered_after_s"] is None
            ),
            "unplanned_failovers": self.group.unplanned_failovers,
            "down_after_ms": self.section.down_after_ms,
        }
        return self.phase.report


def _spread(values: Sequence[float]) -> dict[str, Any]:
    """n, median and max (n is a handful of failovers: no other percentile means anything)."""
    if not values:
        return {"n": 0, "median": None, "max": None}
    return {"n": len(values), "median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def _name(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


def _client(address: Address) -> redis.Redis:
    # The harness's own reader of a data node: no retries, so a bad read fails, never waits.
    return redis.Redis(
        host=address[0],
        port=address[1],
        socket_timeout=5.0,
        socket_connect_timeout=5.0,
        decode_responses=True,
    )


def report_lines(archs: dict[str, Any]) -> list[str]:
    """The report's Sentinel section (nothing for a run without ``[sentinel]``)."""
    lines: list[str] = []
    for arch, a in archs.items():
        s = a.get("sentinel")
        if not s:
            continue
        follow, back, promo = s["followed_after_promotion_s"], s["recovered_after_fault_s"], s["promotion_s"]
        lines += [
            "",
            f"## Sentinel failovers, lost acknowledged writes ({arch}, down_after_ms {s['down_after_ms']})",
            "",
            f"Promotion (first sentinel naming the new primary): median {promo['median']} s, max "
            f"{promo['max']} s after the fault (n={promo['n']}). Every instance back to NORMAL on the new "
            f"primary (commands, event stream, pools repaired): median {back['median']} s, max "
            f"{back['max']} s after the fault; {follow['median']} / {follow['max']} s after the promotion "
            f"(n={follow['n']} instance-failovers; {s['unrecovered']} never back).",
            "",
            f"{s['lost_acked_writes']} of {s['acked_writes_checked']} acknowledged writes checked were lost "
            f"({s['acked_writes_total']:,} acknowledged with a version in the phase; "
            f"{s['acked_writes_unchecked']:,} without one: job_finish, remove). Lost data relisted per "
            f"instance: {s['instances_relisted_lost']}. Unplanned failovers: {s['unplanned_failovers']}.",
            "",
            "| fault | promoted: first / all sentinels (s) | acked checked | lost "
            "| instance: mode changed / back to NORMAL, s after the fault | back after the promotion (s) |",
            "|---|---|---|---|---|---|",
        ]
        for f in s["faults"]:
            p = f["promotion"]
            after = "; ".join(
                f"{k}: {v['followed_after_promotion_s']}" for k, v in sorted(f["instances"].items())
            )
            cut = f" (replica cut {p['replica_cut_s']:g} s)" if p.get("replica_cut_s") else ""
            lines.append(
                f"| {f['kind']}{cut} | {p.get('first_sentinel_s')} / {p.get('all_sentinels_s')} "
                f"| {f['acked_checked']} | {f['lost']} | {instance_cells(f)} | {after} |"
            )
    return lines
