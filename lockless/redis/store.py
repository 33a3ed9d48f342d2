"""RedisStore: every Redis command the library sends.

The store is I/O only: it decides nothing about caching or modes. Its parts:

* the client from :class:`~lockless.redis.connection.ConnectionFactory` (the one
  connection factory, shared with the subscriber), and
  :func:`~lockless.redis.client.guarded`, which times every call and translates redis-py
  and OS errors into :class:`~lockless.errors.RedisUnavailable`;
* a :class:`~lockless.redis.runner.ScriptRunner` calling the Lua scripts by SHA (one
  reload on ``NOSCRIPT``), with :class:`~lockless.redis.scripts.ScriptArgs` filling
  their KEYS and ARGV;
* a :class:`~lockless.redis.heartbeat_writer.HeartbeatWriter`, which packs heartbeats due
  together into batched ``HEARTBEAT`` calls and answers one result per beat;
* the reads: node records (``HGETALL``), pool positions (``seq``/``epoch``), relists and
  log reads, decoded by ``lockless.core.snapshot``.

On a Redis Cluster (a ``redis+cluster://`` URL) the same commands go through the
factory's :class:`~lockless.redis.cluster.ClusterRouter`: every call names one pool, so
it is one pipeline to the primary owning that pool's slot, and a call that spans pools
(``pool_states``, a batch of heartbeats) is one pipeline per pool, sent at once. Whether
the scripts publish with PUBLISH or SPUBLISH is found at start (``load_scripts``).

:meth:`RedisStore.send` runs one write command (``lockless.core.commands``): the write
path and the journal replay both go through it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.crc import key_slot

from lockless.config import NodeLifecycleConfig, RedisConfig
from lockless.core.commands import Heartbeat, JobFinish, JobStart, Register, Remove, WriteCommand
from lockless.core.snapshot import NodeSnapshot, NodeSpec, parse_node_hash
from lockless.errors import MalformedRecord, RedisUnavailable
from lockless.metrics import Metrics
from lockless.protocol import Admission, HeartbeatResult
from lockless.redis import scripts
from lockless.redis.client import guarded
from lockless.redis.cluster import connections_for
from lockless.redis.connection import ConnectionFactory
from lockless.redis.heartbeat_writer import HeartbeatWriter
from lockless.redis.keys import KeySpace
from lockless.redis.pool_reader import LogRead, PoolListing, PoolPosition, PoolReader
from lockless.redis.runner import ScriptRunner
from lockless.redis.scripts import ScriptArgs

log = logging.getLogger("lockless.store")


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
        self.connections = connections or connections_for(redis_config)
        #: The cluster's router (``redis+cluster://``), else None: one server, ``client`` below.
        self.cluster = self.connections.cluster
        #: The command client of the server (on a cluster: of the first seed, for keyless admin use).
        self.client = client or self.connections.command_client()
        self.scripts = ScriptRunner(
            self.client,
            self.metrics,
            router=self.cluster,
            wait_replicas=redis_config.wait_replicas,
            wait_timeout_ms=redis_config.wait_timeout_ms,
        )
        self.reader = PoolReader(self.client, self.keys, self.metrics, self.cluster)
        self.heartbeats = HeartbeatWriter(self.scripts, self.args)

    @staticmethod
    def make_client(cfg: RedisConfig, **overrides: Any) -> aioredis.Redis:
        """A command client with the house settings for ``cfg`` (see ``ConnectionFactory``)."""
        return connections_for(cfg).command_client(**overrides)

    async def close(self) -> None:
        await self.client.aclose()
        if self.cluster is not None:
            await self.cluster.aclose()

    async def load_scripts(self) -> None:
        """Load every script (idempotent; done lazily on NOSCRIPT as well).

        On a cluster: the slot map is read first if it was not yet, and with sharded pub/sub
        (Valkey, Redis >= 7) the scripts publish with SPUBLISH (``scripts.sharded``)."""
        if self.cluster is not None:
            if self.cluster.generation == 0:
                await self.connections.check()
            if self.cluster.sharded_pubsub:
                self.scripts.use(scripts.sharded(scripts.ALL))
        await self.scripts.load_all()

    # -------------------------------------------------------------- cluster
    def slot(self, pool: str) -> int:
        """The cluster slot of every key of ``pool`` (they share its hash tag)."""
        return self.reader.slot(pool)

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
        if self.cluster is not None:
            added, done = await asyncio.gather(
                self._add_pools_on_cluster([pool]),
                self.scripts.call_then(
                    "register", self.args.register(spec), [("HGETALL", self.keys.node(pool, node_id))]
                ),
                return_exceptions=True,
            )
            if isinstance(done, BaseException):
                raise done
            self._pools_set_added(added)
            version, (raw,) = int(done[0]), done[1]
        else:
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
        calls = [self.args.register(spec) for spec in specs]
        if self.cluster is not None:
            added, replies = await asyncio.gather(
                self._add_pools_on_cluster(pools),
                self.scripts.call_many("register", calls),
                return_exceptions=True,
            )
            if isinstance(replies, BaseException):
                raise replies
            self._pools_set_added(added)
            return [int(v) for v in replies]
        # The pools set lives outside the pools' slots, so no script touches it; queued
        # ahead of the calls it keeps the registration one round trip.
        replies = await self.scripts.call_many(
            "register",
            calls,
            before=lambda pipe: pipe.sadd(self.keys.pools(), *pools),
        )
        return [int(v) for v in replies[1:]]

    async def _add_pools_on_cluster(self, pools: Sequence[str]) -> None:
        # The pools set has a slot of its own, on some shard: its SADD goes there beside the
        # calls, and is best effort (see _pools_set_added), so that a registration depends on
        # its pool's shard only: a shard down must not stop registrations in the others' pools.
        assert self.cluster is not None
        cluster, key = self.cluster, self.keys.pools()

        async def add() -> None:
            await cluster.execute(key_slot(key.encode()), [("SADD", key, *pools)])

        await self._guarded("SADD pools", add)

    @staticmethod
    def _pools_set_added(outcome: BaseException | None) -> None:
        """The pools set is an index for operators; the next registration in the pool adds it again."""
        if isinstance(outcome, RedisUnavailable):
            log.warning("pools set not updated (%s); registration done", outcome)
        elif isinstance(outcome, BaseException):
            raise outcome

    async def heartbeat(self, beat: Heartbeat) -> HeartbeatResult:
        """One heartbeat; version 0 means the node is unknown and no spec was given to re-create it."""
        (result,) = await self.heartbeat_many([beat])
        return result

    async def heartbeat_many(self, beats: Sequence[Heartbeat]) -> list[HeartbeatResult]:
        """Heartbeats due together, in one round trip (batched per pool: ``HeartbeatWriter``);
        results in ``beats``' order."""
        return await self.heartbeats.send(beats)

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
        """One record; None if absent. Raises MalformedRecord if it does not decode."""
        return await self.reader.get_node(pool, node_id)

    async def get_nodes(
        self, pool: str, node_ids: Sequence[str]
    ) -> dict[str, NodeSnapshot | MalformedRecord | None]:
        """Several records in one round trip; a bad record maps to its MalformedRecord."""
        return await self.reader.get_nodes(pool, node_ids)

    async def get_nodes_and_epoch(
        self, pool: str, node_ids: Sequence[str]
    ) -> tuple[str | None, dict[str, NodeSnapshot | MalformedRecord | None]]:
        """``get_nodes``, with the pool's epoch read in the same round trip (the records' life)."""
        return await self.reader.get_nodes_and_epoch(pool, node_ids)

    async def pool_state(self, pool: str) -> tuple[int, str | None]:
        """The pool's ``seq`` (0 if none) and ``epoch`` (None if none)."""
        return await self.reader.pool_state(pool)

    async def pool_states(self, pools: Sequence[str]) -> dict[str, tuple[int, str | None]]:
        """``pool_state`` of several pools (one round trip on one server)."""
        return await self.reader.pool_states(pools)

    async def pool_states_each(
        self, pools: Sequence[str]
    ) -> dict[str, tuple[int, str | None] | RedisUnavailable]:
        """``pool_states``, each pool answered or failed on its own (on a cluster)."""
        return await self.reader.pool_states_each(pools)

    async def positions(self, at: dict[str, int | None]) -> dict[str, PoolPosition]:
        """Each pool's seq, epoch and the mark of its log entry at ``at[pool]``."""
        return await self.reader.positions(at)

    async def positions_each(self, at: dict[str, int | None]) -> dict[str, PoolPosition | RedisUnavailable]:
        """:meth:`positions`, each pool answered or failed on its own (on a cluster)."""
        return await self.reader.positions_each(at)

    async def relist(self, pool: str, *, batch: int = 1000) -> PoolListing:
        """``seq`` first, then every alive node's record (DESIGN.md section 5.3)."""
        return await self.reader.relist(pool, batch=batch)

    async def read_log(self, pool: str, from_seq: int, *, count: int = 1000) -> LogRead:
        """Log entries with seq >= ``from_seq``; incomplete if ``from_seq`` was trimmed."""
        return await self.reader.read_log(pool, from_seq, count=count)

    async def ping(self) -> float:
        """Round trip of one PING, seconds (on a cluster: to the first seed)."""
        start = time.perf_counter()
        await self._guarded("PING", self.client.ping)
        return time.perf_counter() - start

    async def pools(self) -> set[str]:
        key = self.keys.pools()
        if self.cluster is not None:
            cluster = self.cluster

            async def members() -> list:
                return await cluster.execute(key_slot(key.encode()), [("SMEMBERS", key)])

            (found,) = await self._guarded("SMEMBERS pools", members)
            return set(found)
        return set(await self._guarded("SMEMBERS pools", lambda: self.client.smembers(key)))
