"""A run against a Redis Cluster: the cluster, its faults, and what each failover cost.

``[cluster] enabled = true`` in an experiment makes the runner use a :class:`ClusterTarget`
where it would start one server: a :class:`~sim.cluster_server.LocalCluster` on loopback
(or the cluster of ``--redis-url redis+cluster://...``, then without faults). The
registries reach it with the cluster URL (``lockless.redis.cluster``); the harness's
own reads of it (the loss check below, the reset between phases) go through redis-py's
cluster client, not through the library under test.

Faults (``[[faults]]`` with a ``pool``; each hits the shard owning that pool's slot):

* ``kill_primary``: SIGKILL; its replica takes over. With ``lose_writes_s`` the replica is
  first cut off that long (``sim.cluster_loss``: the lag a real replica has when the
  network or its disk stalls), so the writes acknowledged meanwhile are lost. After
  ``duration_s`` the killed node is started again and rejoins as a replica.
* ``pause_primary``: SIGSTOP for ``duration_s``; its replica takes over meanwhile.
* ``failover``: a graceful ``CLUSTER FAILOVER`` (the replica catches up first).
* ``move_slot``: the pool's slot is moved to the next primary while writes go on.

After each one, the acknowledged writes of the shard's pools (``sim.acks``: every write a
registry or the harness's heartbeat writer had acknowledged in the window before the
fault) are looked up in the pool logs of the new owner: those it no longer holds are the
**lost acknowledged writes**. At the end of a phase :meth:`ClusterTarget.end_phase` adds,
per fault and instance, when each instance's mode for the pools hit first changed
(detection) and when the last of them was back to NORMAL (recovery), both counted from
the kill (or freeze, failover, move), and checks that every instance relisted lost data
at least once per fault that lost writes (its ``epoch_changes``; else a violation).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisError

from lockless import KeySpace, Mode
from sim.acks import AckLedger, LogEntry, lost_writes, parse_log_entry
from sim.cluster_loss import cut_off_replica
from sim.cluster_server import ClusterError, LocalCluster, LocalNode
from sim.config import ClusterSection, FaultSpec
from sim.recorder import Recorder

__all__ = ["ClusterTarget", "FaultRecord"]

#: Acknowledgements older than this before a fault are not looked up (replication lags ms).
WINDOW_S = 10.0
#: A fault's timings are read from the instances' mode switches up to this long after it.
SETTLE_S = 60.0


@dataclass(slots=True)
class FaultRecord:
    """One cluster fault as it happened (times on the loop's monotonic clock, wall for the log)."""

    kind: str
    pool: str
    #: Pools whose shard was hit (every pool whose slot the node owned).
    pools: list[str]
    node: str
    started_at: float
    #: When the primary was killed / frozen / told to fail over / the move began.
    hit_at: float = 0.0
    hit_wall: float = 0.0
    #: When the replica (or the slot's new owner) served the slots.
    done_at: float = 0.0
    acked_checked: int = 0
    lost: int = 0
    lost_examples: list[str] = field(default_factory=list)
    #: instance -> {detected_after_s, recovered_after_s, relisted_as_lost}
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)


