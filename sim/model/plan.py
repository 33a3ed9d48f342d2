"""The plan: time-ordered intended operations emitted by the model.

The model runs in virtual time and never awaits: the jobs and faults are SimPy processes
that append :class:`Op` records at ``env.now``; the nodes' lives (``nodes``) are computed
from a heap of each node's next instant, in the same time order, without a process per
node. The plan comes out sorted by intended time. The dispatcher replays it open loop against the wall clock
(DESIGN.md section 8, "plan-and-replay"). Outcome-driven follow-ups (a job's finish on
the node it actually landed on) are not in the plan: only the dispatcher knows where a
job landed, so it schedules them itself.

:class:`Planner` runs the SimPy environment in windows (``advance(until)``) instead of
emitting the whole plan up front: 100,000 nodes heartbeating every 5 s make 1.2 million
operations a minute, too many to hold, and SimPy is deterministic however its run is
cut into windows, so the same seed still gives the same plan.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Iterator
from operator import attrgetter
from typing import NamedTuple

import simpy

from sim.config import ExperimentConfig
from sim.model import faults as fault_model
from sim.model import jobs as job_model
from sim.model import nodes as node_model
from sim.model.ops import Cluster, Kind, Op

__all__ = ["Beats", "Cluster", "Kind", "Op", "Planner"]


class Beats(NamedTuple):
    """Heartbeats of a window as three parallel lists (no :class:`Op` per beat: there are
    20,000 a second at 100,000 nodes)."""

    times: list[float]
    """Intended time (simulated s), non-decreasing."""
    nodes: list[int]
    """Node index."""
    loads: list[float]
    """The load the beat reports when it moved, else -1 (a quiet heartbeat)."""


_BY_TIME = attrgetter("t")


class Planner:
    """Runs the model and hands out its plan window by window."""

    def __init__(
        self,
        config: ExperimentConfig,
        *,
        shard: int = 0,
        shards: int = 1,
        nodes: bool = True,
        jobs: bool = True,
        faults: bool | None = None,
    ) -> None:
        """``nodes``/``jobs``/``faults`` select the processes (faults default to shard 0 only)."""

        self.config = config
        self.cluster = Cluster(config, shard=shard, shards=shards)
        self.end = config.experiment.duration_s
        self.env = simpy.Environment()
        self._out: deque[Op] = deque()
        seed = config.experiment.seed
        emit = self._out.append
        self.nodes: node_model.NodeLives | None = None
        if nodes:
            # Not per shard: a node's life depends on the seed and its index alone.
            self.nodes = node_model.NodeLives(self.cluster, f"{seed}-nodes")
        if jobs:
            job_model.start(self.env, emit, self.cluster, random.Random(f"{seed}-jobs-{shard}"))
        # Faults act on the one shared server: one process owns them (shard 0, or the parent).
        if faults if faults is not None else shard == 0:
            fault_model.start(self.env, emit, config.faults)

    def advance_split(self, until: float) -> tuple[list[Op], Beats]:
        """Run the model to ``until`` (capped at the end): the operations other than
        heartbeats, in time order, and the heartbeats apart."""
        until = min(until, self.end)
        beats = Beats([], [], [])
        life: list[Op] = []
        if self.nodes is not None:
            self.nodes.advance(until, life.append, *beats)
        if until > self.env.now:
            self.env.run(until=until)
        # The processes hold the deque's bound append, so take its contents and keep the deque.
        simulated = list(self._out)
        self._out.clear()
        others = list(heapq.merge(life, simulated, key=_BY_TIME)) if life else simulated
        return others, beats

    def advance(self, until: float) -> deque[Op]:
        """Run the model to ``until`` (capped at the end) and return every operation, heartbeats as ops."""
        others, beats = self.advance_split(until)
        instance_of = self.cluster.instance_of
        beat_ops = [
            Op(t, Kind.HEARTBEAT, idx, instance_of(idx), value=load)
            for t, idx, load in zip(*beats, strict=True)
        ]
        return deque(heapq.merge(others, beat_ops, key=_BY_TIME))

    @property
    def done(self) -> bool:
        return self.env.now >= self.end

    def plan(self) -> Iterator[Op]:
        """The whole plan at once (tests, small runs)."""
        step = 1.0
        while not self.done:
            yield from self.advance(self.env.now + step)
