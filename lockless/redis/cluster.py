"""Redis Cluster: the slot map, one connection pool per primary, and commands routed by slot.

Selected by a cluster URL, ``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://``
for TLS): the hosts are seeds, any nodes of the cluster; the slot map is read from the
first that answers (``CLUSTER SLOTS``). :class:`ClusterRouter` is the command side of
an instance on a cluster; the event side (a subscription per shard) is
``lockless.redis.cluster_subscriber``.

Why not redis-py's ``RedisCluster``. The library needs three things from a cluster client
that it does not give:

* **failures per pool.** A fault on one shard must fail only the commands of the pools on
  that shard (their modes degrade, the others' do not). ``RedisCluster`` reacts to a
  connection error or ``CLUSTERDOWN`` on one node by closing every node's connections
  (``aclose()``), in-flight commands of the healthy shards included, and then sleeps
  0.25 s before retrying a whole pipeline;
* **bounded, blocking pools** whose wait counts in latency (DESIGN.md section 9): its
  node pools raise ``MaxConnectionsError`` when full instead of waiting;
* **WAIT on the connection that wrote** (``redis.wait_replicas``): WAIT has no key, so a
  cluster pipeline cannot route it beside the write it is meant to cover.

Every command the library sends names one pool, and every key of a pool carries the hash
tag ``{pool}`` (``keys.py``), so every batch goes to one slot: the router keeps a plain
redis-py client (the house settings of :class:`~lockless.redis.connection.ConnectionFactory`:
timeouts, bounded blocking pool, explicit retries, one SSL context) per primary, and
sends each batch as one pipeline to the slot's owner. Redirections are followed here:
``MOVED`` updates the map (and refreshes it in the background: a failover moves every
slot of a node at once), ``ASK`` (a slot being migrated) re-sends the command to the
target prefixed by ``ASKING`` on the same connection, ``TRYAGAIN`` (a multi-key command
whose keys are split by a migration) is re-sent after a short pause, within the socket
timeout. A connection error is not retried here: the node may be dead, and the caller's
mode machine must count the failure; the map is refreshed in the background so the next
command finds the new owner once a replica has taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, RedisError, TryAgainError

from lockless.aio import cancel_and_wait
from lockless.config import RedisConfig
from lockless.errors import ConfigError, RedisUnavailable, TlsError
from lockless.redis.connection import ConnectionFactory, Endpoint

log = logging.getLogger("lockless.cluster")

#: Hash slots of a cluster.
SLOTS = 16384
#: A node's address as the cluster names it.
Address = tuple[str, int]
#: One command: its arguments, name first (``("HGETALL", key)``).
Command = tuple[Any, ...]
#: Redirections followed per command before giving up (a slot moving twice during a call).
_MAX_REDIRECTS = 5
#: Pause before re-sending a command that got TRYAGAIN (a migration in progress).
_TRYAGAIN_PAUSE_S = 0.01
#: Background refreshes of the slot map are at most this frequent.
_REFRESH_INTERVAL_S = 0.05


def is_cluster_url(url: str) -> bool:
    """True for ``redis+cluster://`` and ``rediss+cluster://`` URLs."""
    return url.startswith(("redis+cluster://", "rediss+cluster://"))


@dataclass(frozen=True, slots=True)
class ClusterUrl:
    """A cluster URL taken apart: the seeds, and the first seed as a one-server URL."""

    seeds: tuple[Address, ...]
    #: ``redis://`` or ``rediss://`` URL of the first seed with the same user, password and
    #: query (TLS settings): what the one-server endpoint parser understands.
    seed_url: str


def parse_cluster_url(url: str) -> ClusterUrl:
    """Split ``redis+cluster://[user:pw@]h1:p1,h2:p2[/0][?query]``; ConfigError names ``redis.url``."""
    parts = urlsplit(url)
    scheme = parts.scheme.removesuffix("+cluster")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    seeds: list[Address] = []
    for item in hosts.split(","):
        host, port = _host_port(item.strip(), url)
        seeds.append((host, port))
    db = parts.path.strip("/") or "0"
    if db != "0":
        raise ConfigError(
            "redis.url", url, "database 0 (a cluster has only database 0), e.g. redis+cluster://h:7000"
        )
    first = seeds[0]
    netloc = (f"{userinfo}@" if userinfo else "") + _netloc(first)
    return ClusterUrl(seeds=tuple(seeds), seed_url=urlunsplit((scheme, netloc, "/0", parts.query, "")))


