"""The harness's heartbeat path: the plan's beats, sent as node agents send them, for little CPU.

At 100,000 nodes and a 5 s interval the harness sends 20,000 heartbeats a second, so what
it spends per beat decides how large a cluster one machine can drive (issue 12: ~30 us of
harness CPU per beat, end to end). The beats therefore never become one object each on
their way: the model hands them over as three parallel lists (:class:`~sim.model.plan.Beats`),
:class:`HeartbeatDriver` queues them as such, and a tick's due beats go out together.

What stays per beat is what a node agent does: one :class:`~lockless.Heartbeat` value per
node, built once and rebuilt only when the node reports a new load (the value is
immutable, so the same one is sent beat after beat), and the library's production write
call, ``heartbeat_many`` (the store's, or the node's scheduler instance's), unchanged. A
node Redis does not know (reaped while silent, or Redis lost its data) answers version 0;
like a real agent, it then beats again carrying its spec, which re-creates it.

Open-loop accounting is exact: each beat's intended time is its own (from the plan),
``sent`` is read right before the call and ``done`` right after, and the recorder takes
the whole batch's three times at once (:meth:`~sim.recorder.Recorder.batch`).
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import psutil
from redis.exceptions import RedisError

from lockless import Heartbeat, HeartbeatResult, LocklessError
from sim.bridge import Bridge
from sim.model.plan import Beats, Cluster
from sim.probe import ADMIN_COMMANDS, admin_client
from sim.recorder import Recorder

#: Sent beats are dropped from the queue's lists once this many have gathered at the front.
_COMPACT_AT = 8192


class HeartbeatSink(Protocol):
    """Anything with the ``heartbeat_many`` of ``Registry`` (a registry, or a bare ``RedisStore``)."""

    async def heartbeat_many(self, beats: Sequence[Heartbeat]) -> list[HeartbeatResult]: ...


class HeartbeatDriver:
    """Queues the plan's heartbeats and sends the due ones, one ``heartbeat_many`` per sink and batch.

    ``sink_of(instance)`` is where a node's beats go: its scheduler instance, or (with
    ``by_instance`` False) one sink for all, the harness's own store. ``spawn`` starts a
    send as a task of the dispatcher's (so it is drained and counted with the others);
    ``on_recreated(pool, node_id)`` hears of every node a beat re-created.
    """

    def __init__(
        self,
        *,
        cluster: Cluster,
        bridge: Bridge,
        recorder: Recorder,
        max_batch: int,
        sink_of: Callable[[int], HeartbeatSink],
        by_instance: bool,
        spawn: Callable[[Awaitable[None]], None],
        on_recreated: Callable[[str, str], None],
    ) -> None:
        self.cluster = cluster
        self.bridge = bridge
        self.rec = recorder
        self.max_batch = max_batch
        self.sink_of = sink_of
        self.by_instance = by_instance
        self.spawn = spawn
        self.on_recreated = on_recreated
        # The queue: planned, not yet sent beats (parallel lists, times sorted), from _head on.
        self._times: list[float] = []
        self._nodes: list[int] = []
        self._loads: list[float] = []
        self._head = 0
        # Each node's current heartbeat (pool, id, load), reused while its load stays.
        self._beats: dict[int, Heartbeat] = {}
        self.sent = 0

    # ------------------------------------------------------------------ queue
    def add(self, beats: Beats) -> None:
        """Queue a window of the plan's beats (later than every beat queued before)."""
        self._times += beats.times
        self._nodes += beats.nodes
        self._loads += beats.loads

    @property
    def pending(self) -> int:
        return len(self._times) - self._head

    def first_due(self) -> float:
        """Simulated time of the earliest queued beat (inf if none)."""
        return self._times[self._head] if self._head < len(self._times) else math.inf

    def send_due(self, sim_now: float) -> None:
        """Send every queued beat intended at or before ``sim_now``: one task per sink and batch."""
        head = self._head
        end = bisect.bisect_right(self._times, sim_now, head)
        if end == head:
            return
        times, nodes, loads = self._times[head:end], self._nodes[head:end], self._loads[head:end]
        self._head = end
        if end >= _COMPACT_AT:
            del self._times[:end], self._nodes[:end], self._loads[:end]
            self._head = 0
        if self.by_instance:
            groups: dict[int, list[int]] = {}
            instance_of = self.cluster.instance_of
            for k, idx in enumerate(nodes):
                groups.setdefault(instance_of(idx), []).append(k)
            for instance, ks in groups.items():
                self._spawn_batches(
                    instance, [times[k] for k in ks], [nodes[k] for k in ks], [loads[k] for k in ks]
                )
        else:
            self._spawn_batches(-1, times, nodes, loads)

    def _spawn_batches(self, instance: int, times: list[float], nodes: list[int], loads: list[float]) -> None:
        step = self.max_batch
        for i in range(0, len(times), step):
            self.spawn(self._send(instance, times[i : i + step], nodes[i : i + step], loads[i : i + step]))

    # ------------------------------------------------------------------- send
    def _heartbeat(self, idx: int, load: float) -> Heartbeat:
        """The node's heartbeat value, rebuilt only when it reports a new load."""
        beat = self._beats.get(idx)
        if beat is None or (load >= 0 and load != beat.load):
            spec = self.cluster.spec(idx)
            beat = Heartbeat(pool=spec.pool, node_id=spec.node_id, load=load if load >= 0 else 0.0)
            self._beats[idx] = beat
        return beat

    async def _send(self, instance: int, times: list[float], nodes: list[int], loads: list[float]) -> None:
        get = self._beats.get
        beats = []
        for idx, load in zip(nodes, loads, strict=True):
            beat = get(idx)
            beats.append(beat if beat is not None and load < 0 else self._heartbeat(idx, load))
        sink = self.sink_of(instance)
        bridge = self.bridge
        start, scale = bridge.start, bridge.scale
        intended = [start + t * scale for t in times]  # Bridge.real of each
        sent = bridge.now()
        error: BaseException | None = None
        try:
            results = await sink.heartbeat_many(beats)
            unknown = [k for k, r in enumerate(results) if r.version == 0 and not r.journaled]
            if unknown:
                again = [dataclasses.replace(beats[k], spec=self.cluster.spec(nodes[k])) for k in unknown]
                results = [*results, *await sink.heartbeat_many(again)]
                self.rec.count("reregistered_by_heartbeat", len(again))
        except Exception as exc:  # recorded as failed operations, by type
            error = exc
        else:
            recreated = [r.node_id for r in results if r.recreated]
            if recreated:
                pools = {b.node_id: b.pool for b in beats}
                for node_id in recreated:
                    # A node re-created after the harness removed it (a beat sent before the
                    # leave, applied after it), or after Redis lost it: alive in Redis again.
                    self.on_recreated(pools[node_id], node_id)
        self.sent += len(beats)
        self.rec.batch("heartbeat", intended, sent, bridge.now(), error)


