"""The interface every registry architecture implements, and the values it returns.

The harness and the conformance suite depend only on :class:`Registry`, so the
lockless cache, the locked baseline and the direct (no cache) baseline are exchanged
without touching either. Every value here is a frozen dataclass: results cross task
boundaries and are recorded, and must not change after the fact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from lockless.core.modes import Mode
from lockless.core.selection import Selection
from lockless.core.snapshot import NodeSnapshot, NodeSpec, Requirements
from lockless.metrics import MetricsSnapshot


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
class Heartbeat:
    """One node's heartbeat, as batched by ``heartbeat_many``."""

    pool: str
    node_id: str
    load: float = 0.0
    #: The job ids the node reports running; when given, they replace the node's job set.
    running_jobs: Sequence[str] | None = None
    #: Used to re-create the node if Redis no longer knows it.
    spec: NodeSpec | None = None


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
    details: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Registry(Protocol):
    """A node registry as a scheduler instance sees it. All I/O methods are coroutines."""

    #: Architecture name: ``lockless`` | ``locked`` | ``direct``.
    name: str

    async def start(self) -> None:
        """Connect, load scripts, and (for caches) fill and subscribe the served pools."""

    async def close(self) -> None:
        """Stop background tasks and release connections. Idempotent."""

    @property
    def mode(self) -> Mode:
        """The current degradation mode (baselines are always NORMAL or LOCAL_ONLY)."""

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

    async def job_started(self, pool: str, node_id: str, job_id: str) -> Admission:
        """Admission control: admit ``job_id`` on the node only if it is alive and below ``max_jobs``."""

    async def job_finished(self, pool: str, node_id: str, job_id: str) -> bool:
        """Release ``job_id``'s slot. Idempotent; True if this call released it."""

    def metrics(self) -> MetricsSnapshot:
        """A consistent copy of this instance's counters and histograms."""