def _host_port(item: str, url: str) -> Address:
    allowed = "host:port seeds separated by commas, e.g. redis+cluster://10.0.0.1:7000,10.0.0.2:7000"
    if not item:
        raise ConfigError("redis.url", url, allowed)
    if item.startswith("["):  # [IPv6]:port
        host, _, rest = item[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
    if not host or (port_text and not port_text.isdigit()):
        raise ConfigError("redis.url", url, allowed)
    return host, int(port_text or 6379)


def _netloc(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def pool_slot(keys_seq_of_pool: str) -> int:
    """The slot of a pool: that of any of its keys (they share the ``{pool}`` hash tag)."""
    return key_slot(keys_seq_of_pool.encode())


class ClusterRouter:
    """The slot map of one cluster and a client per primary; runs batches of one slot. See module doc."""

    def __init__(self, factory: ConnectionFactory, config: RedisConfig) -> None:
        self._factory = factory
        parsed = parse_cluster_url(config.url)
        self.seeds = parsed.seeds
        self._clients: dict[Address, aioredis.Redis] = {}
        self._owner: list[Address | None] = [None] * SLOTS
        self._refreshing: asyncio.Task[bool] | None = None
        self._last_refresh = -1e9
        #: Nodes whose last command failed (asked last for the map).
        self._suspect: dict[Address, float] = {}
        #: Whether the servers have sharded pub/sub (SPUBLISH/SSUBSCRIBE): found at start.
        self.sharded_pubsub = False
        #: Bumped whenever the slot map changes; subscribers re-plan on it.
        self.generation = 0
        self._on_change: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ nodes
    def endpoint(self, address: Address) -> Endpoint:
        """The endpoint of one node: the seed's user, password and TLS, that node's host and port."""
        return dataclasses.replace(self._factory.endpoint, host=address[0], port=address[1])

    def client(self, address: Address) -> aioredis.Redis:
        """The command client of one node (made on first use, kept for the instance's life)."""
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = self._factory.command_client(host=address[0], port=address[1])
        return client

    def owner(self, slot: int) -> Address | None:
        """The primary that owns ``slot`` as far as this router knows (None before the map is read)."""
        return self._owner[slot]

    def primaries(self) -> list[Address]:
        """Every primary owning slots, in slot order."""
        seen: dict[Address, None] = {}
        for address in self._owner:
            if address is not None:
                seen.setdefault(address)
        return list(seen)

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever the slot map changes (after a refresh or a MOVED)."""
        self._on_change.append(callback)

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        if self._refreshing is not None:
            await cancel_and_wait([self._refreshing])  # one cancel() can be swallowed by wait_for
        for client in clients:
            with contextlib.suppress(Exception):
                await client.aclose()

    # ----------------------------------------------------------------- start
    async def check(self) -> None:
        """At start: reach a seed (TLS and AUTH checked as for one server), read the slot map and
        whether the servers have sharded pub/sub. RedisUnavailable names every seed tried."""
        failures = []
        for seed in self.seeds:
            try:
                await self._factory.check(self.endpoint(seed))
                break
            except TlsError:
                raise  # the same TLS settings serve every node: no other seed will do better
            except RedisUnavailable as exc:
                failures.append(str(exc))
        else:
            raise RedisUnavailable("no cluster seed answered: " + "; ".join(failures))
        if not await self.refresh():
            raise RedisUnavailable(f"no seed of {self.seeds} returned a slot map (CLUSTER SLOTS)")
        missing = sum(1 for owner in self._owner if owner is None)
        if missing:
            log.warning("cluster slot map has %d of %d slots without an owner", missing, SLOTS)
        self.sharded_pubsub = await self._has_sharded_pubsub()

    async def _has_sharded_pubsub(self) -> bool:
        # SPUBLISH/SSUBSCRIBE came with Redis 7.0; Valkey reports the Redis version it is
        # compatible with (7.2.4) in redis_version too.
        for address in self.primaries():
            try:
                info = await self.client(address).info("server")
            except (RedisError, OSError):
                continue
            major = str(info.get("redis_version", "0")).split(".")[0]
            return major.isdigit() and int(major) >= 7
        return False

    # --------------------------------------------------------------- the map
    async def refresh(self) -> bool:
        """Read the slot map now (one refresh at a time: concurrent callers share it). True if read."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._refresh())
        return await asyncio.shield(self._refreshing)

    def refresh_soon(self) -> None:
        """Refresh the map in the background, at most every ``_REFRESH_INTERVAL_S``."""
        now = time.monotonic()
        if now - self._last_refresh < _REFRESH_INTERVAL_S:
            return
        if self._refreshing is None or self._refreshing.done():
            self._last_refresh = now
            self._refreshing = asyncio.ensure_future(self._refresh())

    async def _refresh(self) -> bool:
        self._last_refresh = time.monotonic()
        # Known primaries first (the seeds may be gone since), then the seeds; nodes that just
        # failed last (a frozen one would hold each try for a socket timeout).
        known = list(dict.fromkeys([*self.primaries(), *self.seeds]))
        candidates = sorted(known, key=lambda a: a in self._suspect)
        for address in candidates:
            try:
                slots = await self.client(address).execute_command("CLUSTER", "SLOTS")
            except (RedisError, OSError) as exc:
                log.debug("CLUSTER SLOTS on %s failed: %s", address, exc)
                continue
            if slots:
                self._install(slots, address)
                return True
        return False

    def _install(self, slots: Sequence[Any], asked: Address) -> None:
        owner: list[Address | None] = [None] * SLOTS
        for entry in slots:
            first, last, primary = int(entry[0]), int(entry[1]), entry[2]
            host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
            # An empty or '?' host means "the address you asked me on" (cluster-announce unset).
            address = (host if host not in ("", "?") else asked[0], int(primary[1]))
            owner[first : last + 1] = [address] * (last - first + 1)
        if owner != self._owner:
            self._owner = owner
            self._changed()

    def _changed(self) -> None:
        self.generation += 1
        for callback in list(self._on_change):
            callback()

    def moved(self, slot: int, address: Address) -> None:
        """A MOVED reply said ``slot`` is at ``address``: use it now, refresh the rest of the map soon."""
        if self._owner[slot] != address:
            self._owner[slot] = address
            self._changed()
        self.refresh_soon()

    # -------------------------------------------------------------- commands
    async def execute(
        self,
        slot: int,
        commands: Sequence[Command],
        *,
        raise_on_error: bool = True,
        trailer: Command | None = None,
    ) -> list[Any]:
        """Run ``commands`` (all of ``slot``) as one pipeline on its owner; returns their replies.

        Redirected commands are re-sent (see the module docstring), in order, the others not.
        ``trailer`` (e.g. ``WAIT 1 100``) is appended to every pipeline sent, on the same
        connection as the commands it follows; its last reply is returned after the
        commands' replies. With ``raise_on_error`` the first error reply is raised;
        otherwise error replies are returned in place. A connection error or timeout
        raises redis-py's error (the caller maps it) after asking for a map refresh.
        """
        replies: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        asked: dict[int, Address] = {}
        trailers: list[Any] = []
        followed = False
        deadline = time.monotonic() + self._factory.config.socket_timeout_s
        for _ in range(_MAX_REDIRECTS + 1):
            groups: dict[tuple[Address, bool], list[int]] = {}
            for i in todo:
                target = asked.get(i)
                if target is None:
                    owner = self._owner[slot]
                    if owner is None:
                        await self.refresh()
                        owner = self._owner[slot]
                        if owner is None:
                            raise RedisUnavailable(f"slot {slot} has no owner in the cluster's slot map")
                    groups.setdefault((owner, False), []).append(i)
                else:
                    groups.setdefault((target, True), []).append(i)
            try:
                sent = await asyncio.gather(
                    *(
                        self._send(address, asking, [commands[i] for i in idx], trailer)
                        for (address, asking), idx in groups.items()
                    )
                )
            except (TimeoutError, RedisError, OSError):
                # The node failed. If a fresh map names another owner of the slot (a failover
                # done, a slot moved), send once more there: every script is safe to repeat.
                # Else the failure is the caller's to count (the shard is down).
                failed = self._owner[slot]
                if followed or not await self.refresh() or self._owner[slot] in (None, failed):
                    raise
                followed = True
                continue
            todo, pause = [], False
            for (_target, idx), (got, tail) in zip(groups.items(), sent, strict=True):
                trailers.append(tail)
                for i, reply in zip(idx, got, strict=True):
                    asked.pop(i, None)
                    if isinstance(reply, MovedError):
                        self.moved(reply.slot_id, (reply.host, reply.port))
                        todo.append(i)
                    elif isinstance(reply, AskError):
                        asked[i] = (reply.host, reply.port)
                        todo.append(i)
                    elif isinstance(reply, TryAgainError) and time.monotonic() < deadline:
                        pause = True
                        todo.append(i)
                    replies[i] = reply
            if not todo:
                break
            todo.sort()
            if pause:
                await asyncio.sleep(_TRYAGAIN_PAUSE_S)
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        if trailer is None:
            return replies
        # WAIT answers per connection: the weakest of the pipelines sent is what the batch got.
        counts = [t for t in trailers if isinstance(t, int)]
        return [
            *replies,
            min(counts)
            if len(counts) == len(trailers)
            else next(t for t in trailers if not isinstance(t, int)),
        ]

    async def _send(
        self, address: Address, asking: bool, commands: list[Command], trailer: Command | None
    ) -> tuple[list[Any], Any]:
        """One pipeline on one node; ASKING before each command when following ASK redirections."""
        pipe = self.client(address).pipeline(transaction=False)
        for command in commands:
            if asking:
                pipe.execute_command("ASKING")
            pipe.execute_command(*command)
        if trailer is not None:
            pipe.execute_command(*trailer)
        try:
            out = await pipe.execute(raise_on_error=False)
        except (TimeoutError, RedisError, OSError):
            self._suspect[address] = time.monotonic()
            self.refresh_soon()
            raise
        self._suspect.pop(address, None)
        tail = out.pop() if trailer is not None else None
        if asking:
            out = out[1::2]  # drop the ASKING replies
        return out, tail

    async def each(self, slots: dict[str, int], run: Callable[[str, int], Awaitable[Any]]) -> dict[str, Any]:
        """``run(name, slot)`` for every named slot at once; each result, or the exception it raised."""
        names = list(slots)
        results = await asyncio.gather(*(run(n, slots[n]) for n in names), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancellation and the like are not per-slot failures
        return dict(zip(names, results, strict=True))


class ClusterConnections(ConnectionFactory):
    """The connection factory of a cluster URL: every node is reached with the first seed's TLS,
    AUTH and timeouts, and :attr:`cluster` routes by slot (the start check reads the slot map)."""

    def __init__(self, config: RedisConfig) -> None:
        super().__init__(dataclasses.replace(config, url=parse_cluster_url(config.url).seed_url))
        self.config = config
        self.cluster: ClusterRouter = ClusterRouter(self, config)

    async def check(self, endpoint: Endpoint | None = None) -> None:
        """With no ``endpoint``: the seeds in turn, then the slot map is read; else that node."""
        if endpoint is None:
            await self.cluster.check()
        else:
            await super().check(endpoint)


def connections_for(config: RedisConfig) -> ConnectionFactory:
    """The connection factory ``config`` calls for: a cluster's for a ``+cluster`` URL."""
    return ClusterConnections(config) if config.cluster else ConnectionFactory(config)