async def refresh_liveness(store: HeartbeatSink, cluster: Cluster, batch: int = 1000) -> None:
    """One quiet heartbeat from every node of ``cluster`` (a node Redis lost is re-created from its spec)."""
    specs = list(cluster.specs.values())
    for i in range(0, len(specs), batch):
        part = specs[i : i + batch]
        results = await store.heartbeat_many([Heartbeat(pool=s.pool, node_id=s.node_id) for s in part])
        lost = [spec for spec, r in zip(part, results, strict=True) if r.version == 0]
        if lost:
            await store.heartbeat_many([Heartbeat(pool=s.pool, node_id=s.node_id, spec=s) for s in lost])


async def keep_alive(store: HeartbeatSink, cluster: Cluster, nodes: Sequence[int], batch: int = 1000) -> None:
    """Forever (until cancelled): every node of ``nodes`` heartbeats about twice per interval.

    After the plan the nodes do not stop living: the checks that follow it (drain, quiet
    period, convergence) take longer than ``dead_after`` at 100,000 nodes, and a cluster
    that fell silent would be reaped under them, one event per node. Quiet beats change
    nothing a check compares. Nodes Redis no longer knows stay unknown (no spec is sent).
    """
    interval = cluster.config.nodes.heartbeat_interval_s
    loop = asyncio.get_running_loop()
    specs = [cluster.spec(idx) for idx in nodes]
    beats = [Heartbeat(pool=s.pool, node_id=s.node_id) for s in specs]
    while True:
        started = loop.time()
        try:
            for i in range(0, len(beats), batch):
                await store.heartbeat_many(beats[i : i + batch])
        except LocklessError:
            pass  # Redis out of reach (a fault experiment ending in an outage): try again next time
        await asyncio.sleep(max(0.0, interval / 2 - (loop.time() - started)))


