"""The applier's work items (:class:`~lockless.sync.PoolSync` takes them one at a time, in order)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

__all__ = ["EventArrived", "Recover", "RelistPool", "RepairPool", "Work"]


@dataclass(frozen=True, slots=True)
class EventArrived:
    """A message from the subscription, raw (decoded by the applier)."""

    channel: str
    data: bytes


@dataclass(frozen=True, slots=True)
class RelistPool:
    """Re-read a whole pool; ``done`` resolves when it is installed (for callers that wait)."""

    pool: str
    done: asyncio.Future[None] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class RepairPool:
    """Bring one pool up to Redis: catch up from its log if possible, else relist."""

    pool: str
    reason: str


@dataclass(frozen=True, slots=True)
class Recover:
    """After an outage or a reconnect: replay the journal, repair the pools, then CAUGHT_UP.

    ``pools``: the pools concerned (None: all); their whole mode domains are recovered."""

    reason: str
    pools: frozenset[str] | None = None


Work = EventArrived | RelistPool | RepairPool | Recover
