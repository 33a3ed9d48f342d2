"""What a failover cost, the same way for a cluster shard and for a Sentinel group.

The two targets that fail over (``sim.cluster_target``, ``sim.sentinel_target``) each
inject their own faults; what they measure afterwards is one set of rules, kept here:

* :class:`FaultRecord` - one fault as it happened: when it hit, when the new primary
  served, the acknowledged writes checked and lost, and per instance when it noticed and
  when it was back.
* :func:`count_lost` - the **lost acknowledged writes** of a fault: the writes the
  ``AckLedger`` (``sim.acks``) saw acknowledged in the window before the fault, looked up
  in the pool logs where they are now (``log_at``: the new primary).
* :func:`read_log` - that lookup, one ``XRANGE`` per seq, pipelined, on the harness's own
  client (redis-py's, never the library under test).
* :func:`judge_phase` - at the end of a phase, per fault and instance: detection (the
  first mode switch away from NORMAL after the fault) and recovery (the last switch back
  to NORMAL before the next fault on the same pools); and the rule that every instance
  relisted lost data (``epoch_changes``) at least once per fault that lost writes, else
  a ``loss_undetected`` violation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from lockless import KeySpace, Mode
from sim.acks import AckLedger, LogEntry, lost_writes, parse_log_entry
from sim.recorder import Recorder

__all__ = [
    "SETTLE_S",
    "WINDOW_S",
    "CpuMeter",
    "FaultRecord",
    "PhaseFaults",
    "count_lost",
    "instance_cells",
    "judge_phase",
    "phase_report",
    "read_log",
]

#: Acknowledgements older than this before a fault are not looked up (replication lags ms).
WINDOW_S = 10.0
#: A fault's timings are read from the instances' mode switches up to this long after it
#: (or until the next fault on the same pools, if that comes first).
SETTLE_S = 60.0

#: ``log_at(pool, seqs)``: the pool log's entry at each seq where the pool is now.
LogAt = Callable[[str, Sequence[int]], dict[int, LogEntry | None]]


@dataclass(slots=True)
class FaultRecord:
    """One fault as it happened (times on the loop's monotonic clock, wall for the log)."""

    kind: str
    pool: str
    #: Pools whose data the fault hit (a shard's pools; on one server, every pool).
    pools: list[str]
    node: str
    started_at: float
    #: When the primary was killed / frozen / told to fail over / the move began.
    hit_at: float = 0.0
    hit_wall: float = 0.0
    #: When the replica (or the slot's new owner) served: the harness saw the new primary.
    done_at: float = 0.0
    acked_checked: int = 0
    lost: int = 0
    lost_examples: list[str] = field(default_factory=list)
    #: instance -> {detected_after_s, recovered_after_s, switches, ...}
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Facts of the deployment's own failover (Sentinel: when the sentinels named the new primary).
    promotion: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class PhaseFaults:
    """One phase's faults: where its keys are, what was acknowledged, what happened, the summary."""

    keys: KeySpace = field(default_factory=lambda: KeySpace("lockless"))
    pools: tuple[str, ...] = ()
    #: Every write acknowledged in the phase (the registries' and the heartbeat writer's wrappers fill it).
    ledger: AckLedger = field(default_factory=AckLedger)
    records: list[FaultRecord] = field(default_factory=list)
    #: The phase's summary (``end_phase``), for ``summary.json``.
    report: dict[str, Any] = field(default_factory=dict)


class CpuMeter:
    """CPU seconds a deployment's server processes used since :meth:`mark` (a restarted one counts from 0)."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self._pids = pids
        self._marked: dict[int, float] = {}

    def mark(self) -> None:
        self._marked = {pid: _process_cpu(pid) for pid in self._pids()}

    def seconds(self) -> float:
        return sum(max(0.0, _process_cpu(pid) - self._marked.get(pid, 0.0)) for pid in self._pids())


async def count_lost(
    record: FaultRecord,
    ledger: AckLedger,
    log_at: LogAt,
    *,
    since_wall: float,
    until_wall: float,
    recorders: Sequence[Recorder],
) -> None:
    """Fill ``record``'s acknowledged writes checked and lost, and count them in ``recorders``.

    Checked: the writes of ``record.pools`` acknowledged in ``[since_wall, until_wall]``;
    lost: those ``log_at`` (read after the failover, in a thread: it blocks) no longer holds
    (``sim.acks.lost_writes``)."""
    acks = ledger.window(record.pools, since_wall, until_wall)
    lost = await asyncio.to_thread(lost_writes, acks, log_at, until_wall)
    record.acked_checked, record.lost = len(acks), len(lost)
    record.lost_examples = [f"{a.pool} seq {a.seq} {a.op} {a.node_id}" for a in lost[:5]]
    for rec in recorders:
        rec.count("lost_acked_writes", record.lost)
        rec.count("acked_writes_checked", record.acked_checked)


def read_log(client: Any, key: str, seqs: Sequence[int]) -> dict[int, LogEntry | None]:
    """The log ``key``'s entry at each seq (``<seq>-0``), read with ``client``'s pipelines.

    ``client`` is redis-py's: a ``Redis`` on the new primary, or a ``RedisCluster`` (which
    routes the pool's key to its owner)."""
    out: dict[int, LogEntry | None] = {}
    for start in range(0, len(seqs), 500):
        chunk = seqs[start : start + 500]
        pipe = client.pipeline()
        for seq in chunk:
            pipe.xrange(key, f"{seq}-0", f"{seq}-0")
        for seq, entries in zip(chunk, pipe.execute(), strict=True):
            out[seq] = parse_log_entry(entries[0][1]) if entries else None
    return out


async def judge_phase(
    records: Sequence[FaultRecord], registries: Mapping[int, Any], rec: Recorder
) -> dict[str, int]:
    """Per fault and instance: detection and recovery times, into each record's ``instances``.

    Returns each instance's ``epoch_changes`` (pools relisted as lost data); an instance
    that relisted fewer times than faults lost writes is a ``loss_undetected`` violation.
    """
    switches = {}
    relisted_lost = {}
    for k, reg in registries.items():
        switches[k] = list(reg.mode_switches())
        fetch = getattr(reg, "fetch_metrics", None)
        counters = (await fetch())[1] if fetch is not None else reg.metrics().counters
        relisted_lost[k] = int(counters.get("epoch_changes", 0))
    lossy = 0
    for i, record in enumerate(records):
        hit = set(record.pools)
        lossy += bool(record.lost)
        # Up to the next fault on the same pools: its switches are its own.
        until = min(
            [r.started_at for r in records[i + 1 :] if set(r.pools) & hit] + [record.started_at + SETTLE_S]
        )
        for k, seen in switches.items():
            mine = [s for s in seen if set(s.pools) & hit and record.started_at - 0.001 <= s.at < until]
            first = next((s for s in mine if s.from_mode is Mode.NORMAL), None)
            # Back to NORMAL: the last switch to NORMAL of the pools hit after the first switch
            # away (each pool recovers on its own; the fault is over with the last of them).
            backs = [s for s in mine if first is not None and s.at >= first.at and s.to_mode is Mode.NORMAL]
            back = backs[-1] if backs and mine[-1].to_mode is Mode.NORMAL else None
            record.instances[str(k)] = {
                "detected_after_s": None if first is None else round(first.at - record.hit_at, 3),
                "recovered_after_s": None if back is None else round(back.at - record.hit_at, 3),
                "switches": len(mine),
            }
    # Every instance must have relisted as lost data at least once per fault that lost writes.
    for k, n in relisted_lost.items():
        if n < lossy:
            rec.violation(
                rec.t0,
                "loss_undetected",
                f"instance {k} relisted lost data {n} times; {lossy} failovers lost acknowledged writes",
            )
    return relisted_lost


def phase_report(phase: PhaseFaults, relisted_lost: Mapping[int, int]) -> dict[str, Any]:
    """The phase's summary of its faults (``summary.json``: ``cluster`` or ``sentinel``)."""
    records, ledger = phase.records, phase.ledger
    return {
        "faults": [asdict(r) for r in records],
        "lost_acked_writes": sum(r.lost for r in records),
        "acked_writes_checked": sum(r.acked_checked for r in records),
        "acked_writes_total": ledger.count(),
        "acked_writes_unchecked": ledger.unchecked,
        "instances_relisted_lost": {str(k): n for k, n in relisted_lost.items()},
    }


def instance_cells(fault: Mapping[str, Any]) -> str:
    """``"0: 0.41 / 2.9; 1: ..."``: per instance, mode changed / back to NORMAL, s after the fault."""
    return "; ".join(
        f"{k}: {v['detected_after_s']} / {v['recovered_after_s']}"
        for k, v in sorted(fault["instances"].items())
    )


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 if it is gone)."""
    with contextlib.suppress(psutil.Error):
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    return 0.0
