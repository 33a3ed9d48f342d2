"""RedisStore: every Redis command the library sends, and the one place errors are translated.

The store is I/O only: it decides nothing about caching or modes. It owns a bounded,
blocking connection pool with timeouts always set and retries set explicitly (DESIGN.md
section 9), calls the Lua scripts by SHA and reloads them on ``NOSCRIPT`` (a restarted
server forgot them), and converts redis-py and OS errors into
:class:`~lockless.errors.RedisUnavailable` with ``raise ... from exc``.

Scripts are not called through redis-py's ``Script`` objects inside pipelines: the
pipeline runs ``SCRIPT EXISTS`` before every execution, a second round trip per batch.
``_evalsha`` and ``_pipeline_evalsha`` send ``EVALSHA`` directly and load on ``NOSCRIPT``;
every script is idempotent, so re-sending a batch after loading is safe.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

from lockless.config import NodeLifecycleConfig, RedisConfig
from lockless.core.snapshot import ChangeEvent, NodeSnapshot, NodeSpec, parse_event, parse_node_hash
from lockless.errors import MalformedRecord, RedisUnavailable
from lockless.metrics import Metrics
from lockless.protocol import Admission, Heartbeat, HeartbeatResult
from lockless.redis import scripts
from lockless.redis.keys import KeySpace
from lockless.redis.packing import with_c_packing

T = TypeVar("T")

#: Errors that mean "Redis is not answering", as opposed to a bug in what we sent.
_UNAVAILABLE = (RedisError, OSError, asyncio.TimeoutError)


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


def _sha(body: str) -> str:
    return hashlib.sha1(body.encode()).hexdigest()


class RedisStore:
    """Redis I/O for one registry instance (or one harness node driver)."""

    def __init__(
        self,
        redis_config: RedisConfig,
        nodes: NodeLifecycleConfig | None = None,
        *,
        metrics: Metrics | None = None,
        client: aioredis.Redis | None = None,
    ) -> None:
        self.config = redis_config
        self.nodes = nodes or NodeLifecycleConfig()
        self.keys = KeySpace(redis_config.namespace)
        self.metrics = metrics or Metrics()
        self._ttl_ms = str(int(self.nodes.ttl_s * 1000))
        self._dead_ms = str(int(self.nodes.dead_after_s * 1000))
        self._log_max = str(redis_config.log_max_len)
        # One token per store: only used if this store's write is the one that creates the pool.
        self._epoch_token = uuid.uuid4().hex
        self._shas = {name: _sha(body) for name, body in scripts.ALL.items()}
        self.client = client or self.make_client(redis_config)

    @staticmethod
    def make_client(cfg: RedisConfig, **overrides: Any) -> aioredis.Redis:
        """A client with the house settings: timeouts, bounded blocking pool, explicit retries."""
        kwargs: dict[str, Any] = {
            "max_connections": cfg.max_connections,
            "timeout": cfg.pool_timeout_s,
            "socket_timeout": cfg.socket_timeout_s,
            "socket_connect_timeout": cfg.connect_timeout_s,
            "retry": Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.05), cfg.retries),
            "decode_responses": True,
            # A record holding bytes that are not UTF-8 must reach the codec (which rejects it
            # as a MalformedRecord naming the field), not fail inside redis-py's reply decoding.
            "encoding_errors": "surrogateescape",
        }
        kwargs.update(overrides)
        pool = aioredis.BlockingConnectionPool.from_url(cfg.url, **kwargs)
        # (from_url chose the class for the scheme: TCP, TLS or unix socket.)
        pool.connection_class = with_c_packing(pool.connection_class)
        return aioredis.Redis(connection_pool=pool)

    async def close(self) -> None:
        await self.client.aclose()

    # ------------------------------------------------------------ plumbing
    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        start = time.perf_counter()
        try:
            result = await fn()
        except ResponseError as exc:
            if isinstance(exc, NoScriptError) or "BUSY" in str(exc) or "LOADING" in str(exc):
                self.metrics.inc("redis_errors")
                raise RedisUnavailable(f"{what}: {exc}") from exc
            raise
        except _UNAVAILABLE as exc:
            self.metrics.inc("redis_errors")
            raise RedisUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
        self.metrics.observe_us("redis_latency_us", (time.perf_counter() - start) * 1e6)
        return result

    async def load_scripts(self) -> None:
        """Load every script (idempotent; done lazily on NOSCRIPT as well)."""

        async def load() -> None:
            pipe = self.client.pipeline(transaction=False)
            for body in scripts.ALL.values():
                pipe.script_load(body)
            await pipe.execute()

        await self._call("SCRIPT LOAD", load)

    async def _evalsha(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        sha = self._shas[name]

        async def run() -> Any:
            try:
                return await self.client.evalsha(sha, len(keys), *keys, *args)
            except NoScriptError:
                await self.client.script_load(scripts.ALL[name])
                return await self.client.evalsha(sha, len(keys), *keys, *args)

        return await self._call(name, run)

    async def _pipeline_evalsha(
        self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
    ) -> list:
        sha = self._shas[name]

        async def run() -> list:
            for attempt in (0, 1):
                pipe = self.client.pipeline(transaction=False)
                for keys, args in calls:
                    pipe.evalsha(sha, len(keys), *keys, *args)
                replies = await pipe.execute(raise_on_error=False)
                if attempt == 0 and any(isinstance(r, NoScriptError) for r in replies):
                    await self.client.script_load(scripts.ALL[name])
                    continue
                for reply in replies:
                    if isinstance(reply, Exception):
                        raise reply
                return replies
            raise AssertionError("unreachable")

        return await self._call(f"{name} x{len(calls)}", run)

    def _base_args(self, pool: str, node_id: str) -> list[str]:
        return [self.keys.events(pool), pool, node_id, self._epoch_token, self._log_max, self._ttl_ms]

    # --------------------------------------------------------------- writes
    async def register(self, spec: NodeSpec) -> int:
        """Create or replace ``spec``'s record; returns its new version."""
        f = spec.to_hash_fields()
        args = [*self._base_args(spec.pool, spec.node_id), f["status"], f["max_jobs"], f["load"]]
        args += [f["resources"], f["labels"]]

        async def run() -> int:
            for attempt in (0, 1):
                # The pools set lives outside the pool's slot, so it is not touched by the script;
                # pipelining keeps the registration one round trip.
                pipe = self.client.pipeline(transaction=False)
                pipe.sadd(self.keys.pools(), spec.pool)
                pipe.evalsha(
                    self._shas["register"], 6, *self.keys.script_keys(spec.pool, spec.node_id), *args
                )
                replies = await pipe.execute(raise_on_error=False)
                if attempt == 0 and isinstance(replies[1], NoScriptError):
                    await self.client.script_load(scripts.REGISTER)
                    continue
                for reply in replies:
                    if isinstance(reply, Exception):
                        raise reply
                return int(replies[1])
            raise AssertionError("unreachable")

        return await self._call("register", run)

    async def register_many(self, specs: Sequence[NodeSpec]) -> list[int]:
        """Several registrations pipelined into one round trip (bulk loads, harness start-up)."""
        if not specs:
            return []
        pools = sorted({s.pool for s in specs})
        await self._call("SADD pools", lambda: self.client.sadd(self.keys.pools(), *pools))
        calls = []
        for spec in specs:
            f = spec.to_hash_fields()
            args = [*self._base_args(spec.pool, spec.node_id), f["status"], f["max_jobs"], f["load"]]
            calls.append(
                (self.keys.script_keys(spec.pool, spec.node_id), [*args, f["resources"], f["labels"]])
            )
        return [int(v) for v in await self._pipeline_evalsha("register", calls)]

    def _heartbeat_call(self, beat: Heartbeat) -> tuple[list[str], list[Any]]:
        args: list[Any] = self._base_args(beat.pool, beat.node_id)
        args += [repr(float(beat.load)), repr(self.nodes.load_tolerance)]
        args.append("1" if self.nodes.publish_every_heartbeat else "0")
        args.append("0" if beat.running_jobs is None else "1")
        if beat.spec is not None:
            f = beat.spec.to_hash_fields()
            args += ["1", f["status"], f["max_jobs"], f["resources"], f["labels"]]
        else:
            args += ["0", "", "", "", ""]
        if beat.running_jobs is not None:
            # A set: duplicates would make the script's size comparison see a change every time.
            args += sorted(set(beat.running_jobs))
        return self.keys.script_keys(beat.pool, beat.node_id), args

    @staticmethod
    def _heartbeat_result(node_id: str, reply: Sequence[Any]) -> HeartbeatResult:
        return HeartbeatResult(
            node_id=node_id, version=int(reply[0]), changed=bool(int(reply[1])), recreated=bool(int(reply[2]))
        )

    async def heartbeat(self, beat: Heartbeat) -> HeartbeatResult:
        """One heartbeat; version 0 means the node is unknown and no spec was given to re-create it."""
        keys, args = self._heartbeat_call(beat)
        return self._heartbeat_result(beat.node_id, await self._evalsha("heartbeat", keys, args))

    async def heartbeat_many(self, beats: Sequence[Heartbeat]) -> list[HeartbeatResult]:
        """Heartbeats due together, pipelined into one round trip."""
        if not beats:
            return []
        replies = await self._pipeline_evalsha("heartbeat", [self._heartbeat_call(b) for b in beats])
        return [self._heartbeat_result(b.node_id, r) for b, r in zip(beats, replies, strict=True)]

    async def remove(self, pool: str, node_id: str) -> int:
        """Remove the node; returns the removal's version, 0 if it did not exist."""
        return int(
            await self._evalsha(
                "remove", self.keys.script_keys(pool, node_id), self._base_args(pool, node_id)
            )
        )

    async def job_start(self, pool: str, node_id: str, job_id: str) -> Admission:
        """Admission control (see ``scripts.JOB_START``)."""
        args = [*self._base_args(pool, node_id), job_id, self._dead_ms]
        ok, reason, version, cur, max_jobs = await self._evalsha(
            "job_start", self.keys.script_keys(pool, node_id), args
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

    async def job_finish(self, pool: str, node_id: str, job_id: str) -> tuple[bool, int, int]:
        """Release ``job_id``; returns (released, node version, current_jobs). Version 0: unknown node."""
        args = [*self._base_args(pool, node_id), job_id]
        released, version, cur = await self._evalsha("job_finish", self.keys.script_keys(pool, node_id), args)
        return bool(int(released)), int(version), int(cur)

    async def reap(self, pool: str, *, limit: int = 1000) -> list[str]:
        """Remove nodes whose heartbeat is older than ``dead_after``; returns their ids."""
        args = [
            self.keys.events(pool),
            pool,
            self._epoch_token,
            self._log_max,
            self._dead_ms,
            self.keys.node_prefix(pool),
            self.keys.jobs_prefix(pool),
            str(limit),
        ]
        return list(await self._evalsha("reap", self.keys.reap_keys(pool), args))

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
        replies = await self._call(what, run)
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

    async def get_versions(self, pool: str, node_ids: Sequence[str]) -> list[int]:
        """Current versions (0 for absent nodes), one pipelined round trip."""

        async def run() -> list:
            pipe = self.client.pipeline(transaction=False)
            for node_id in node_ids:
                pipe.hget(self.keys.node(pool, node_id), "version")
            return await pipe.execute()

        replies = await self._call("HGET version", run)
        return [int(v) if v is not None and str(v).isdigit() else 0 for v in replies]

    async def pool_state(self, pool: str) -> tuple[int, str | None]:
        """The pool's current ``seq`` (0 if none) and ``epoch`` (None if the pool has none)."""

        async def run() -> list:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(self.keys.seq(pool))
            pipe.get(self.keys.epoch(pool))
            return await pipe.execute()

        seq, epoch = await self._call("GET seq/epoch", run)
        return int(seq or 0), epoch

    async def pool_states(self, pools: Sequence[str]) -> dict[str, tuple[int, str | None]]:
        """``pool_state`` of several pools in one round trip (the registry's liveness probe)."""

        async def run() -> list:
            pipe = self.client.pipeline(transaction=False)
            for pool in pools:
                pipe.get(self.keys.seq(pool))
                pipe.get(self.keys.epoch(pool))
            return await pipe.execute()

        flat = await self._call("GET seq/epoch", run)
        return {pool: (int(flat[2 * i] or 0), flat[2 * i + 1]) for i, pool in enumerate(pools)}

    async def relist(self, pool: str, *, batch: int = 1000) -> PoolListing:
        """Read ``seq`` first, then every alive node (ZRANGE + pipelined HGETALL) (DESIGN.md section 5.3)."""
        seq, epoch = await self.pool_state(pool)
        ids = await self._call("ZRANGE alive", lambda: self.client.zrange(self.keys.alive(pool), 0, -1))
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
        entries = await self._call(
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
        await self._call("PING", self.client.ping)
        return time.perf_counter() - start

    async def pools(self) -> set[str]:
        return set(await self._call("SMEMBERS pools", lambda: self.client.smembers(self.keys.pools())))
