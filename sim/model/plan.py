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

import enum
import random
from collections import deque
from collections.abc import Iterator
from typing import NamedTuple

import simpy

from lockless import NodeSpec, Requirements
from sim.config import ExperimentConfig


class Kind(enum.IntEnum):
    """What an :class:`Op` asks the dispatcher to do."""

    HEARTBEAT = 0  # idx = node; value = new load, or -1 for a quiet heartbeat
    REGISTER = 1  # idx = node (a rejoin after a crash or a leave)
    CRASH = 2  # idx = node; no Redis call: the node just stops heartbeating
    LEAVE = 3  # idx = node; graceful remove_node
    JOB = 4  # idx = job number; pool, ask; value = duration (s)
    GET = 5  # idx = node read with get_node
    FAULT_START = 6  # idx = fault index in config.faults
    FAULT_END = 7


class Op(NamedTuple):
    """One intended operation. A NamedTuple: immutable and cheap at a million a minute."""

    t: float
    kind: Kind
    idx: int
    instance: int = 0
    pool: int = 0
    ask: int = 0
    value: float = 0.0


class Cluster:
    """The static facts of a shard: node specs, who serves whom, job requirements."""

    def __init__(self, config: ExperimentConfig, *, shard: int = 0, shards: int = 1) -> None:
        nodes = config.nodes
        self.config = config
        self.shard, self.shards = shard, shards
        self.pools = nodes.pools
        #: Scheduler instances this shard runs (global numbers).
        self.instances = [k for k in range(config.schedulers.instances) if k % shards == shard]
        #: Global node indexes this shard drives.
        self.node_indexes = range(shard, nodes.count, shards)
        # Labels drawn from their own stream so that changing the workload keeps the cluster.
        rng = random.Random(f"{config.experiment.seed}-cluster")
        self.specs: dict[int, NodeSpec] = {}
        for i in range(nodes.count):
            labels = frozenset(lab for lab in nodes.labels if rng.random() < nodes.label_probability)
            if i % shards == shard:
                self.specs[i] = NodeSpec(
                    node_id=f"n{i:06d}",
                    pool=self.pools[i % len(self.pools)],
                    max_jobs=nodes.max_jobs,
                    resources=nodes.resources,
                    labels=labels,
                )
        self.requirements = tuple(
            Requirements(resources=a.resources, labels=frozenset(a.labels)) for a in config.jobs.asks
        )

    def instance_of(self, node: int) -> int:
        """The scheduler instance that carries ``node``'s traffic (always one of this shard's)."""
        return self.instances[(node // self.shards) % len(self.instances)]

    def spec(self, node: int) -> NodeSpec:
        return self.specs[node]


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
        from sim.model import faults as fault_model  # the processes build on this module's types
        from sim.model import jobs as job_model
        from sim.model import nodes as node_model

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