class ClusterTarget:
    """The cluster of a run and its faults. Call the blocking methods through ``asyncio.to_thread``."""

    def __init__(self, section: ClusterSection, *, url: str | None = None) -> None:
        self.section = section
        self.local: LocalCluster | None = None
        if url is None:
            self.local = LocalCluster(
                primaries=section.primaries,
                replicas_per_primary=section.replicas_per_primary,
                node_timeout_ms=section.node_timeout_ms,
            )
        self._url = url
        self._admin: RedisCluster | None = None
        self._down: dict[int, LocalNode] = {}
        self._cpu: dict[int, float] = {}
        # Per phase (begin_phase): where keys are, what was acknowledged, what happened.
        self.keys = KeySpace("lockless")
        self.pools: tuple[str, ...] = ()
        self.ledger = AckLedger()
        self.records: list[FaultRecord] = []
        self.report: dict[str, Any] = {}

    # ------------------------------------------------------------------ life
    def start(self) -> None:
        if self.local is not None:
            self.local.start()

    def cleanup(self) -> None:
        self._renew_admin()
        if self.local is not None:
            self.local.cleanup()

    def _renew_admin(self) -> None:
        """Drop the admin client: the next one reads the slot map as it is now (after a fault)."""
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None

    @property
    def url(self) -> str:
        """The library's URL of the cluster (every node a seed)."""
        if self._url is not None:
            return self._url
        assert self.local is not None
        return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in self.local.startup_nodes)

    @property
    def version(self) -> str:
        return str(self.local.server) if self.local is not None else "?"

    def admin(self) -> RedisCluster:
        """redis-py's cluster client: the harness's own reader, independent of the library."""
        if self._admin is None:
            seeds = self.url.removeprefix("redis+cluster://").split(",")
            nodes = [ClusterNode(s.rpartition(":")[0], int(s.rpartition(":")[2])) for s in seeds]
            self._admin = RedisCluster(
                startup_nodes=nodes, socket_timeout=5.0, socket_connect_timeout=5.0, decode_responses=True
            )
        return self._admin

    def reset(self, namespace: str) -> None:
        """Between phases: every node back up and the cluster settled, then the phase's keys gone."""
        if self.local is not None:
            for node in self.local.all_nodes:
                if node.server.paused:
                    self.local.resume(node)
                elif not node.server.running:
                    self.local.restart(node)
            self._down.clear()
            self.local.wait_settled(30.0)
        self._renew_admin()
        admin = self.admin()
        for node in admin.get_primaries():
            for key in admin.scan_iter(match=f"{namespace}:*", count=1000, target_nodes=node):
                admin.unlink(key)

    # ---------------------------------------------------------------- CPU
    def cpu_mark(self) -> None:
        self._cpu = {pid: _cpu(pid) for pid in self._pids()}

    def cpu_seconds(self) -> float:
        """CPU used by the cluster's nodes since :meth:`cpu_mark` (nodes restarted count from 0)."""
        return sum(max(0.0, _cpu(pid) - self._cpu.get(pid, 0.0)) for pid in self._pids())

    def _pids(self) -> list[int]:
        if self.local is None:
            return []
        return [n.pid for n in self.local.all_nodes if n.pid]

    # -------------------------------------------------------------- phases
    def begin_phase(self, namespace: str, pools: Sequence[str]) -> AckLedger:
        """A new phase on ``namespace``: a fresh ledger (returned, for the registries' wrappers)."""
        self.keys = KeySpace(namespace)
        self.pools = tuple(pools)
        self.ledger = AckLedger()
        self.records = []
        self.report = {}
        return self.ledger

    async def apply(
        self,
        fault: FaultSpec,
        starting: bool,
        index: int,
        recorders: Sequence[Recorder],
        clock: Callable[[], float],
    ) -> None:
        """Carry out one cluster fault's start or end (the injector's call).

        The waits here are light on purpose (one ``CLUSTER SLOTS`` every 50 ms until the slot
        has a new owner, no full settle): they run in a thread of the harness's process, whose
        event loop is measured, and LocalCluster's settle check (every node's view, every 20 ms)
        costs enough CPU under the GIL to show as harness lag. The cluster is fully settled
        between phases (:meth:`reset`)."""
        if self.local is None:
            raise RuntimeError("cluster faults need the cluster the harness started")
        cluster = self.local
        if not starting:
            node = self._down.pop(index, None)
            if node is not None:
                began = clock()
                if fault.kind == "pause_primary":
                    node.server.resume()  # it finds its slots taken and turns replica by itself
                else:
                    await asyncio.to_thread(node.server.restart, keep_data=False)  # rejoins as replica
                for rec in recorders:
                    rec.event(
                        began,
                        "fault_end",
                        f"{fault.kind} {fault.pool}: {node.name} back",
                        took_s=round(clock() - began, 4),
                    )
            return
        tag = "{" + fault.pool + "}"
        slot = cluster.key_slot(tag)
        owner = await asyncio.to_thread(cluster.primary_for_key, tag)
        pools = await asyncio.to_thread(self._pools_of, owner)
        record = FaultRecord(fault.kind, fault.pool, pools, owner.name, started_at=clock())
        for rec in recorders:
            rec.event(
                record.started_at,
                "fault_start",
                f"{fault.kind} {fault.pool} ({owner.name}; pools {', '.join(pools)})",
            )
        if fault.kind == "kill_primary":
            replica = None
            if fault.lose_writes_s > 0:
                replica = await asyncio.to_thread(cut_off_replica, cluster, owner)
                for rec in recorders:
                    rec.event(clock(), "replica_cut", f"{fault.pool}: replica of {owner.name} cut off")
                await asyncio.sleep(fault.lose_writes_s)  # the experiment's schedule, not a synchronisation
            record.hit_at, record.hit_wall = clock(), time.time()
            owner.server.kill()
            if replica is not None:
                replica.server.resume()  # it finds its primary gone; the cluster promotes it
            await asyncio.to_thread(self._wait_new_owner, slot, owner)
            self._down[index] = owner
        elif fault.kind == "pause_primary":
            record.hit_at, record.hit_wall = clock(), time.time()
            owner.server.pause()
            await asyncio.to_thread(self._wait_new_owner, slot, owner)
            self._down[index] = owner
        elif fault.kind == "failover":
            (replica, *_) = await asyncio.to_thread(cluster.replicas_of, owner)
            record.hit_at, record.hit_wall = clock(), time.time()

            def ask() -> None:
                replica.command("CLUSTER", "FAILOVER", step="failover")

            ask()
            await asyncio.to_thread(self._wait_new_owner, slot, owner, ask_again=ask)
        elif fault.kind == "move_slot":
            primaries = await asyncio.to_thread(cluster.primaries)
            target = primaries[(primaries.index(owner) + 1) % len(primaries)]
            record.hit_at, record.hit_wall = clock(), time.time()
            await asyncio.to_thread(cluster.move_key_slot, tag, target)
        record.done_at = clock()
        # What was acknowledged before the fault (and, for a move, during it) and is gone now.
        end_wall = time.time() if fault.kind == "move_slot" else record.hit_wall
        acks = self.ledger.window(pools, record.hit_wall - WINDOW_S - fault.lose_writes_s, end_wall)
        self._renew_admin()  # the slots moved: read the logs where they are now
        lost = await asyncio.to_thread(lost_writes, acks, self._log_at, end_wall)
        record.acked_checked, record.lost = len(acks), len(lost)
        record.lost_examples = [f"{a.pool} seq {a.seq} {a.op} {a.node_id}" for a in lost[:5]]
        self.records.append(record)
        for rec in recorders:
            rec.event(
                record.done_at,
                "cluster_fault_done",
                f"{fault.kind} {fault.pool}: took {record.done_at - record.hit_at:.2f} s; "
                f"{record.lost} of {record.acked_checked} acknowledged writes lost",
            )
            rec.count("lost_acked_writes", record.lost)
            rec.count("acked_writes_checked", record.acked_checked)

    def _wait_new_owner(
        self, slot: int, old: LocalNode, *, timeout: float = 30.0, ask_again: Callable[[], None] | None = None
    ) -> None:
        """Poll until a live node says ``slot`` belongs to a node other than ``old``.

        ``ask_again`` is called every 6 s meanwhile (a manual failover the primaries refused
        is dropped by the server after 5 s: Redis 6.2 votes once per 2x the node timeout)."""
        assert self.local is not None
        deadline = time.monotonic() + timeout
        asked = time.monotonic()
        while True:
            owner = self._owner_port(slot, skip=old.port)
            if owner is not None and owner != old.port:
                return
            now = time.monotonic()
            if now >= deadline:
                raise ClusterError(f"slot {slot} still owned by {old.name} after {timeout} s")
            if ask_again is not None and now - asked >= 6.0:
                ask_again()
                asked = now
            time.sleep(0.05)  # poll; the deadline bounds the wait

    def _owner_port(self, slot: int, *, skip: int) -> int | None:
        """The client port of ``slot``'s owner as the first live node (not ``skip``) sees it."""
        assert self.local is not None
        for node in self.local.all_nodes:
            if node.port == skip or not node.up:
                continue
            try:
                with node.client(timeout=1.0) as client:
                    ranges = client.execute_command("CLUSTER", "SLOTS")
            except (RedisError, OSError):
                continue
            return next((int(r[2][1]) for r in ranges if int(r[0]) <= slot <= int(r[1])), None)
        return None

    def _pools_of(self, owner: LocalNode) -> list[str]:
        assert self.local is not None
        return [p for p in self.pools if self.local.primary_for_key("{" + p + "}") is owner]

    def _log_at(self, pool: str, seqs: Sequence[int]) -> dict[int, LogEntry | None]:
        """The pool log's entry at each seq, read from the slot's owner now."""
        admin, key = self.admin(), self.keys.log(pool)
        out: dict[int, LogEntry | None] = {}
        for start in range(0, len(seqs), 500):
            chunk = seqs[start : start + 500]
            pipe = admin.pipeline()
            for seq in chunk:
                pipe.xrange(key, f"{seq}-0", f"{seq}-0")
            for seq, entries in zip(chunk, pipe.execute(), strict=True):
                out[seq] = parse_log_entry(entries[0][1]) if entries else None
        return out

    async def end_phase(self, registries: dict[int, Any], rec: Recorder) -> dict[str, Any]:
        """Per fault and instance: detection and recovery times, and whether lost data was relisted."""
        switches = {}
        relisted_lost = {}
        for k, reg in registries.items():
            switches[k] = list(reg.mode_switches())
            fetch = getattr(reg, "fetch_metrics", None)
            counters = (await fetch())[1] if fetch is not None else reg.metrics().counters
            relisted_lost[k] = int(counters.get("epoch_changes", 0))
        lossy = 0
        for record in self.records:
            hit = set(record.pools)
            lossy += bool(record.lost)
            for k, seen in switches.items():
                mine = [s for s in seen if set(s.pools) & hit and s.at >= record.started_at - 0.001]
                first = next((s for s in mine if s.from_mode is Mode.NORMAL), None)
                # Back to NORMAL: the last switch to NORMAL of the shard's pools after the first
                # switch away (each pool recovers on its own; the shard is back with the last).
                backs = [
                    s for s in mine if first is not None and s.at >= first.at and s.to_mode is Mode.NORMAL
                ]
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
        self.report = {
            "faults": [asdict(r) for r in self.records],
            "lost_acked_writes": sum(r.lost for r in self.records),
            "acked_writes_checked": sum(r.acked_checked for r in self.records),
            "acked_writes_total": self.ledger.count(),
            "acked_writes_unchecked": self.ledger.unchecked,
            "instances_relisted_lost": {str(k): n for k, n in relisted_lost.items()},
            "wait_replicas": None,
        }
        return self.report


