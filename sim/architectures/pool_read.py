"""Reading a whole pool from Redis, as lean as a baseline can make it, timed in parts.

``locked``, ``direct`` and ``ttl-cache`` all read a pool the same way, and it is the
strongest honest read a scheduler without events can do:

* the ids from the pool's ``alive`` zset (``ZRANGE``), then
* ``HMGET`` of only the fields selection reads (:data:`FIELDS`; not the whole hash), in
  pipelines of ``batch`` records (the library relists in batches of 1,000; one round
  trip per batch, the event loop free between batches);
* for a selection (``full=False``), a record is turned into a ``NodeSnapshot`` only if it
  can take a job: ``draining`` and full nodes are counted from their raw fields and
  dropped, so their parse cost is never paid;
* records are decoded by a lean constructor (numbers converted, the JSON of resources and
  labels decoded once per distinct text, as the library's codec caches it), about three
  times cheaper per record than the library's strict ``parse_node_hash``; a record it
  cannot decode goes through ``parse_node_hash`` for the error naming the field.

Times are split the way the question "where does a locked placement spend its time?"
needs: ``redis_s`` is the awaited round trips (network, Redis, and hiredis turning the
reply into Python lists), ``parse_s`` the Python work turning replies into snapshots.
Redis errors become :class:`~lockless.RedisUnavailable`, as the library's store does.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from redis.exceptions import RedisError

from lockless import (
    MalformedRecord,
    NodeSnapshot,
    RedisStore,
    RedisUnavailable,
    is_placeable,
    parse_node_hash,
    placement_key,
)

#: The node hash fields a placement reads (``parse_node_hash`` needs every one of them).
FIELDS = ("version", "status", "max_jobs", "current_jobs", "load", "resources", "labels", "heartbeat_ms")


@functools.lru_cache(maxsize=4096)
def _resources(text: str) -> Mapping[str, float]:
    return MappingProxyType({str(k): float(v) for k, v in json.loads(text).items()})


@functools.lru_cache(maxsize=4096)
def _labels(text: str) -> frozenset[str]:
    return frozenset(json.loads(text))


def _snapshot(pool: str, node_id: str, v: Sequence[str]) -> NodeSnapshot:
    """A snapshot from the :data:`FIELDS` values; anything odd goes to the strict codec (which names it)."""
    if v[1] not in ("up", "draining"):
        return parse_node_hash(pool, node_id, dict(zip(FIELDS, v, strict=True)))
    try:
        return NodeSnapshot(
            node_id=node_id,
            pool=pool,
            version=int(v[0]),
            status=v[1],
            max_jobs=int(v[2]),
            current_jobs=int(v[3]),
            load=float(v[4]),
            resources=_resources(v[5]),
            labels=_labels(v[6]),
            heartbeat_ms=int(v[7]),
        )
    except (TypeError, ValueError, AttributeError):
        return parse_node_hash(pool, node_id, dict(zip(FIELDS, v, strict=True)))


class _Tally(Mapping[str, NodeSnapshot]):
    """The nodes a selection may pick, plus how many records were read in all.

    Selection reads ``len(view.nodes)`` as the number of nodes considered (and derives the
    ``full`` count from it); only the candidates are built, so the length is the read's
    total while lookups and iteration cover the built snapshots.
    """

    __slots__ = ("_by_id", "_total")

    def __init__(self, by_id: dict[str, NodeSnapshot], total: int) -> None:
        self._by_id, self._total = by_id, total

    def __getitem__(self, node_id: str) -> NodeSnapshot:
        return self._by_id[node_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return self._total


@dataclass(frozen=True, slots=True)
class ListedPool:
    """A pool as read from Redis, shaped as selection's ``PoolView``."""

    nodes: Mapping[str, NodeSnapshot]
    placeable: Sequence[tuple[float, float, str]]
    draining: int

    @classmethod
    def of(cls, nodes: Sequence[NodeSnapshot]) -> ListedPool:
        """Every node built: the view a cache keeps (``get_node`` answers from it)."""
        # One sort of the placeable keys: cheaper than growing a SortedList node by node.
        by_id = {n.node_id: n for n in nodes}
        placeable = sorted(placement_key(n) for n in nodes if is_placeable(n))
        draining = sum(1 for n in nodes if n.status == "draining")
        return cls(by_id, placeable, draining)


@dataclass(frozen=True, slots=True)
class PoolRead:
    """One read of a pool and what it cost."""

    view: ListedPool
    #: Every node built (``full=True``), else only the placeable ones.
    nodes: tuple[NodeSnapshot, ...]
    records: int
    malformed: int
    redis_s: float
    parse_s: float


async def read_pool(store: RedisStore, pool: str, *, batch: int, full: bool) -> PoolRead:
    """Read ``pool`` (see the module docstring); ``full`` builds every node, not just candidates."""
    keys, client = store.keys, store.client
    perf = time.perf_counter
    redis_s = parse_s = 0.0
    t = perf()
    try:
        ids = await client.zrange(keys.alive(pool), 0, -1)
        redis_s += perf() - t
        built: list[NodeSnapshot] = []
        records = malformed = draining = 0
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            t = perf()
            pipe = client.pipeline(transaction=False)
            for node_id in chunk:
                pipe.hmget(keys.node(pool, node_id), FIELDS)
            replies = await pipe.execute()
            t1 = perf()
            redis_s += t1 - t
            for node_id, values in zip(chunk, replies, strict=True):
                if values[0] is None:
                    continue  # removed or expired between ZRANGE and HMGET
                records += 1
                if not full:
                    # Count what cannot take a job from its raw fields; never build it.
                    if values[1] == "draining":
                        draining += 1
                        continue
                    try:
                        if int(values[3]) >= int(values[2]):
                            continue  # full: selection derives the count from the totals
                    except (TypeError, ValueError):
                        pass  # the codec below rejects it, naming the field
                try:
                    built.append(_snapshot(pool, node_id, values))
                except MalformedRecord:
                    malformed += 1
            parse_s += perf() - t1
            await asyncio.sleep(0)  # a batch at a time: other tasks on the loop run in between
    except (TimeoutError, RedisError, OSError) as exc:
        raise RedisUnavailable(f"pool read of {pool!r}: {type(exc).__name__}: {exc}") from exc
    t = perf()
    if full:
        view = ListedPool.of(built)
    else:
        placeable = sorted(placement_key(n) for n in built)
        view = ListedPool(_Tally({n.node_id: n for n in built}, records - malformed), placeable, draining)
    parse_s += perf() - t
    return PoolRead(
        view=view, nodes=tuple(built), records=records, malformed=malformed, redis_s=redis_s, parse_s=parse_s
    )
