"""The plan: time-ordered intended operations emitted by the SimPy model.

The model (``nodes``, ``jobs``, ``faults``) runs in SimPy's virtual time and never
awaits; each process appends :class:`Op` records at ``env.now``, so the plan comes out
sorted by intended time. The dispatcher replays it open loop against the wall clock
(DESIGN.md section 8, "plan-and-replay"). Outcome-driven follow-ups (a job's finish on
the node it actually landed on) are not in the plan: only the dispatcher knows where a
job landed, so it schedules them itself.

:class:`Planner` runs the SimPy environment in windows (``advance(until)``) instead of
emitting the whole plan up front: 100,000 nodes heartbeating every 5 s make 1.2 million
operations a minute, too many to hold, and SimPy is deterministic however its run is
cut into windows, so the same seed still gives the same plan.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator

import simpy

from sim.config import ExperimentConfig
from sim.model import faults as fault_model
from sim.model import jobs as job_model
from sim.model import nodes as node_model
from sim.model.ops import Cluster, Kind, Op

__all__ = ["Cluster", "Kind", "Op", "Planner"]


class Planner:
    """Runs the SimPy model and hands out its plan window by window."""

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
        if nodes:
            node_model.start(self.env, emit, self.cluster, random.Random(f"{seed}-nodes-{shard}"))
        if jobs:
            job_model.start(self.env, emit, self.cluster, random.Random(f"{seed}-jobs-{shard}"))
        # Faults act on the one shared server: one process owns them (shard 0, or the parent).
        if faults if faults is not None else shard == 0:
            fault_model.start(self.env, emit, config.faults)

    def advance(self, until: float) -> deque[Op]:
        """Run the model to ``until`` (capped at the end) and return the ops emitted meanwhile."""
        until = min(until, self.end)
        if until > self.env.now:
            self.env.run(until=until)
        # The processes hold the deque's bound append, so hand out a copy and keep the deque.
        out = self._out.copy()
        self._out.clear()
        return out

    @property
    def done(self) -> bool:
        return self.env.now >= self.end

    def plan(self) -> Iterator[Op]:
        """The whole plan at once (tests, small runs)."""
        step = 1.0
        while not self.done:
            yield from self.advance(self.env.now + step)
