"""L1: the in-process store of immutable node snapshots, with a per-pool placement index.

Theory of operation
-------------------
Only the instance's own writer side (event applier, relist, L2 fills, optimistic
"assumed" updates) calls the mutating methods; readers call :meth:`L1Store.get` and
selection reads :class:`PoolIndex`. Everything runs on one event loop, and no mutating
method awaits, so a reader never sees a half-applied change and needs no lock: the swap
of a dict entry is the commit point.

Versions never go backwards (monotonic reads, DESIGN.md section 5). :meth:`apply`
replaces a snapshot only with a newer version. A removal leaves a *tombstone* (the
removal's version) so that a stale record read from Redis, or a late event, cannot
resurrect a removed node; a later re-registration carries a higher version and wins.
Tombstones are dropped when a relist makes the whole pool authoritative again (all but
those newer than the listing).

An admitted ``job_start`` is reflected at once ("assumed", DESIGN.md section 6): the
snapshot with the returned version and job count replaces the cached one. It is an exact
image of Redis at that version except for fields other writers changed in between, so
the first real snapshot at that version or newer retires it, never a timer.

Entries expire after a jittered TTL (avalanche protection); an expired entry is a miss
that the registry refreshes from Redis. Nodes known not to exist are remembered for a
short jittered time (penetration protection).

The store is given ``now`` (monotonic seconds); it never reads a clock.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from sortedcontainers import SortedList

from lockless.core.selection import is_placeable, placement_key
from lockless.core.snapshot import NodeSnapshot

#: Returned by :meth:`L1Store.get` for a node remembered as missing in Redis.
NEGATIVE = object()


@dataclass(slots=True)
class PoolIndex:
    """All cached nodes of one pool, and the sorted subset that can take a job."""

    nodes: dict[str, NodeSnapshot] = field(default_factory=dict)
    placeable: SortedList = field(default_factory=SortedList)
    draining: int = 0
    expiry: dict[str, float] = field(default_factory=dict)
    #: node id -> version of its removal (see module docstring).
    tombstones: dict[str, int] = field(default_factory=dict)
    #: node ids whose snapshot is an optimistic assumption not yet confirmed by Redis.
    assumed: set[str] = field(default_factory=set)
    #: node id -> time until which the node is known not to exist.
    negative: dict[str, float] = field(default_factory=dict)
    #: Highest version this index ever held or tombstoned: Redis's seq can only be lower
    #: than it if Redis lost its data (see :meth:`L1Store.high_water`).
    high_water: int = 0

    def _unindex(self, node: NodeSnapshot) -> None:
        if is_placeable(node):
            self.placeable.remove(placement_key(node))
        if node.status == "draining":
            self.draining -= 1

    def _index(self, node: NodeSnapshot) -> None:
        if is_placeable(node):
            self.placeable.add(placement_key(node))
        if node.status == "draining":
            self.draining += 1

    def put(self, node: NodeSnapshot, expires_at: float) -> None:
        old = self.nodes.get(node.node_id)
        if old is not None:
            self._unindex(old)
        self.nodes[node.node_id] = node
        self._index(node)
        if node.version > self.high_water:
            self.high_water = node.version
        self.expiry[node.node_id] = expires_at
        self.negative.pop(node.node_id, None)

    def drop(self, node_id: str) -> NodeSnapshot | None:
        old = self.nodes.pop(node_id, None)
        if old is not None:
            self._unindex(old)
        self.expiry.pop(node_id, None)
        self.assumed.discard(node_id)
        return old


class L1Store:
    """Node snapshots of every served pool. See the module docstring for the rules."""

    def __init__(
        self,
        *,
        entry_ttl_s: float = 300.0,
        ttl_jitter: float = 0.2,
        negative_ttl_s: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self.entry_ttl_s = entry_ttl_s
        self.ttl_jitter = ttl_jitter
        self.negative_ttl_s = negative_ttl_s
        self._rng = rng or random.Random()
        self.pools: dict[str, PoolIndex] = {}

    def pool(self, pool: str) -> PoolIndex:
        """The index of ``pool``, created empty on first use."""
        index = self.pools.get(pool)
        if index is None:
            index = self.pools[pool] = PoolIndex()
        return index

    def _expiry(self, now: float, ttl: float) -> float:
        return now + ttl * (1.0 + self.ttl_jitter * (2.0 * self._rng.random() - 1.0))

    # ----------------------------------------------------------------- reads
    def get(self, pool: str, node_id: str, now: float) -> NodeSnapshot | object | None:
        """The cached snapshot; :data:`NEGATIVE` if known missing; None on a miss or an expired entry."""
        index = self.pools.get(pool)
        if index is None:
            return None
        node = index.nodes.get(node_id)
        if node is not None:
            return node if index.expiry[node_id] > now else None
        until = index.negative.get(node_id)
        if until is not None:
            if until > now:
                return NEGATIVE
            del index.negative[node_id]
        return None

    def peek(self, pool: str, node_id: str) -> NodeSnapshot | None:
        """The cached snapshot regardless of expiry (for LOCAL_ONLY last-known-good reads)."""
        index = self.pools.get(pool)
        return index.nodes.get(node_id) if index is not None else None

    def version_of(self, pool: str, node_id: str) -> int:
        """Highest version known for the node: its snapshot's, or its tombstone's, or 0."""
        index = self.pools.get(pool)
        if index is None:
            return 0
        node = index.nodes.get(node_id)
        if node is not None:
            return node.version
        return index.tombstones.get(node_id, 0)

    def __len__(self) -> int:
        return sum(len(index.nodes) for index in self.pools.values())

    # ---------------------------------------------------------------- writes
    def apply(self, node: NodeSnapshot, now: float) -> bool:
        """Store ``node`` if it is newer than what is known (or confirms an assumption). True if stored."""
        index = self.pool(node.pool)
        current = index.nodes.get(node.node_id)
        if current is not None:
            newer = node.version > current.version or (
                node.version == current.version and node.node_id in index.assumed
            )
            if not newer:
                if node.version == current.version:
                    # Same version re-read from Redis (an expiry refresh): extend its life.
                    index.expiry[node.node_id] = self._expiry(now, self.entry_ttl_s)
                return False
            index.assumed.discard(node.node_id)
        elif node.version <= index.tombstones.get(node.node_id, 0):
            return False
        index.tombstones.pop(node.node_id, None)
        index.put(node, self._expiry(now, self.entry_ttl_s))
        return True

    def remove(self, pool: str, node_id: str, version: int) -> bool:
        """Apply a removal at ``version``. True if a cached node was dropped."""
        index = self.pool(pool)
        current = index.nodes.get(node_id)
        if current is not None and current.version > version:
            return False
        index.tombstones[node_id] = max(version, index.tombstones.get(node_id, 0))
        index.high_water = max(index.high_water, version)
        return index.drop(node_id) is not None

    def assume(self, node: NodeSnapshot, now: float) -> bool:
        """Optimistically store the result of our own admitted write (see module docstring).

        The same version is allowed: a LOCAL_ONLY admission has no new version from Redis
        yet, and must still count against the node's capacity in the local view.
        """
        index = self.pool(node.pool)
        current = index.nodes.get(node.node_id)
        if current is not None and current.version > node.version:
            return False
        if current is None and node.version <= index.tombstones.get(node.node_id, 0):
            return False  # removed meanwhile: our write's answer must not resurrect it
        index.tombstones.pop(node.node_id, None)  # (as in apply: a node newer than its removal)
        index.put(node, self._expiry(now, self.entry_ttl_s))
        index.assumed.add(node.node_id)
        return True

    def remember_missing(self, pool: str, node_id: str, now: float) -> None:
        """Negative-cache a node Redis does not have."""
        index = self.pool(pool)
        if node_id not in index.nodes:
            index.negative[node_id] = self._expiry(now, self.negative_ttl_s)

    def replace_pool(
        self,
        pool: str,
        nodes: Iterable[NodeSnapshot],
        now: float,
        *,
        reset: bool = False,
        seq: int | None = None,
    ) -> None:
        """Install a relist of ``pool`` read at ``seq``: it becomes exactly ``nodes``, except
        for what L1 learned after the listing was read.

        The instance's own writes (an assumed admission, a removal, an L2 fill) can land
        while a relist is in flight, so a cached snapshot newer than the listed one is kept,
        a listed node with a newer tombstone stays removed, and (given ``seq``) a cached node
        or tombstone newer than ``seq`` survives. With ``reset`` (after an epoch change,
        versions restarted and the old ones mean nothing) the listing is installed as it is.
        """
        old = self.pools.get(pool) or PoolIndex()
        fresh = PoolIndex(high_water=0 if reset else old.high_water)
        for node in nodes:
            if not reset and old.tombstones.get(node.node_id, 0) > node.version:
                fresh.tombstones[node.node_id] = old.tombstones[node.node_id]
                continue  # removed after the listing was read
            keep = None if reset else old.nodes.get(node.node_id)
            chosen = keep if keep is not None and keep.version > node.version else node
            fresh.put(chosen, self._expiry(now, self.entry_ttl_s))
            if chosen is keep and node.node_id in old.assumed:
                fresh.assumed.add(node.node_id)
        if not reset and seq is not None:
            for node_id, version in old.tombstones.items():
                if version > seq and node_id not in fresh.nodes:
                    fresh.tombstones[node_id] = version
            for node_id, node in old.nodes.items():
                if (
                    node.version > seq
                    and node_id not in fresh.nodes
                    and node.version > fresh.tombstones.get(node_id, 0)
                ):
                    fresh.tombstones.pop(node_id, None)
                    fresh.put(node, old.expiry.get(node_id, self._expiry(now, self.entry_ttl_s)))
                    if node_id in old.assumed:
                        fresh.assumed.add(node_id)
        self.pools[pool] = fresh

    def high_water(self, pool: str) -> int:
        """Highest version of ``pool`` this store has seen (records, assumptions, removals).

        Versions come from the pool's ``seq``, so a Redis ``seq`` below it means Redis lost
        data that this store learned by any path (events, L2 fills, its own writes), even
        when the pool's epoch could not tell (e.g. a pool listed empty, then filled by reads).
        """
        index = self.pools.get(pool)
        return index.high_water if index is not None else 0

    def clear_negative(self, pool: str) -> None:
        self.pool(pool).negative.clear()
