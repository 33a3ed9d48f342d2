"""Writes as values: one frozen command per write script (DESIGN.md section 3).

A write is built once, as one of these, and the same object is what the write path
sends to Redis, what the LOCAL_ONLY journal holds during an outage, and what the replay
sends afterwards. So a journaled write cannot drift from the live one: there is no
second encoding of "a heartbeat" (a dict payload, say) to keep in step.

Every command names its node (``pool``, ``node_id``) and its ``op``: the name of its
Lua script and of its journal entry. Commands are validated when built and immutable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from lockless.core.snapshot import NodeSpec
from lockless.errors import ConfigError


def _check_text(command: object, *names: str) -> None:
    """Each named field of ``command`` must be a non-empty string (ConfigError names the first not)."""
    for name in names:
        value = getattr(command, name)
        if not isinstance(value, str) or not value:
            raise ConfigError(name, value, "a non-empty string")


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """One node's heartbeat: alive, with this load (and, optionally, these running jobs)."""

    op: ClassVar[str] = "heartbeat"

    pool: str
    node_id: str
    load: float = 0.0
    #: The job ids the node reports running; when given, they replace the node's job set.
    running_jobs: Sequence[str] | None = None
    #: Used to re-create the node if Redis no longer knows it.
    spec: NodeSpec | None = None

    def __post_init__(self) -> None:
        _check_text(self, "pool", "node_id")
        if self.running_jobs is not None:
            if isinstance(self.running_jobs, str | bytes):
                raise ConfigError("running_jobs", self.running_jobs, "a collection of job ids, e.g. ['j1']")
            # A tuple: the caller's list may change after the beat was journaled.
            object.__setattr__(self, "running_jobs", tuple(self.running_jobs))


@dataclass(frozen=True, slots=True, kw_only=True)
class Register:
    """Create or replace a node's record from its spec."""

    op: ClassVar[str] = "register"

    spec: NodeSpec

    @property
    def pool(self) -> str:
        return self.spec.pool

    @property
    def node_id(self) -> str:
        return self.spec.node_id


@dataclass(frozen=True, slots=True, kw_only=True)
class Remove:
    """A node leaves (gracefully)."""

    op: ClassVar[str] = "remove"

    pool: str
    node_id: str

    def __post_init__(self) -> None:
        _check_text(self, "pool", "node_id")


@dataclass(frozen=True, slots=True, kw_only=True)
class JobStart:
    """Admission of ``job_id`` on a node (keyed by job id: repeating it changes nothing)."""

    op: ClassVar[str] = "job_start"

    pool: str
    node_id: str
    job_id: str

    def __post_init__(self) -> None:
        _check_text(self, "pool", "node_id", "job_id")


@dataclass(frozen=True, slots=True, kw_only=True)
class JobFinish:
    """Release of ``job_id``'s slot (only if it was admitted there; repeating it changes nothing)."""

    op: ClassVar[str] = "job_finish"

    pool: str
    node_id: str
    job_id: str

    def __post_init__(self) -> None:
        _check_text(self, "pool", "node_id", "job_id")


#: Every write the registry makes (and may journal).
WriteCommand = Register | Heartbeat | Remove | JobStart | JobFinish

#: Op names of the journaled writes, e.g. for error messages.
WRITE_OPS = tuple(cls.op for cls in (Register, Heartbeat, Remove, JobStart, JobFinish))
