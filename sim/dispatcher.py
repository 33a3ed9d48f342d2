"""The dispatcher: replays the plan open loop against the loop clock (DESIGN.md section 8).

Plan-and-replay, measured against lockstep in DESIGN.md: the model runs ahead in
small windows (:data:`LOOKAHEAD_S`), and the dispatcher starts one asyncio task per
operation at its intended time, except heartbeats (``sim/heartbeats.py``): a heartbeat may
wait up to ``harness.tick_ms`` for company, and those due together for the same scheduler
instance go out as one ``heartbeat_many`` (up to ``max_batch``). That wait is harness
lag and counts in their latency; other operations are not held for a tick.
Nothing waits for an answer before the next operation is sent (open loop), so a slow
registry shows as latency, never as a lighter load.

With ``harness.heartbeats_via = "harness"`` the heartbeats bypass the instances: the
harness writes them to Redis with its own store, one pipeline per tick, as node agents
would; the instances then carry only the scheduling traffic.

Outcome-driven follow-ups are the dispatcher's: a job admitted on a node finishes on
that node at ``admission done + duration`` (scaled), through the instance that placed it.
Jobs already running at the start (``jobs.utilization``, ``sim.model.prefill``) finish
the same way, through their node's instance. ``busy`` counts the slots the harness knows
taken (prefilled + admitted - released): the run's utilization is sampled from it.

A rejected admission is counted by what it means for the decision metrics: ``conflicts``
(the node was full: another decision took the slot since this one's data was read) or
``stale_rejections`` (the node was gone: dead or removed), whatever the job API.

Each operation's ``sent`` time is read inside its task right before the registry call,
so time spent waiting for the loop counts as harness lag, and lag counts in latency.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from typing import Any

from lockless import Registry, cancel_and_wait
from sim.bridge import Bridge
from sim.config import ExperimentConfig
from sim.heartbeats import HeartbeatDriver, HeartbeatSink
from sim.model.plan import Cluster, Kind, Op, Planner
from sim.recorder import Recorder

#: How far (simulated s) the model is run ahead of the clock, and in which steps: small
#: steps keep each planning burst short, so planning does not stall the loop itself.
LOOKAHEAD_S = 0.2
PLAN_STEP_S = 0.02

FaultHandler = Callable[[Op, float], Awaitable[None]]


class NodeTracker:
    """What the harness knows about each node's life: up, crashed at t, or removed at t.

    Admission control in Redis rejects dead and removed nodes, so a *pick* of one is only
    a stale pick (a metric); an *admission* on one after its invalidation deadline is a
    consistency violation.
    """

    def __init__(self, *, dead_after_s: float, deadline_s: float) -> None:
        self.dead_after_s = dead_after_s
        self.deadline_s = deadline_s
        self._gone: dict[str, tuple[str, float]] = {}

    def up(self, node_id: str) -> None:
        self._gone.pop(node_id, None)

    def crashed(self, node_id: str, at: float) -> None:
        self._gone[node_id] = ("crashed", at)

    def removed(self, node_id: str, at: float) -> None:
        self._gone[node_id] = ("removed", at)

    def gone(self, node_id: str) -> bool:
        """True if the node crashed or was removed and has not come back."""
        return node_id in self._gone

    def overdue(self, node_id: str, at: float) -> str | None:
        """Why ``node_id`` must no longer be used at ``at`` (None if it may be)."""
        gone = self._gone.get(node_id)
        if gone is None:
            return None
        state, since = gone
        # A crashed node stays alive in Redis until its heartbeat is dead_after old.
        allowed = self.deadline_s + (self.dead_after_s if state == "crashed" else 0.0)
        return f"{state} {at - since:.3f} s earlier" if at - since > allowed else None


class Dispatcher:
    """Replays one shard's plan against its registries; see the module docstring."""

    def __init__(
        self,
        *,
        config: ExperimentConfig,
        planner: Planner,
        registries: dict[int, Registry],
        bridge: Bridge,
        recorder: Recorder,
        on_fault: FaultHandler | None = None,
        heartbeat_sink: HeartbeatSink | None = None,
        initial_jobs: dict[int, list[tuple[str, float]]] | None = None,
    ) -> None:
        """``heartbeat_sink``: where heartbeats go instead of the nodes' instances
        (``harness.heartbeats_via = "harness"``: the harness's own store). ``initial_jobs``:
        node index -> [(job id, finish at simulated s)] already running at the start."""
        self.config = config
        self.heartbeat_sink = heartbeat_sink
        self.planner = planner
        self.cluster: Cluster = planner.cluster
        self.registries = registries
        self.bridge = bridge
        self.rec = recorder
        self.on_fault = on_fault
        self.tracker = NodeTracker(
            dead_after_s=config.registry.nodes.dead_after_s, deadline_s=config.harness.invalidation_deadline_s
        )
        self.tasks: set[asyncio.Task[None]] = set()
        self._followups: list[tuple[float, int, tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self.heartbeats = HeartbeatDriver(
            cluster=self.cluster,
            bridge=bridge,
            recorder=recorder,
            max_batch=config.harness.max_batch,
            sink_of=lambda instance: heartbeat_sink or self.registries[instance],
            by_instance=heartbeat_sink is None,
            spawn=self._task,  # counted by the driver, beat by beat
            on_recreated=self._recreated_by_heartbeat,
        )
        self._sent = 0
        self._touched: dict[str, set[str]] = defaultdict(set)
        #: Slots the harness knows taken: prefilled + admitted - released.
        self.busy = 0
        for idx, jobs in (initial_jobs or {}).items():
            spec = self.cluster.spec(idx)
            reg = registries[self.cluster.instance_of(idx)] if registries else None
            for job_id, finish_s in jobs:
                self.busy += 1
                if reg is not None:
                    args = (reg, spec.pool, spec.node_id, job_id)
                    heapq.heappush(self._followups, (bridge.real(finish_s), next(self._seq), args))

    def take_touched(self) -> dict[str, set[str]]:
        """Nodes (by pool) that admitted a job since the last call: the capacity check reads these."""
        touched, self._touched = self._touched, defaultdict(set)
        return touched

    # ---------------------------------------------------------------- replay
    async def run(self) -> None:
        """Replay until the plan and its follow-ups up to the end are all started.

        Each operation is started at its intended time, except heartbeats, which may wait
        up to one tick for company so that a tick's heartbeats share one pipeline.
        """
        bridge, planner, heartbeats = self.bridge, self.planner, self.heartbeats
        tick = self.config.harness.tick_ms / 1000.0
        end_real = bridge.real(planner.end)
        others: deque[Op] = deque()
        followups = self._followups
        inf = math.inf
        while True:
            # Keep the model LOOKAHEAD_S ahead of the clock, in short steps.
            horizon = bridge.sim(bridge.now()) + LOOKAHEAD_S
            while not planner.done and planner.env.now < horizon:
                planned, beats = planner.advance_split(planner.env.now + PLAN_STEP_S)
                others.extend(planned)
                heartbeats.add(beats)
            next_other = bridge.real(others[0].t) if others else inf
            first_beat = heartbeats.first_due()
            next_beats = bridge.real(first_beat) + tick if first_beat < inf else inf
            next_follow = followups[0][0] if followups else inf
            wake = min(next_other, next_beats, next_follow)
            if (
                planner.done
                and not heartbeats.pending
                and not others
                and (not followups or next_follow >= end_real)
            ):
                break
            if wake == inf:  # nothing planned within the lookahead: come back when the model has more
                wake = bridge.real(planner.env.now)
            if wake > bridge.now():
                self.rec.observe("loop_lag", await bridge.sleep_until(wake) * 1e6)
            else:
                await asyncio.sleep(0)  # behind: still let the operations' tasks run
            now = bridge.now()
            while others and bridge.real(others[0].t) <= now:
                self._start_op(others.popleft())
            while followups and followups[0][0] <= now:
                intended, _, args = heapq.heappop(followups)
                if intended < end_real:
                    self._spawn(self._job_finish(intended, *args))
            # Once the first queued beat has waited its tick, every due beat goes: one batch per
            # instance, or one for all when the harness writes them itself. (Not at every wake:
            # the jobs' wakes would split a tick's beats into more, smaller calls.)
            if now >= next_beats:
                heartbeats.send_due(bridge.sim(now))

    @property
    def sent(self) -> int:
        """Operations handed to registries, heartbeats counted one by one (progress display)."""
        return self._sent + self.heartbeats.sent

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` for started operations; cancel the rest and return how many."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=timeout)
        left = [t for t in self.tasks if not t.done()]
        # One cancel() can be swallowed inside redis-py's wait_for (Python 3.11): repeat it.
        await cancel_and_wait(left)
        return len(left)

    def _spawn(self, coro: Awaitable[None]) -> None:
        self._task(coro)
        self._sent += 1

    def _task(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _start_op(self, op: Op) -> None:
        intended = self.bridge.real(op.t)
        kind = op.kind
        if kind is Kind.JOB:
            self._spawn(self._job(intended, op))
        elif kind is Kind.GET:
            self._spawn(self._get(intended, op))
        elif kind is Kind.REGISTER:
            self._spawn(self._register(intended, op))
        elif kind is Kind.LEAVE:
            self._spawn(self._leave(intended, op))
        elif kind is Kind.CRASH:
            # No Redis call: the node just goes silent. Only the harness knows, and remembers.
            self.tracker.crashed(self.cluster.spec(op.idx).node_id, intended)
            self.rec.count("crashes")
        elif kind in (Kind.FAULT_START, Kind.FAULT_END) and self.on_fault is not None:
            self._spawn(self.on_fault(op, intended))

    # ------------------------------------------------------------ operations
    def _recreated_by_heartbeat(self, pool: str, node_id: str) -> None:
        # A node re-created after the harness removed it (a heartbeat sent before the leave,
        # applied after it): alive in Redis again, as the protocol says.
        self.tracker.up(node_id)
        self.rec.count("recreated_by_heartbeat")

    async def _timed(self, op_name: str, intended: float, call: Awaitable[Any]) -> tuple[Any, float, bool]:
        sent = self.bridge.now()
        try:
            result = await call
        except Exception as exc:
            done = self.bridge.now()
            self.rec.op(op_name, intended, sent, done, exc)
            return None, done, False
        done = self.bridge.now()
        self.rec.op(op_name, intended, sent, done)
        return result, done, True

    async def _get(self, intended: float, op: Op) -> None:
        spec = self.cluster.spec(op.idx)
        await self._timed("get", intended, self.registries[op.instance].get_node(spec.pool, spec.node_id))

    async def _register(self, intended: float, op: Op) -> None:
        spec = self.cluster.spec(op.idx)
        _, _, ok = await self._timed("register", intended, self.registries[op.instance].register_node(spec))
        if ok:
            self.tracker.up(spec.node_id)

    async def _leave(self, intended: float, op: Op) -> None:
        spec = self.cluster.spec(op.idx)
        reg = self.registries[op.instance]
        _, done, ok = await self._timed("remove", intended, reg.remove_node(spec.pool, spec.node_id))
        self.rec.count("leaves")
        if ok:
            self.tracker.removed(spec.node_id, done)

    async def _job(self, intended: float, op: Op) -> None:
        reg = self.registries[op.instance]
        pool = self.cluster.pools[op.pool]
        req = self.cluster.requirements[op.ask]
        job_id = f"j{op.idx}"
        jobs = self.config.jobs
        if jobs.api == "place_job":
            placement, done, ok = await self._timed("place", intended, reg.place_job(pool, job_id, req))
            if not ok:
                return
            self.rec.observe("staleness", placement.data_age_s * 1e6)
            self._check_picks(placement.selection.picks if placement.selection else (), done)
            for node_id in placement.rejected:
                # Placement carries no reasons: a node the harness knows gone was a stale
                # pick; any other was full, i.e. another decision took its slot.
                self._rejected("not_alive" if self.tracker.gone(node_id) else "full")
            if placement.rejected:
                self.rec.count("retried_placements")
            if placement.node_id is None:
                self.rec.count("unplaced")
                return
            self._admitted(op, reg, pool, placement.node_id, job_id, placement.reason, done)
            return
        age = reg.last_sync_age()
        selection, done, ok = await self._timed(
            "select", intended, reg.select_nodes(pool, jobs.candidates, req)
        )
        if not ok:
            self.rec.count("unplaced")
            return
        self.rec.observe("staleness", age * 1e6)
        self._check_picks(selection.picks, done)
        for node in selection.picks:
            # Started right after the selection returned: its intended time is that return.
            admission, done, ok = await self._timed(
                "job_start", done, reg.job_start(pool, node.node_id, job_id)
            )
            if ok and admission.admitted:
                # The whole placement, from the arrival (its lag was counted with the select).
                self.rec.op("place", intended, intended, done, count_lag=False)
                if node is not selection.picks[0]:
                    self.rec.count("retried_placements")
                self._admitted(op, reg, pool, node.node_id, job_id, admission.reason, done)
                return
            self.rec.count(f"rejected:{admission.reason}" if ok else "rejected:error")
            if ok:
                self._rejected(admission.reason)
        self.rec.count("unplaced")

    def _rejected(self, reason: str) -> None:
        self.rec.count("conflicts" if reason == "full" else "stale_rejections")

    def _check_picks(self, picks: Any, at: float) -> None:
        for node in picks:
            if self.tracker.overdue(node.node_id, at):
                self.rec.count("stale_picks")

    def _admitted(
        self, op: Op, reg: Registry, pool: str, node_id: str, job_id: str, reason: str, done: float
    ):
        self.rec.count("placed")
        self.busy += 1
        self._touched[pool].add(node_id)
        if reason == "journaled":
            self.rec.count("journaled_admissions")
        else:
            why = self.tracker.overdue(node_id, done)
            if why:
                self.rec.violation(
                    done, "admitted_on_gone_node", f"job {job_id} admitted on {node_id}, {why}"
                )
        finish_at = done + op.value * self.bridge.scale
        heapq.heappush(self._followups, (finish_at, next(self._seq), (reg, pool, node_id, job_id)))

    async def _job_finish(self, intended: float, reg: Registry, pool: str, node_id: str, job_id: str) -> None:
        released, _, ok = await self._timed("job_finish", intended, reg.job_finish(pool, node_id, job_id))
        if ok and released:
            self.busy -= 1
