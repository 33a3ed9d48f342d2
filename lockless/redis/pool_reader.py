"""Reads of the registry in Redis: records, pool positions, relists and the pool log.

:class:`PoolReader` sends each read to the server that holds the pool (one server; on a
cluster, the primary owning the pool's slot) and decodes the replies; records that do not
decode come back as :class:`~lockless.errors.MalformedRecord` values, never as exceptions
that would fail the rest of a batch. :class:`~lockless.redis.store.RedisStore` owns one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from lockless.core.snapshot import ChangeEvent, NodeSnapshot, parse_event, parse_node_hash
from lockless.errors import MalformedRecord, RedisUnavailable
from lockless.metrics import Metrics
from lockless.redis.client import guarded
from lockless.redis.keys import KeySpace

__all__ = ["LogRead", "PoolListing", "PoolPosition", "PoolReader", "entry_mark"]


@dataclass(frozen=True, slots=True)
class PoolListing:
    """A relist of one pool: ``seq`` read first, then every alive node's record."""

    pool: str
    seq: int
    epoch: str | None
    nodes: tuple[NodeSnapshot, ...]
    #: Nodes whose record did not decode (counted and logged by the caller, never served).
    malformed: tuple[MalformedRecord, ...] = ()
    #: The mark (``ts_us``) of the log entry at ``seq``: which write that seq is (None: unknown).
    mark: int | None = None


@dataclass(frozen=True, slots=True)
class PoolPosition:
    """Where a pool is in Redis: ``seq``, ``epoch``, and the mark of the log entry at a seq asked about."""

    seq: int
    epoch: str | None
    #: The ``ts_us`` of the write the log holds at seq ``at`` (None: none asked, or no entry).
    mark: int | None = None
    #: The seq whose log entry was asked about (None: none).
    at: int | None = None


def entry_mark(entries: Sequence[Any]) -> int | None:
    """The mark of the first of ``XRANGE`` entries (None if none, or if it does not decode)."""
    if not entries:
        return None
    try:
        event = parse_event(entries[0][1].get("e", ""))
    except MalformedRecord:
        return None
    return event.ts_us


@dataclass(frozen=True, slots=True)
class LogRead:
    """Entries read from a pool log; ``complete`` is False if the log no longer holds ``from_seq``."""

    events: tuple[ChangeEvent, ...]
    complete: bool
    malformed: tuple[MalformedRecord, ...] = ()