def _cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system


class CpuWindow:
    """CPU of the harness, the server and the scheduler processes over the recorded part of a phase.

    The phase-wide CPU figures of the report also hold start-up, the drain and the final
    convergence check (which reads every record of the cluster): at 100,000 nodes those
    dwarf the steady state. This window runs from the end of the warm-up to the end of the
    plan, and divides by the heartbeats sent in it: the cost of a heartbeat, end to end.
    With the server's URL it also takes ``INFO commandstats`` at both ends: the server time
    of every script call (heartbeat batches and the jobs' scripts alike: ``evalsha`` times
    a script whole, its inner commands included) per heartbeat, and every command counted.
    """

    def __init__(
        self, *, redis_pid: int | None, scheduler_pids: Sequence[int] = (), redis_url: str | None = None
    ) -> None:
        self.pids = {"harness": psutil.Process().pid, "redis": redis_pid}
        self.scheduler_pids = list(scheduler_pids)
        self.redis_url = redis_url
        self._start: tuple[float, dict[str, float], int, dict[str, tuple[int, int]]] | None = None

    def _cpu(self) -> dict[str, float]:
        return {
            "harness": _cpu_s(self.pids["harness"]),
            "redis": _cpu_s(self.pids["redis"]),
            "scheduler": sum(_cpu_s(pid) for pid in self.scheduler_pids),
        }

    async def _commandstats(self) -> dict[str, tuple[int, int]]:
        """``{command: (calls, usec)}``, or {} without a URL or when the server does not answer."""
        if self.redis_url is None:
            return {}
        client = admin_client(self.redis_url)
        try:
            info = await client.info("commandstats")
        except RedisError:
            return {}
        finally:
            await client.aclose()
        return {
            name.removeprefix("cmdstat_").lower(): (int(v["calls"]), int(v["usec"]))
            for name, v in info.items()
            if isinstance(v, dict) and "calls" in v
        }

    async def start(self, wall: float, beats_sent: int) -> None:
        stats = await self._commandstats()
        self._start = (wall, self._cpu(), beats_sent, stats)

    async def stop(self, wall: float, beats_sent: int) -> dict[str, float]:
        """Counters for the recorder (CPU in % of one core; per heartbeat in us); {} if never started."""
        if self._start is None:
            return {}
        cpu1 = self._cpu()
        stats1 = await self._commandstats()
        wall0, cpu0, sent0, stats0 = self._start
        span, beats = wall - wall0, beats_sent - sent0
        out: dict[str, float] = {"steady_s": round(span, 3), "steady_heartbeats": beats}
        measured = {"harness", *(("redis",) if self.pids["redis"] else ())}
        measured |= {"scheduler"} if self.scheduler_pids else set()
        for name in sorted(measured):
            used = cpu1[name] - cpu0[name]
            out[f"steady_{name}_cpu_pct"] = round(100 * used / span, 1) if span > 0 else 0.0
            if beats:
                out[f"steady_{name}_cpu_us_per_heartbeat"] = round(1e6 * used / beats, 2)
        if stats0 and stats1 and beats:
            delta = {
                k: (c - stats0.get(k, (0, 0))[0], u - stats0.get(k, (0, 0))[1])
                for k, (c, u) in stats1.items()
                if k.split("|")[0] not in ADMIN_COMMANDS
            }
            out["steady_redis_evalsha_us_per_heartbeat"] = round(delta.get("evalsha", (0, 0))[1] / beats, 2)
            out["steady_redis_evalsha_per_heartbeat"] = round(delta.get("evalsha", (0, 0))[0] / beats, 4)
            # Every command the server ran (a script's inner commands included), per heartbeat,
            # and each command's calls per heartbeat where it is more than a rounding error.
            out["steady_redis_commands_per_heartbeat"] = round(sum(c for c, _ in delta.values()) / beats, 3)
            for name, (calls, _) in delta.items():
                if calls / beats >= 0.001:
                    out[f"steady_redis_calls_per_heartbeat.{name}"] = round(calls / beats, 4)
        return out
