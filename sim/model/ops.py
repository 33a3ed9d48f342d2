"""The values the model emits and reads: intended operations, and the cluster's static facts.

Kept apart from the processes that emit them (``nodes``, ``jobs``, ``faults``) and from
the :class:`~sim.model.plan.Planner` that runs those processes, so each imports this
module and nothing imports back.
"""

from __future__ import annotations

import enum
import random
from typing import NamedTuple

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