class PoolReader:
    """The store's reads; see the module docstring."""

    def __init__(self, client: aioredis.Redis, keys: KeySpace, metrics: Metrics, cluster: Any = None) -> None:
        self.client = client
        self.keys = keys
        self.metrics = metrics
        #: The cluster's router, else None (one server: ``client``).
        self.cluster = cluster
        self._slots: dict[str, int] = {}

    def slot(self, pool: str) -> int:
        """The cluster slot of every key of ``pool`` (they share its hash tag)."""
        slot = self._slots.get(pool)
        if slot is None:
            slot = self._slots[pool] = key_slot(self.keys.seq(pool).encode())
        return slot

    async def on_pool(self, pool: str, commands: list[tuple[Any, ...]], **kwargs: Any) -> list[Any]:
        """``commands`` in one round trip to the server holding ``pool`` (unguarded: callers guard)."""
        if self.cluster is not None:
            return await self.cluster.execute(self.slot(pool), commands, **kwargs)
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute(**kwargs)

    async def _guarded(self, what: str, fn: Callable[[], Any]) -> Any:
        return await guarded(what, fn, self.metrics)

    async def get_node(self, pool: str, node_id: str) -> NodeSnapshot | None:
        """One record (``HGETALL``); None if absent. Raises MalformedRecord if it does not decode."""
        found = await self.get_nodes(pool, [node_id])
        value = found[node_id]
        if isinstance(value, MalformedRecord):
            raise value
        return value

    async def get_nodes(
        self, pool: str, node_ids: Sequence[str]
    ) -> dict[str, NodeSnapshot | MalformedRecord | None]:
        """Several records in one pipelined round trip; a bad record maps to its MalformedRecord."""
        return (await self._read_nodes(pool, node_ids, epoch=False))[1]

    async def get_nodes_and_epoch(
        self, pool: str, node_ids: Sequence[str]
    ) -> tuple[str | None, dict[str, NodeSnapshot | MalformedRecord | None]]:
        """:meth:`get_nodes`, and the pool's epoch (None if it has none) read in the same round
        trip: the life of the pool's data the records belong to."""
        return await self._read_nodes(pool, node_ids, epoch=True)

    async def _read_nodes(
        self, pool: str, node_ids: Sequence[str], *, epoch: bool
    ) -> tuple[str | None, dict[str, NodeSnapshot | MalformedRecord | None]]:
        if not node_ids:
            return None, {}

        async def run() -> list:
            commands = [("HGETALL", self.keys.node(pool, node_id)) for node_id in node_ids]
            if epoch:
                commands.append(("GET", self.keys.epoch(pool)))
            # One bad key (WRONGTYPE: clobbered by another program) must not fail the rest;
            # any other error (BUSY, LOADING, ...) is the server's and fails the call.
            replies = await self.on_pool(pool, commands, raise_on_error=False)
            for reply in replies:
                if isinstance(reply, ResponseError) and not str(reply).startswith("WRONGTYPE"):
                    raise reply
            if epoch and isinstance(replies[-1], ResponseError):
                raise replies[-1]  # a clobbered epoch key: it cannot vouch for the records
            return replies

        what = "HGETALL" if len(node_ids) == 1 else f"HGETALL x{len(node_ids)}"
        replies = await self._guarded(what, run)
        life = replies.pop() if epoch else None
        out: dict[str, NodeSnapshot | MalformedRecord | None] = {}
        for node_id, raw in zip(node_ids, replies, strict=True):
            if isinstance(raw, ResponseError):
                out[node_id] = MalformedRecord(node_id, "(key)", "holds another type than a hash")
                continue
            try:
                out[node_id] = parse_node_hash(pool, node_id, raw) if raw else None
            except MalformedRecord as exc:
                out[node_id] = exc
        return life, out

    async def pool_state(self, pool: str) -> tuple[int, str | None]:
        """The pool's current ``seq`` (0 if none) and ``epoch`` (None if the pool has none)."""

        async def run() -> list:
            return await self.on_pool(pool, [("GET", self.keys.seq(pool)), ("GET", self.keys.epoch(pool))])

        seq, epoch = await self._guarded("GET seq/epoch", run)
        return int(seq or 0), epoch

    async def pool_states(self, pools: Sequence[str]) -> dict[str, tuple[int, str | None]]:
        """``pool_state`` of several pools in one round trip (the registry's liveness probe)."""
        if self.cluster is not None:
            states = await self.pool_states_each(pools)
            for state in states.values():
                if isinstance(state, RedisUnavailable):
                    raise state
            return states  # type: ignore[return-value]

        async def run() -> list:
            pipe = self.client.pipeline(transaction=False)
            for pool in pools:
                pipe.get(self.keys.seq(pool))
                pipe.get(self.keys.epoch(pool))
            return await pipe.execute()

        flat = await self._guarded("GET seq/epoch", run)
        return {pool: (int(flat[2 * i] or 0), flat[2 * i + 1]) for i, pool in enumerate(pools)}

    async def positions(self, at: dict[str, int | None]) -> dict[str, PoolPosition]:
        """Each pool's ``seq`` and ``epoch`` and the mark of its log entry at ``at[pool]`` (if not None),
        in one round trip on one server (one per pool, at once, on a cluster; the first failure raised)."""
        found = await self.positions_each(at)
        for value in found.values():
            if isinstance(value, RedisUnavailable):
                raise value
        return found  # type: ignore[return-value]

    async def positions_each(self, at: dict[str, int | None]) -> dict[str, PoolPosition | RedisUnavailable]:
        """:meth:`positions`, each pool answered or failed on its own (one server: all or none)."""
        pools = list(at)

        def commands(pool: str) -> list[tuple[Any, ...]]:
            out: list[tuple[Any, ...]] = [("GET", self.keys.seq(pool)), ("GET", self.keys.epoch(pool))]
            if at[pool] is not None:
                out.append(("XRANGE", self.keys.log(pool), f"{at[pool]}-0", f"{at[pool]}-0"))
            return out

        def position(pool: str, replies: Sequence[Any]) -> PoolPosition:
            mark = entry_mark(replies[2]) if len(replies) > 2 else None
            return PoolPosition(seq=int(replies[0] or 0), epoch=replies[1], mark=mark, at=at[pool])

        if self.cluster is None:

            async def run() -> list[Any]:
                pipe = self.client.pipeline(transaction=False)
                for pool in pools:
                    for command in commands(pool):
                        pipe.execute_command(*command)
                return await pipe.execute()

            try:
                flat = await self._guarded("GET seq/epoch", run)
            except RedisUnavailable as exc:
                return dict.fromkeys(pools, exc)
            out: dict[str, PoolPosition | RedisUnavailable] = {}
            for pool in pools:
                n = len(commands(pool))
                out[pool], flat = position(pool, flat[:n]), flat[n:]
            return out

        async def one(pool: str) -> PoolPosition:
            replies = await self._guarded("GET seq/epoch", lambda: self.on_pool(pool, commands(pool)))
            return position(pool, replies)

        results = await asyncio.gather(*(one(p) for p in pools), return_exceptions=True)
        found: dict[str, PoolPosition | RedisUnavailable] = {}
        for pool, result in zip(pools, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, RedisUnavailable):
                raise result
            found[pool] = result
        return found

    async def pool_states_each(
        self, pools: Sequence[str]
    ) -> dict[str, tuple[int, str | None] | RedisUnavailable]:
        """``pool_state`` of several pools, each answered or failed on its own (on a cluster, pools
        on a healthy shard answer while another shard is down); one server: all or none."""
        if self.cluster is None:
            try:
                return dict(await self.pool_states(pools))
            except RedisUnavailable as exc:
                return dict.fromkeys(pools, exc)
        results = await asyncio.gather(*(self.pool_state(p) for p in pools), return_exceptions=True)
        out: dict[str, tuple[int, str | None] | RedisUnavailable] = {}
        for pool, result in zip(pools, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, RedisUnavailable):
                raise result
            out[pool] = result
        return out

    async def relist(self, pool: str, *, batch: int = 1000) -> PoolListing:
        """Read ``seq`` first, then every alive node (ZRANGE + pipelined HGETALL) (DESIGN.md section 5.3)."""
        seq, epoch = await self.pool_state(pool)
        # With the ids, the log entry at seq: which write seq is (the sequencer's mark).
        commands: list[tuple[Any, ...]] = [
            ("ZRANGE", self.keys.alive(pool), 0, -1),
            ("XRANGE", self.keys.log(pool), f"{seq}-0", f"{seq}-0"),
        ]
        ids, head = await self._guarded("ZRANGE alive", lambda: self.on_pool(pool, commands))
        nodes: list[NodeSnapshot] = []
        malformed: list[MalformedRecord] = []
        for start in range(0, len(ids), batch):
            for value in (await self.get_nodes(pool, ids[start : start + batch])).values():
                if isinstance(value, MalformedRecord):
                    malformed.append(value)
                elif value is not None:
                    nodes.append(value)
        return PoolListing(
            pool=pool,
            seq=seq,
            epoch=epoch,
            nodes=tuple(nodes),
            malformed=tuple(malformed),
            mark=entry_mark(head),
        )

    async def read_log(self, pool: str, from_seq: int, *, count: int = 1000) -> LogRead:
        """Entries with seq >= ``from_seq`` (up to ``count``); incomplete if ``from_seq`` was trimmed."""
        command = ("XRANGE", self.keys.log(pool), f"{from_seq}-0", "+", "COUNT", count)
        (entries,) = await self._guarded("XRANGE", lambda: self.on_pool(pool, [command]))
        if not entries or entries[0][0] != f"{from_seq}-0":
            return LogRead(events=(), complete=False)
        events: list[ChangeEvent] = []
        malformed: list[MalformedRecord] = []
        for _entry_id, fields in entries:
            try:
                events.append(parse_event(fields.get("e", "")))
            except MalformedRecord as exc:
                malformed.append(exc)
        return LogRead(events=tuple(events), complete=True, malformed=tuple(malformed))
