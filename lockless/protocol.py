"""The interface every registry architecture implements, and the values it returns.

The harness and the conformance suite depend only on :class:`Registry`, so the
lockless cache and every baseline the harness compares it with are exchanged without
touching either; nothing outside an architecture probes it for optional methods. Every
value here is a frozen dataclass: results cross task boundaries and are recorded, and
must not change after the fact.

:func:`place` is placement written once against the protocol (select, then admit at
the first candidate that accepts), so every architecture that places by "select from a
view, then admit in Redis" places the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from lockless.core.commands import Heartbeat
from lockless.core.modes import Mode, ModeSwitch
from lockless.core.selection import Selection
from lockless.core.snapshot import NodeSnapshot, NodeSpec, Requirements
from lockless.metrics import MetricsSnapshot

__all__ = [
    "PLACEMENT_CANDIDATES",
    "Admission",
    "Heartbeat",
    "HeartbeatResult",
    "Placement",
    "ReadResult",
    "Registry",
    "place",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Admission:
    """The answer of ``job_start``: admitted, or why not."""

    admitted: bool
    node_id: str
    job_id: str
    #: The node version after the admission (or the current one on rejection); 0 if the node is unknown.
    version: int
    #: ``admitted`` | ``already_admitted`` | ``full`` | ``not_alive`` | ``draining`` | ``journaled``
    reason: str
    current_jobs: int = 0
    max_jobs: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatResult:
    """The answer of ``heartbeat``."""

    node_id: str
    #: Node version after the heartbeat (unchanged for a quiet heartbeat).
    version: int
    #: True when the heartbeat changed what placement reads (new version, event published).
    changed: bool
    #: True when the node was unknown to Redis and the heartbeat re-created it.
    recreated: bool = False
    #: True when Redis was unreachable and the heartbeat went to the local journal.
    journaled: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """The outcome of ``place_job``: where the job landed, and what was tried."""

    job_id: str
    pool: str
    node_id: str | None
    version: int = 0
    #: Nodes tried that rejected the job at admission (raced by another instance).
    rejected: tuple[str, ...] = ()
    selection: Selection | None = None
    #: Age (s) of the cached data the decision used; 0 for architectures that read Redis.
    data_age_s: float = 0.0
    reason: str = ""

    @property
    def placed(self) -> bool:
        return self.node_id is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadResult:
    """A cached read and how old its data may be."""

    node: NodeSnapshot | None
    #: Seconds since this instance last heard from Redis.
    last_sync_age_s: float
    #: True when served past the staleness bound or in LOCAL_ONLY.
    stale: bool = False
    mode: Mode = Mode.NORMAL


@runtime_checkable
class Registry(Protocol):
    """A node registry as a scheduler instance sees it. I/O methods are coroutines.

    Every architecture implements all of it; where a method does not apply to a design
    (a cache view of an architecture without a cache), its answer says so (``None``, an
    empty tuple) rather than the method being absent.
    """

    #: Architecture name, e.g. ``lockless`` | ``locked`` | ``direct``.
    name: str

    async def start(self) -> None:
        """Connect, load scripts, and (for caches) fill and subscribe the served pools."""

    async def close(self) -> None:
        """Stop background tasks and release connections. Idempotent."""

    @property
    def mode(self) -> Mode:
        """The current degradation mode (baselines are always NORMAL or LOCAL_ONLY)."""

    def mode_switches(self) -> tuple[ModeSwitch, ...]:
        """The mode switches so far, oldest first (a bounded recent history)."""

    def last_sync_age(self) -> float:
        """Seconds since this instance last heard from Redis: how old a decision's data may be."""

    async def cached_view(self, pool: str) -> Mapping[str, NodeSnapshot] | None:
        """A copy of the instance's cached view of ``pool``; ``None`` if it keeps no cache."""

    def take_replay_rejections(self) -> list[Admission]:
        """Admissions made locally during an outage that Redis refused on replay, since the
        last call (the scheduler must re-place those jobs). Empty for designs that never admit locally."""

    async def get_node(self, pool: str, node_id: str) -> NodeSnapshot | None:
        """The node's current snapshot, or ``None`` if it does not exist."""

    async def select_nodes(
        self,
        pool: str,
        count: int = 1,
        requirements: Requirements | None = None,
        *,
        policy: str | None = None,
    ) -> Selection:
        """Pick up to ``count`` placeable nodes; explains what was filtered. Reads only."""

    async def place_job(
        self, pool: str, job_id: str, requirements: Requirements | None = None, *, policy: str | None = None
    ) -> Placement:
        """Select a node and admit the job there, falling back to the next candidate on rejection."""

    async def register_node(self, spec: NodeSpec) -> int:
        """Create or replace a node record; returns its new version."""

    async def heartbeat(
        self,
        pool: str,
        node_id: str,
        *,
        load: float = 0.0,
        running_jobs: Sequence[str] | None = None,
        spec: NodeSpec | None = None,
    ) -> HeartbeatResult:
        """Refresh liveness; a changed load (beyond tolerance) or job set makes a new version."""

    async def heartbeat_many(self, beats: Sequence[Heartbeat]) -> list[HeartbeatResult]:
        """Several heartbeats in one pipelined round trip."""

    async def remove_node(self, pool: str, node_id: str) -> bool:
        """Remove a node (graceful leave). True if it existed."""

    async def job_start(self, pool: str, node_id: str, job_id: str) -> Admission:
        """Admission control: admit ``job_id`` on the node only if it is alive and below ``max_jobs``.

        Keyed by job id, so repeating it changes nothing. If it raises (Redis did not answer),
        the outcome is unknown: Redis may still run the command. Repeat it with the same job
        id, or release the job with :meth:`job_finish`, never simply drop it.
        """

    async def job_finish(self, pool: str, node_id: str, job_id: str) -> bool:
        """Release ``job_id``'s slot. Idempotent; True if this call released it."""

    def metrics(self) -> MetricsSnapshot:
        """A consistent copy of this instance's counters and histograms."""


#: Candidates asked of selection per placement; the rest are fallbacks on rejection.
PLACEMENT_CANDIDATES = 3


async def place(
    registry: Registry,
    pool: str,
    job_id: str,
    requirements: Requirements | None = None,
    *,
    policy: str | None = None,
    candidates: int = PLACEMENT_CANDIDATES,
) -> Placement:
    """Select ``candidates`` nodes, then admit at the first that accepts (DESIGN.md section 6).

    A rejection (another instance took the slot, the node left) falls back to the next
    candidate; the placement lists every node that rejected the job. ``data_age_s`` is
    the registry's :meth:`~Registry.last_sync_age` when the decision was taken.
    """
    age = registry.last_sync_age()
    selection = await registry.select_nodes(pool, candidates, requirements, policy=policy)
    rejected: list[str] = []
    for node in selection.picks:
        admission = await registry.job_start(pool, node.node_id, job_id)
        if admission.admitted:
            return Placement(
                job_id=job_id,
                pool=pool,
                node_id=node.node_id,
                version=admission.version,
                rejected=tuple(rejected),
                selection=selection,
                data_age_s=age,
                reason=admission.reason,
            )
        rejected.append(node.node_id)
    return Placement(
        job_id=job_id,
        pool=pool,
        node_id=None,
        rejected=tuple(rejected),
        selection=selection,
        data_age_s=age,
        reason="all candidates rejected at admission" if rejected else selection.explain(),
    )