def _cpu(pid: int) -> float:
    with contextlib.suppress(psutil.Error):
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    return 0.0


def report_lines(archs: dict[str, Any]) -> list[str]:
    """The report's cluster section (nothing for a run on one server)."""
    lines: list[str] = []
    for arch, a in archs.items():
        c = a.get("cluster")
        if not c:
            continue
        lines += [
            "",
            f"## Cluster faults, lost acknowledged writes ({arch}, wait_replicas {c.get('wait_replicas')})",
            "",
            f"{c['lost_acked_writes']} of {c['acked_writes_checked']} acknowledged writes checked were lost "
            f"({c['acked_writes_total']:,} acknowledged with a version in the phase; "
            f"{c['acked_writes_unchecked']:,} without one: job_finish, remove). Lost data relisted per "
            f"instance: {c['instances_relisted_lost']}.",
            "",
            "| fault | pool (shard's pools) | took (s) | acked checked | lost "
            "| instance: mode changed / back to NORMAL, s after the fault |",
            "|---|---|---|---|---|---|",
        ]
        for f in c["faults"]:
            took = f["done_at"] - f["hit_at"]
            per = "; ".join(
                f"{k}: {v['detected_after_s']} / {v['recovered_after_s']}"
                for k, v in sorted(f["instances"].items())
            )
            lines.append(
                f"| {f['kind']} | {f['pool']} ({', '.join(f['pools'])}) | {took:.2f} | {f['acked_checked']} "
                f"| {f['lost']} | {per} |"
            )
    return lines
