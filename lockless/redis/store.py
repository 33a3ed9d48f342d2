"""RedisStore: every Redis command the library sends.

The store is I/O only: it decides nothing about caching or modes. Its parts:

* the client from :class:`~lockless.redis.connection.ConnectionFactory` (the one
  connection factory, shared with the subscriber), and
  :func:`~lockless.redis.client.guarded`, which times every call and translates redis-py
  and OS errors into :class:`~lockless.errors.RedisUnavailable`;
* a :class:`~lockless.redis.runner.ScriptRunner` calling the Lua scripts by SHA (one
  reload on ``NOSCRIPT``), with :class:`~lockless.redis.scripts.ScriptArgs` filling
  their KEYS and ARGV;
* the reads: node records (``HGETALL``), pool positions (``seq``/``epoch``), relists and
  log reads, decoded by ``lockless.core.snapshot``.

:meth:`RedisStore.send` runs one write command (``lockless.core.commands``): the write
path and the journal replay both go through it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from lockless.config import NodeLifecycleConfig, RedisConfig
from lockless.core.commands import Heartbeat, JobFinish, JobStart, Register, Remove, WriteCommand
from lockless.core.snapshot import ChangeEvent, NodeSnapshot, NodeSpec, parse_event, parse_node_hash
from lockless.errors import MalformedRecord
from lockless.metrics import Metrics
from lockless.protocol import Admission, HeartbeatResult
from lockless.redis.client import guarded
from lockless.redis.connection import ConnectionFactory
from lockless.redis.keys import KeySpace
from lockless.redis.runner import ScriptRunner
from lockless.redis.scripts import ScriptArgs


@dataclass(frozen=True, slots=True)
class PoolListing:
    """A relist of one pool: ``seq`` read first, then every alive node's record."""

    pool: str
    seq: int
    epoch: str | None
    nodes: tuple[NodeSnapshot, ...]
    #: Nodes whose record did not decode (counted and logged by the caller, never served).
    malformed: tuple[MalformedRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class LogRead:
    """Entries read from a pool log; ``complete`` is False if the log no longer holds ``from_seq``."""

    events: tuple[ChangeEvent, ...]
    complete: bool
    malformed: tuple[MalformedRecord, ...] = ()


#: What ``job_finish`` answers: (released, node version, current_jobs); version 0 = unknown node.
FinishReply = tuple[bool, int, int]


class RedisStore:
    """Redis I/O for one registry instance (or one harness node driver)."""

    def __init__(
        self,
        redis_config: RedisConfig,
        nodes: NodeLifecycleConfig | None = None,
        *,
        metrics: Metrics | None = None,
        client: aioredis.Redis | None = None,
        keys: KeySpace | None = None,
        connections: ConnectionFactory | None = None,
    ) -> None:
        self.config = redis_config
        self.nodes = nodes or NodeLifecycleConfig()
        self.keys = keys or KeySpace(redis_config.namespace)
        self.metrics = metrics or Metrics()
        self.args = ScriptArgs(
            keys=self.keys,
            # One token per store: only used if this store's write is the one that creates the pool.
            epoch_token=uuid.uuid4().hex,
            log_max_len=redis_config.log_max_len,
            ttl_ms=int(self.nodes.ttl_s * 1000),
            dead_ms=int(self.nodes.dead_after_s * 1000),
            load_tolerance=self.nodes.load_tolerance,
            publish_every_heartbeat=self.nodes.publish_every_heartbeat,
        )
        #: Where every connection of this store (and of a registry's subscriber) comes from.
        self.connections = connections or ConnectionFactory(redis_config)
        self.client = client or self.connections.command_client()
        self.scripts = ScriptRunner(self.client, self.metrics)

    @staticmethod
    def make_client(cfg: RedisConfig, **overrides: Any) -> aioredis.Redis:
        """A command client with the house settings for ``cfg`` (see ``ConnectionFactory``)."""
        return ConnectionFactory(cfg).command_client(**overrides)

    async def close(self) -> None:
        await self.client.aclose()

    async def load_scripts(self) -> None:
        """Load every script (idempotent; done lazily on NOSCRIPT as well)."""
        await self.scripts.load_all()

    async def _guarded(self, what: str, fn: Any) -> Any:
        return await guarded(what, fn, self.metrics)

    # --------------------------------------------------------------- writes
    async def send(self, command: WriteCommand) -> int | HeartbeatResult | Admission | FinishReply:
        """Run one write command; returns what its method below returns."""
        match command:
            case Register(spec=spec):
                return await self.register(spec)
            case Heartbeat():
                return await self.heartbeat(command)
            case Remove(pool=pool, node_id=node_id):
                return await self.remove(pool, node_id)
            case JobStart(pool=pool, node_id=node_id, job_id=job_id):
                return await self.job_start(pool, node_id, job_id)
            case JobFinish(pool=pool, node_id=node_id, job_id=job_id):
                return await self.job_finish(pool, node_id, job_id)
        raise TypeError(f"not a write command: {command!r}")

    async def register(self, spec: NodeSpec) -> int:
        """Create or replace ``spec``'s record; returns its new version."""
        (version,) = await self.register_many([spec])
        return version

    async def register_and_read(self, spec: NodeSpec) -> tuple[int, NodeSnapshot | None]:
        """Register, and read the record as it now stands, in the same round trip.

        The record (None if it did not decode) lets the writer see its own registration at
        once, before the event reaches its subscriber (read-your-writes).
        """
        pool, node_id = spec.pool, spec.node_id
        replies = await self.scripts.call_many(
            "register",
            [self.args.register(spec)],
            before=lambda pipe: pipe.sadd(self.keys.pools(), pool),
            after=lambda pipe: pipe.hgetall(self.keys.node(pool, node_id)),
        )
        version, raw = int(replies[1]), replies[2]
        try:
            record = parse_node_hash(pool, node_id, raw) if isinstance(raw, dict) and raw else None
        except MalformedRecord:
            record = None
        return version, record

    async def register_many(self, specs: Sequence[NodeSpec]) -> list[int]:
        """Registrations pipelined into one round trip (bulk loads, harness start-up)."""
        if not specs:
            return []
        pools = sorted({s.pool for s in specs})
        # The pools set lives outside the pools' slots, so no script touches it; queued
        # ahead of the calls it keeps the registration one round trip.
        replies = await self.scripts.call_many(
            "register",
            [self.args.register(spec) for spec in specs],
            before=lambda pipe: pipe.sadd(self.keys.pools(), *pools),
        )
        return [int(v) for v in replies[1:]]

    async def heartbeat(self, beat: Heartbeat) -> HeartbeatResult:
        """One heartbeat; version 0 means the node is unknown and no spec was given to re-create it."""
        reply = await self.scripts.call("heartbeat", *self.args.heartbeat(beat))
        return _heartbeat_result(beat.node_id, reply)

    async def heartbeat_many(self, beats: Sequence[Heartbeat]) -> list[HeartbeatResult]:
        """Heartbeats due together, pipelined into one round trip."""
        if not beats:
            return []
        replies = await self.scripts.call_many("heartbeat", [self.args.heartbeat(b) for b in beats])
        return [_heartbeat_result(b.node_id, r) for b, r in zip(beats, replies, strict=True)]

    async def remove(self, pool: str, node_id: str) -> int:
        """Remove the node; returns the removal's version, 0 if it did not exist."""
        return int(await self.scripts.call("remove", *self.args.remove(pool, node_id)))

    async def job_start(self, pool: str, node_id: str, job_id: str) -> Admission:
        """Admission control (see ``scripts.JOB_START``)."""
        ok, reason, version, cur, max_jobs = await self.scripts.call(
            "job_start", *self.args.job_start(pool, node_id, job_id)
        )
        return Admission(
            admitted=bool(int(ok)),
            node_id=node_id,
            job_id=job_id,
            version=int(version),
            reason=str(reason),
            current_jobs=int(cur),
            max_jobs=int(max_jobs),
        )

    async def job_finish(self, pool: str, node_id: str, job_id: str) -> FinishReply:
        """Release ``job_id``; returns (released, node version, current_jobs). Version 0: unknown node."""
        released, version, cur = await self.scripts.call(
            "job_finish", *self.args.job_finish(pool, node_id, job_id)
        )
        return bool(int(released)), int(version), int(cur)

    async def reap(self, pool: str, *, limit: int = 1000) -> list[str]:
        """Remove nodes whose heartbeat is older than ``dead_after``; returns their ids."""
        return list(await self.scripts.call("reap", *self.args.reap(pool, limit)))

    # ---------------------------------------------------------------- reads
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
        if not node_ids:
            return {}

        async def run() -> list:
            pipe = self.client.pipeline(transaction=False)
            for node_id in node_ids:
                pipe.hgetall(self.keys.node(pool, node_id))
            # One bad key (WRONGTYPE: clobbered by another program) must not fail the rest;
            # any other error (BUSY, LOADING, ...) is the server's and fails the call.
            replies = await pipe.execute(raise_on_error=False)
            for reply in replies:
                if isinstance(reply, ResponseError) and not str(reply).startswith("WRONGTYPE"):
                    raise reply
            return replies

        what = "HGETALL" if len(node_ids) == 1 else f"HGETALL x{len(node_ids)}"
        replies = await self._guarded(what, run)
        out: dict[str, NodeSnapshot | MalformedRecord | None] = {}
        for node_id, raw in zip(node_ids, replies, strict=True):
            if isinstance(raw, ResponseError):
                out[node_id] = MalformedRecord(node_id, "(key)", "holds another type than a hash")
                continue
            try:
                out[node_id] = parse_node_hash(pool, node_id, raw) if raw else None
            except MalformedRecord as exc:
                out[node_id] = exc
        return out

    async def pool_state(self, pool: str) -> tuple[int, str | None]:
        """The pool's current ``seq`` (0 if none) and ``epoch`` (None if the pool has none)."""

        async def run() -> list:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(self.keys.seq(pool))
            pipe.get(self.keys.epoch(pool))
            return await pipe.execute()

        seq, epoch = await self._guarded("GET seq/epoch", run)
        return int(seq or 0), epoch

    async def pool_states(self, pools: Sequence[str]) -> dict[str, tuple[int, str | None]]:
        """``pool_state`` of several pools in one round trip (the registry's liveness probe)."""

        async def run() -> list:
            pipe = self.client.pipeline(transaction=False)
            for pool in pools:
                pipe.get(self.keys.seq(pool))
                pipe.get(self.keys.epoch(pool))
            return await pipe.execute()

        flat = await self._guarded("GET seq/epoch", run)
        return {pool: (int(flat[2 * i] or 0), flat[2 * i + 1]) for i, pool in enumerate(pools)}

    async def relist(self, pool: str, *, batch: int = 1000) -> PoolListing:
        """Read ``seq`` first, then every alive node (ZRANGE + pipelined HGETALL) (DESIGN.md section 5.3)."""
        seq, epoch = await self.pool_state(pool)
        ids = await self._guarded("ZRANGE alive", lambda: self.client.zrange(self.keys.alive(pool), 0, -1))
        nodes: list[NodeSnapshot] = []
        malformed: list[MalformedRecord] = []
        for start in range(0, len(ids), batch):
            for value in (await self.get_nodes(pool, ids[start : start + batch])).values():
                if isinstance(value, MalformedRecord):
                    malformed.append(value)
                elif value is not None:
                    nodes.append(value)
        return PoolListing(pool=pool, seq=seq, epoch=epoch, nodes=tuple(nodes), malformed=tuple(malformed))

    async def read_log(self, pool: str, from_seq: int, *, count: int = 1000) -> LogRead:
        """Entries with seq >= ``from_seq`` (up to ``count``); incomplete if ``from_seq`` was trimmed."""
        entries = await self._guarded(
            "XRANGE", lambda: self.client.xrange(self.keys.log(pool), min=f"{from_seq}-0", count=count)
        )
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

    async def ping(self) -> float:
        """Round trip of one PING, seconds."""
        start = time.perf_counter()
        await self._guarded("PING", self.client.ping)
        return time.perf_counter() - start

    async def pools(self) -> set[str]:
        return set(await self._guarded("SMEMBERS pools", lambda: self.client.smembers(self.keys.pools())))


def _heartbeat_result(node_id: str, reply: Sequence[Any]) -> HeartbeatResult:
    return HeartbeatResult(
        node_id=node_id, version=int(reply[0]), changed=bool(int(reply[1])), recreated=bool(int(reply[2]))
    )
