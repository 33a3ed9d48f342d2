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
from typing import Any

from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisError

from lockless import KeySpace
from sim.acks import AckLedger, LogEntry
from sim.cluster_loss import cut_off_replica
from sim.cluster_server import ClusterError, LocalCluster, LocalNode
from sim.config import ClusterSection, FaultSpec
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

__all__ = ["ClusterTarget", "FaultRecord"]


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
        self.cpu = CpuMeter(self._pids)
        self.phase = PhaseFaults()  # renewed by begin_phase

    @property
    def report(self) -> dict[str, Any]:
        """The last phase's summary of its faults (set by :meth:`end_phase`)."""
        return self.phase.report

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
        self.cpu.mark()

    def cpu_seconds(self) -> float:
        """CPU used by the cluster's nodes since :meth:`cpu_mark` (nodes restarted count from 0)."""
        return self.cpu.seconds()

    def _pids(self) -> list[int]:
        if self.local is None:
            return []
        return [n.pid for n in self.local.all_nodes if n.pid]

    # -------------------------------------------------------------- phases
    def begin_phase(self, namespace: str, pools: Sequence[str]) -> AckLedger:
        """A new phase on ``namespace``: a fresh ledger (returned, for the registries' wrappers)."""
        self.phase = PhaseFaults(keys=KeySpace(namespace), pools=tuple(pools))
        return self.phase.ledger

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
        self._renew_admin()  # the slots moved: read the logs where they are now
        await count_lost(
            record,
            self.phase.ledger,
            self._log_at,
            since_wall=record.hit_wall - WINDOW_S - fault.lose_writes_s,
            until_wall=end_wall,
            recorders=recorders,
        )
        self.phase.records.append(record)
        for rec in recorders:
            rec.event(
                record.done_at,
                "cluster_fault_done",
                f"{fault.kind} {fault.pool}: took {record.done_at - record.hit_at:.2f} s; "
                f"{record.lost} of {record.acked_checked} acknowledged writes lost",
            )

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
        return [p for p in self.phase.pools if self.local.primary_for_key("{" + p + "}") is owner]

    def _log_at(self, pool: str, seqs: Sequence[int]) -> dict[int, LogEntry | None]:
        """The pool log's entry at each seq, read from the slot's owner now."""
        return read_log(self.admin(), self.phase.keys.log(pool), seqs)

    async def end_phase(self, registries: dict[int, Any], rec: Recorder) -> dict[str, Any]:
        """Per fault and instance: detection and recovery times, and whether lost data was relisted."""
        relisted_lost = await judge_phase(self.phase.records, registries, rec)
        self.phase.report = {**phase_report(self.phase, relisted_lost), "wait_replicas": None}
        return self.phase.report


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
            per = instance_cells(f)
            lines.append(
                f"| {f['kind']} | {f['pool']} ({', '.join(f['pools'])}) | {took:.2f} | {f['acked_checked']} "
                f"| {f['lost']} | {per} |"
            )
    return lines
