"""The plain-Python model of the registry that the stateful test holds Redis and every cache to.

It restates the write semantics of ``lockless/redis/scripts.py`` (DESIGN.md section 3)
in a few lines of Python, from the documented contract rather than from the Lua: every
write returns what the script must return, and the model's records (including
``version`` and the pool ``seq``) are what Redis must hold afterwards.

What the model deliberately leaves out:

* timestamps (the ``alive`` scores): they come from Redis ``TIME``; liveness is modelled
  as a flag, ``lapsed``, set when the test writes a node's ``alive`` score into the past;
* TTL expiry of node keys: the test's TTL is far longer than any run.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lockless.core.snapshot import NodeSnapshot, NodeSpec, Requirements

#: A record as compared between the model, Redis and a cache: everything placement reads.
Record = tuple[int, str, int, int, float, tuple[tuple[str, float], ...], tuple[str, ...]]


@dataclass
class ModelNode:
    """One node as Redis must hold it."""

    version: int
    status: str
    max_jobs: int
    load: float
    resources: dict[str, float]
    labels: frozenset[str]
    #: Ids of the jobs admitted on the node (its Redis job set).
    jobs: set[str] = field(default_factory=set)
    #: True once its heartbeat is older than ``dead_after`` (the test wrote its alive score back).
    lapsed: bool = False

    @property
    def current_jobs(self) -> int:
        return len(self.jobs)

    def record(self) -> Record:
        return (
            self.version,
            self.status,
            self.max_jobs,
            self.current_jobs,
            self.load,
            tuple(sorted(self.resources.items())),
            tuple(sorted(self.labels)),
        )

    def placeable(self) -> bool:
        return self.status == "up" and self.current_jobs < self.max_jobs

    def meets(self, req: Requirements) -> bool:
        return req.labels <= self.labels and all(
            self.resources.get(k, 0.0) >= v for k, v in req.resources.items()
        )


def snapshot_record(node: NodeSnapshot) -> Record:
    """The comparable part of a snapshot: every field but its identity (node id, pool)."""
    return (
        node.version,
        node.status,
        node.max_jobs,
        node.current_jobs,
        node.load,
        tuple(sorted(node.resources.items())),
        tuple(sorted(node.labels)),
    )


@dataclass(frozen=True)
class AdmissionOutcome:
    admitted: bool
    reason: str
    version: int
    current_jobs: int
    max_jobs: int


class RegistryModel:
    """Node records per (pool, node id), and each pool's ``seq``."""

    def __init__(self, pools: Sequence[str], load_tolerance: float) -> None:
        self.pools = tuple(pools)
        self.load_tolerance = load_tolerance
        self.nodes: dict[tuple[str, str], ModelNode] = {}
        self.seq: dict[str, int] = dict.fromkeys(self.pools, 0)

    def copy(self) -> RegistryModel:
        return copy.deepcopy(self)

    def pool_nodes(self, pool: str) -> dict[str, ModelNode]:
        return {n: node for (p, n), node in self.nodes.items() if p == pool}

    def get(self, pool: str, node_id: str) -> ModelNode | None:
        return self.nodes.get((pool, node_id))

    def _bump(self, pool: str) -> int:
        self.seq[pool] += 1
        return self.seq[pool]

    def lose_data(self) -> None:
        """Redis restarted empty: every key is gone, every seq starts again from 0."""
        self.nodes.clear()
        self.seq = dict.fromkeys(self.pools, 0)

    # ------------------------------------------------------------------ writes
    def register(self, spec: NodeSpec) -> int:
        """Create or replace the record; the job set is kept (a node agent restart)."""
        old = self.get(spec.pool, spec.node_id)
        version = self._bump(spec.pool)
        self.nodes[spec.pool, spec.node_id] = ModelNode(
            version=version,
            status=spec.status,
            max_jobs=spec.max_jobs,
            load=float(spec.load),
            resources=dict(spec.resources),
            labels=frozenset(spec.labels),
            jobs=set(old.jobs) if old else set(),
        )
        return version

    def heartbeat(
        self,
        pool: str,
        node_id: str,
        load: float,
        running_jobs: Sequence[str] | None,
        spec: NodeSpec | None,
    ) -> tuple[int, bool, bool]:
        """Returns (version, changed, recreated), as ``RedisStore.heartbeat`` reports it."""
        node = self.get(pool, node_id)
        if node is None:
            if spec is None:
                return (0, False, False)
            version = self._bump(pool)
            self.nodes[pool, node_id] = ModelNode(
                version=version,
                status=spec.status,
                max_jobs=spec.max_jobs,
                load=float(load),  # the beat's load, not the spec's
                resources=dict(spec.resources),
                labels=frozenset(spec.labels),
                jobs=set(running_jobs or ()),
            )
            return (version, True, True)
        node.lapsed = False  # any heartbeat refreshes liveness
        changed = False
        if abs(node.load - load) > self.load_tolerance:
            node.load = float(load)
            changed = True
        if running_jobs is not None and set(running_jobs) != node.jobs:
            node.jobs = set(running_jobs)
            changed = True
        if not changed:
            return (node.version, False, False)
        node.version = self._bump(pool)
        return (node.version, True, False)

    def remove(self, pool: str, node_id: str) -> int:
        """The removal's version, 0 if the node did not exist."""
        if self.nodes.pop((pool, node_id), None) is None:
            return 0
        return self._bump(pool)

    def admission(self, pool: str, node_id: str, job_id: str) -> AdmissionOutcome:
        """What ``job_start`` answers, without changing anything."""
        node = self.get(pool, node_id)
        if node is None:
            return AdmissionOutcome(False, "not_alive", 0, 0, 0)
        cur, top = node.current_jobs, node.max_jobs
        if job_id in node.jobs:
            return AdmissionOutcome(True, "already_admitted", node.version, cur, top)
        if node.status != "up":
            return AdmissionOutcome(False, "draining", node.version, cur, top)
        if node.lapsed:
            return AdmissionOutcome(False, "not_alive", node.version, cur, top)
        if cur >= top:
            return AdmissionOutcome(False, "full", node.version, cur, top)
        return AdmissionOutcome(True, "admitted", self.seq[pool] + 1, cur + 1, top)

    def job_start(self, pool: str, node_id: str, job_id: str) -> AdmissionOutcome:
        outcome = self.admission(pool, node_id, job_id)
        if outcome.reason == "admitted":
            node = self.nodes[pool, node_id]
            node.jobs.add(job_id)
            node.version = self._bump(pool)
        return outcome

    def job_finish(self, pool: str, node_id: str, job_id: str) -> tuple[bool, int, int]:
        """Returns (released, version, current_jobs); version 0 for an unknown node."""
        node = self.get(pool, node_id)
        if node is None:
            return (False, 0, 0)
        if job_id not in node.jobs:
            return (False, node.version, node.current_jobs)
        node.jobs.discard(job_id)
        node.version = self._bump(pool)
        return (True, node.version, node.current_jobs)

    def lapse(self, pool: str, node_id: str) -> bool:
        node = self.get(pool, node_id)
        if node is None:
            return False
        node.lapsed = True
        return True

    def lapsed(self, pool: str) -> set[str]:
        return {n for n, node in self.pool_nodes(pool).items() if node.lapsed}

    def reap(self, pool: str, order: Sequence[str]) -> None:
        """Remove the lapsed nodes of ``pool`` in the order the reaper reported (one seq each)."""
        for node_id in order:
            del self.nodes[pool, node_id]
            self._bump(pool)

    # ------------------------------------------------------------------- views
    def records(self, pool: str) -> dict[str, Record]:
        return {n: node.record() for n, node in self.pool_nodes(pool).items()}

    def job_sets(self, pool: str) -> dict[str, set[str]]:
        return {n: set(node.jobs) for n, node in self.pool_nodes(pool).items() if node.jobs}

    def placeable(self, pool: str, req: Requirements | None = None) -> set[str]:
        return {
            n
            for n, node in self.pool_nodes(pool).items()
            if node.placeable() and (req is None or node.meets(req))
        }


def records_of(nodes: Mapping[str, NodeSnapshot]) -> dict[str, Record]:
    return {n: snapshot_record(s) for n, s in nodes.items()}
