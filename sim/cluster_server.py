"""A real Redis Cluster on loopback, under the harness's control: 3 primaries, 3 replicas.

The single-server controller (``sim.redis_server``) models a broken Redis; this one
models a broken *cluster*: a primary killed or frozen so its replica takes over, a
graceful or forced failover, a node restarted empty, a slot moved to another primary
while clients keep writing, client connections killed. Each node is a
:class:`~sim.redis_server.RedisServer` (composed, not subclassed) running the binary
``LOCKLESS_SERVER`` names, Valkey 9 by default; Redis 6.2 (``redis``) forms clusters
too, without sharded pub/sub.

Forming, with cluster commands only (what ``valkey-cli --cluster create`` does):
``CLUSTER ADDSLOTS`` on each primary, a distinct ``CLUSTER SET-CONFIG-EPOCH`` per node,
``CLUSTER MEET`` to the first node, then, once every node knows every other,
``CLUSTER REPLICATE`` on each replica. Every wait polls the nodes until
:func:`sim.cluster_view.settle_problems` finds nothing wrong, under a deadline, never a
fixed sleep; a timeout raises :class:`ClusterError` saying what was still wrong.

Nodes keep their port, workdir and ``nodes.conf`` (so their node id) across restarts:
a restarted node rejoins by itself. Ports are chosen so that port and cluster-bus port
(port + 10000: Redis 6.2 has no ``cluster-port`` setting) are both free and below the
kernel's ephemeral range.

Every method is synchronous and bounded by a timeout, like ``RedisServer``'s; from
asyncio call it through ``asyncio.to_thread``. A lock serialises the faults, so calls
from several threads are safe. Nothing outlives the interpreter: at exit every node is
killed and every workdir removed (atexit hooks here and in ``sim.redis_server``), as
:meth:`LocalCluster.cleanup` does.

    >>> with LocalCluster() as cluster:                       # doctest: +SKIP
    ...     rc = redis.cluster.RedisCluster(startup_nodes=[
    ...         redis.cluster.ClusterNode(h, p) for h, p in cluster.startup_nodes])
    ...     rc.set("{pool}:a", 1)
    ...     owner = cluster.primary_for_key("{pool}:a")
    ...     promoted = cluster.kill_primary(owner)            # its replica now owns the slot
"""

from __future__ import annotations

import atexit
import enum
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import redis
from redis.crc import key_slot

from lockless import ConfigError
from sim.cluster_node import HOST, ClusterError, LocalNode, spawn_node
from sim.cluster_view import SLOTS, NodeReport, NodeView, settle_problems
from sim.redis_server import RedisServerError, ServerBinary, ServerKind, find_server

__all__ = ["ClusterError", "FailoverMode", "LocalCluster", "LocalNode"]

# Errors valkey-cli accepts from SETSLOT NODE on the source (valkey-cli.c clusterManagerMoveSlot).
_SETSLOT_ACCEPTABLE = ("only with masters", "only with primaries", "UNBLOCKED", "NOREPLICAS")
_POLL_S = 0.02  # poll interval of every wait; the deadline, not this, bounds the wait
#: How long a manual failover may take before it is asked again (the server gives up after 5 s).
_MANUAL_FAILOVER_S = 6.0


# Clusters started and not yet cleaned up. RedisServer's own atexit hook kills every running
# node; this one also removes the workdirs of nodes that were down at exit.
_LIVE_CLUSTERS: set[LocalCluster] = set()


@atexit.register
def _cleanup_survivors() -> None:
    for cluster in list(_LIVE_CLUSTERS):
        cluster.cleanup()


class FailoverMode(enum.StrEnum):
    """How :meth:`LocalCluster.failover` asks a replica to take over (``CLUSTER FAILOVER``)."""

    GRACEFUL = "graceful"
    """The primary stops writes, the replica catches up, then takes over: no acknowledged write lost."""
    FORCE = "force"
    """No handshake with the primary (it may be down), but an election among the primaries."""
    TAKEOVER = "takeover"
    """No handshake and no election: the replica bumps its epoch and claims the slots alone."""


class LocalCluster:
    """A Redis/Valkey cluster of ``primaries`` primaries with ``replicas_per_primary`` replicas each.

    ``server``: a :class:`~sim.redis_server.ServerBinary` or kind (``None``: ``LOCKLESS_SERVER``).
    ``node_timeout_ms``: ``cluster-node-timeout``, how long a node may be silent before it is
    suspected; failover takes about 1.5-3x this. ``require_full_coverage``: the server default
    (True) stops the whole cluster while any slot is unowned; False (ours) keeps the other
    shards serving, which is what a per-pool degradation needs to be tested against.
    Replicas may always fail over (``cluster-replica-validity-factor 0``), however long
    they were cut off, so a fault's outcome does not depend on timing.
    """

    def __init__(
        self,
        *,
        primaries: int = 3,
        replicas_per_primary: int = 1,
        server: ServerBinary | ServerKind | str | None = None,
        node_timeout_ms: int = 1000,
        require_full_coverage: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        if primaries < 1:
            raise ConfigError("primaries", primaries, ">= 1")
        if replicas_per_primary < 0:
            raise ConfigError("replicas_per_primary", replicas_per_primary, ">= 0")
        if node_timeout_ms < 100:
            raise ConfigError("node_timeout_ms", node_timeout_ms, ">= 100")
        self._binary = server if isinstance(server, ServerBinary) else find_server(server)
        self._primaries = primaries
        self._replicas_per_primary = replicas_per_primary
        self.node_timeout_ms = node_timeout_ms
        self._args = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",  # relative to the node's own --dir
            "--cluster-node-timeout", str(node_timeout_ms),
            "--cluster-replica-validity-factor", "0",
            "--cluster-require-full-coverage", "yes" if require_full_coverage else "no",
            # Diskless full sync without the default 5 s wait for more replicas to join it.
            "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0",
            *extra_args,
        ]  # fmt: skip
        self._nodes: list[LocalNode] = []
        self._lock = threading.RLock()

    # ---- lifecycle -------------------------------------------------------------------

    @property
    def server(self) -> ServerBinary:
        """The binary every node runs."""
        return self._binary

    @property
    def all_nodes(self) -> list[LocalNode]:
        """Every node in creation order: primaries first as formed (roles change with faults)."""
        return list(self._nodes)

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every node, for ``redis.cluster.ClusterNode(host, port)``."""
        return [(HOST, n.port) for n in self._nodes]

    @property
    def urls(self) -> list[str]:
        """``redis://127.0.0.1:<port>/0`` of every node: seeds for a cluster client."""
        return [n.url for n in self._nodes]

    def start(self, timeout: float = 30.0) -> None:
        """Start every node, form the cluster and return once it has settled."""
        with self._lock:
            if self._nodes:
                raise ClusterError("cluster already started")
            deadline = time.monotonic() + timeout
            count = self._primaries * (1 + self._replicas_per_primary)
            _LIVE_CLUSTERS.add(self)
            try:
                for index in range(count):
                    self._nodes.append(spawn_node(index, self._binary, self._args, deadline))
                self._form(deadline)
            except BaseException:
                self.cleanup()
                raise

    def cleanup(self) -> None:
        """Kill every node (SIGKILL: nothing to save) and remove their workdirs."""
        with self._lock:
            for node in self._nodes:
                node.server.kill()
                node.server.cleanup()
            self._nodes = []
            _LIVE_CLUSTERS.discard(self)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    # ---- what the cluster looks like ---------------------------------------------------

    def node(self, which: str | int) -> LocalNode:
        """The node with this node id (``str``) or client port (``int``); ``all_nodes[i]`` by index."""
        for n in self._nodes:
            if which == (n._node_id if isinstance(which, str) else n.port):
                return n
        raise ClusterError(f"no node {which!r}; nodes: {[n.name for n in self._nodes]}")

    def nodes(self) -> list[NodeView]:
        """``CLUSTER NODES`` as the first live node sees it (every live node agrees after a fault returns)."""
        return self._any_live().views()

    def primaries(self) -> list[LocalNode]:
        """The nodes that own slots now, in creation order."""
        ids = {v.node_id for v in self.nodes() if v.role == "primary" and v.slots}
        return [n for n in self._nodes if n._node_id in ids]

    def replicas_of(self, primary: LocalNode) -> list[LocalNode]:
        """The nodes replicating ``primary`` now, in creation order."""
        ids = {v.node_id for v in self.nodes() if v.primary_id == primary.node_id}
        return [n for n in self._nodes if n._node_id in ids]

    def role(self, node: LocalNode) -> str:
        """``"primary"`` or ``"replica"``, as the first live node sees ``node``."""
        return self._view_of(node).role

    def slots_of(self, node: LocalNode) -> tuple[tuple[int, int], ...]:
        """Slot ranges ``(first, last)`` that ``node`` owns (empty for a replica)."""
        return self._view_of(node).slots

    @staticmethod
    def key_slot(key: str | bytes) -> int:
        """The hash slot of ``key`` (CRC16 of its ``{hash tag}`` if it has one), via redis-py."""
        return key_slot(key.encode() if isinstance(key, str) else key)

    def primary_for_slot(self, slot: int) -> LocalNode:
        """The node that owns ``slot`` now."""
        if not 0 <= slot < SLOTS:
            raise ConfigError("slot", slot, f"0..{SLOTS - 1}")
        for v in self.nodes():
            if v.role == "primary" and v.owns(slot):
                return self._by_id(v.node_id)
        raise ClusterError(f"slot {slot} has no owner")

    def primary_for_key(self, key: str | bytes) -> LocalNode:
        """The node that owns the slot of ``key``."""
        return self.primary_for_slot(self.key_slot(key))

    def wait_settled(self, timeout: float = 15.0, *, also: Callable[[], str | None] | None = None) -> None:
        """Wait until every live node is ``ok`` and agrees on slots and roles (see ``cluster_view``).

        ``also`` may add a condition: it returns ``None`` when met, else what is still wrong.
        Raises :class:`ClusterError` with what was still wrong at the deadline.
        """
        deadline = time.monotonic() + timeout
        while True:
            problems = self._settle_problems()
            if not problems and also is not None:
                extra = also()
                problems = [extra] if extra else []
            if not problems:
                return
            if time.monotonic() >= deadline:
                raise ClusterError(f"cluster did not settle within {timeout} s: " + "; ".join(problems[:6]))
            time.sleep(_POLL_S)

    # ---- faults --------------------------------------------------------------------------

    def kill(self, node: LocalNode) -> None:
        """SIGKILL ``node`` and return at once (the cluster notices after the node timeout)."""
        with self._lock:
            node.server.kill()

    def kill_primary(self, primary: LocalNode, timeout: float = 20.0) -> LocalNode:
        """SIGKILL ``primary``; return its replica once that owns the slots and the cluster settled."""
        with self._lock:
            slots, replicas = self._takeover_plan(primary, "kill_primary")
            primary.server.kill()
            return self._wait_promoted(primary, slots, replicas, timeout, "kill_primary")

    def pause(self, node: LocalNode) -> None:
        """SIGSTOP ``node`` and return at once: it hangs with its sockets open."""
        with self._lock:
            node.server.pause()

    def pause_primary(self, primary: LocalNode, timeout: float = 20.0) -> LocalNode:
        """SIGSTOP ``primary``; return its replica once that owns the slots and the cluster settled.

        :meth:`resume` brings the old primary back; it then learns it lost its slots and
        becomes a replica of the new owner.
        """
        with self._lock:
            slots, replicas = self._takeover_plan(primary, "pause_primary")
            primary.server.pause()
            return self._wait_promoted(primary, slots, replicas, timeout, "pause_primary")

    def resume(self, node: LocalNode, timeout: float = 20.0) -> None:
        """SIGCONT ``node`` and wait until it rejoined and the cluster settled."""
        with self._lock:
            node.server.resume()
            self._wait(timeout, "resume", node)

    def failover(
        self,
        primary: LocalNode,
        *,
        mode: FailoverMode | str = FailoverMode.GRACEFUL,
        replica: LocalNode | None = None,
        timeout: float = 20.0,
    ) -> LocalNode:
        """``CLUSTER FAILOVER [FORCE|TAKEOVER]`` on a replica of ``primary``: returns it once it owns them.

        ``replica`` defaults to the first replica of ``primary``. ``graceful`` needs the
        primary up; ``force`` and ``takeover`` also work with it down or paused.
        """
        with self._lock:
            chosen_mode = FailoverMode(mode)
            slots, replicas = self._takeover_plan(primary, "failover")
            target = replica or replicas[0]
            if target not in replicas:
                raise ClusterError(f"failover: {target.name} does not replicate {primary.name}")
            args = ["CLUSTER", "FAILOVER"] + (
                [] if chosen_mode is FailoverMode.GRACEFUL else [chosen_mode.upper()]
            )
            step = f"failover {chosen_mode}"
            deadline = time.monotonic() + timeout
            # A manual failover the primaries refuse to vote for is dropped after its timeout
            # (5 s), never retried: Redis 6.2 votes for a shard's replicas once per 2x the node
            # timeout, so a second failover of a shard within that fails. Ask again until the deadline.
            while True:
                target.command(*args, step="failover")
                attempt = min(_MANUAL_FAILOVER_S, max(1.0, deadline - time.monotonic()))
                try:
                    return self._wait_promoted(primary, slots, [target], attempt, step)
                except ClusterError:
                    if time.monotonic() >= deadline:
                        raise

    def restart(
        self,
        node: LocalNode,
        *,
        keep_data: bool = False,
        allow_failover: bool = False,
        timeout: float = 20.0,
    ) -> None:
        """Crash ``node`` (SIGKILL, if running) and start it again; wait until the cluster settled.

        The node keeps its ``nodes.conf``, so it rejoins with its id and its view of the
        cluster. ``keep_data=False`` deletes its RDB first: it comes back **empty**. What
        that means depends on its role:

        * a replica resyncs from its primary: nothing is lost;
        * a primary comes back owning its slots with no keys, and its replicas resync from
          it, emptying themselves: every key of its slots is lost cluster-wide (the cluster
          form of a single server's restart-empty). Unless ``allow_failover``, its replicas
          are told ``cluster-replica-no-failover yes`` for the restart, so this is the outcome
          however slow the restart; with ``allow_failover`` a replica may win the race and
          the node returns as its replica, with the data.

        A node that is down (killed) is started, with the same rules.
        """
        with self._lock:
            blocked = []
            if not allow_failover and node._node_id and self._is_primary_now(node):
                blocked = [r for r in self.replicas_of(node) if r.up]
            for replica in blocked:
                replica.command("CONFIG", "SET", "cluster-replica-no-failover", "yes", step="restart")
            try:
                node.server.kill()
                try:
                    node.server.restart(keep_data=keep_data)
                except RedisServerError as exc:
                    raise ClusterError(f"restart: {node.name} did not start again: {exc}") from exc
                self._wait(timeout, "restart", node)
            finally:
                for replica in blocked:
                    if replica.up:
                        replica.command("CONFIG", "SET", "cluster-replica-no-failover", "no", step="restart")

    def move_slot(self, slot: int, to_primary: LocalNode, *, batch: int = 100, timeout: float = 30.0) -> int:
        """Move ``slot`` to ``to_primary`` while clients keep using it; return how many keys moved.

        The classic live resharding (as ``valkey-cli --cluster reshard`` does it): ``CLUSTER
        SETSLOT IMPORTING`` on the destination, ``MIGRATING`` on the source, then ``MIGRATE
        ... KEYS`` in batches of ``batch`` keys until the source has none left (meanwhile the
        source answers ``ASK`` for keys it no longer has, and ``TRYAGAIN`` to a multi-key
        command whose keys are split), then ``SETSLOT NODE`` on the destination, the source
        and every other primary. Returns once every live node agrees on the new owner.
        Moving a slot to the primary that already owns it does nothing and returns 0.
        """
        with self._lock:
            source = self.primary_for_slot(slot)
            if source is to_primary:
                return 0
            if not to_primary.up or not self._is_primary_now(to_primary):
                raise ClusterError(f"move_slot {slot}: {to_primary.name} is not a live primary")
            step = f"move_slot {slot} {source.name} -> {to_primary.name}"
            to_primary.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id, step=step)
            source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", to_primary.node_id, step=step)
            moved = 0
            deadline = time.monotonic() + timeout
            migrate_timeout_ms = int(min(timeout, 10.0) * 1000)
            while True:
                keys = source.command("CLUSTER", "GETKEYSINSLOT", slot, batch, step=step)
                if not keys:
                    break
                if time.monotonic() >= deadline:
                    raise ClusterError(f"{step}: keys still left on {source.name} after {timeout} s")
                # "" as the single key, then KEYS ...: the multi-key form. NOKEY means every
                # key of the batch was deleted meanwhile by a client: nothing to move.
                reply = source.command(
                    "MIGRATE", HOST, to_primary.port, "", 0, migrate_timeout_ms, "KEYS", *keys, step=step
                )
                if reply not in (b"OK", b"NOKEY", "OK", "NOKEY", True):
                    raise ClusterError(f"{step}: MIGRATE on {source.name} answered {reply!r}")
                moved += len(keys)
            # Destination first: if it then crashed, the slot would still have an owner
            # (valkey-cli's order; redis/redis#7116).
            to_primary.command("CLUSTER", "SETSLOT", slot, "NODE", to_primary.node_id, step=step)
            self._setslot_node_tolerant(source, slot, to_primary, step)
            for other in self._live_primaries():
                if other not in (source, to_primary):
                    self._setslot_node_tolerant(other, slot, to_primary, step)

            def owner_is_destination() -> str | None:
                owner = self.primary_for_slot(slot)
                return None if owner is to_primary else f"slot {slot} still owned by {owner.name}"

            self.wait_settled(max(1.0, deadline - time.monotonic()), also=owner_is_destination)
            return moved

    def move_key_slot(self, key: str | bytes, to_primary: LocalNode, **kwargs: Any) -> int:
        """:meth:`move_slot` for the slot of ``key``, e.g. ``"{pool}"`` for every key of that pool."""
        return self.move_slot(self.key_slot(key), to_primary, **kwargs)

    def kill_clients(self, node: LocalNode, client_type: str = "pubsub") -> int:
        """``CLIENT KILL TYPE <client_type>`` on ``node``; returns how many connections were closed."""
        return node.server.kill_clients(client_type)

    # ---- per-node statistics ---------------------------------------------------------

    def info(self, node: LocalNode, section: str = "default") -> dict[str, Any]:
        """``INFO <section>`` of ``node``, parsed."""
        return node.server.info(section)

    def command_stats(self, node: LocalNode) -> dict[str, int]:
        """Calls per command on ``node`` since start or :meth:`reset_stats` (includes our own polling)."""
        return node.server.command_stats()

    def reset_stats(self) -> None:
        """``CONFIG RESETSTAT`` on every live node."""
        for node in self._nodes:
            if node.up:
                node.server.reset_stats()

    # ---- internals ---------------------------------------------------------------------

    def _form(self, deadline: float) -> None:
        primaries = self._nodes[: self._primaries]
        bounds = [SLOTS * i // len(primaries) for i in range(len(primaries) + 1)]
        for i, primary in enumerate(primaries):
            primary.command("CLUSTER", "ADDSLOTS", *range(bounds[i], bounds[i + 1]), step="form")
        # Distinct epochs before meeting, so no two primaries start in a config-epoch collision.
        for epoch, node in enumerate(self._nodes, start=1):
            node.command("CLUSTER", "SET-CONFIG-EPOCH", epoch, step="form")
        first = self._nodes[0]
        for node in self._nodes[1:]:
            node.command("CLUSTER", "MEET", HOST, first.port, step="form")
        all_ids = {n.node_id for n in self._nodes}

        def everyone_knows_everyone() -> str | None:
            for node in self._nodes:
                known = {v.node_id for v in node.views() if v.healthy}
                if known != all_ids:
                    return f"{node.name} knows {len(known & all_ids)} of {len(all_ids)} nodes"
            return None

        self._poll(everyone_knows_everyone, deadline, "form: meet")
        for index, replica in enumerate(self._nodes[self._primaries :]):
            replica.command("CLUSTER", "REPLICATE", primaries[index % len(primaries)].node_id, step="form")
        self.wait_settled(max(1.0, deadline - time.monotonic()))

    def _takeover_plan(
        self, primary: LocalNode, step: str
    ) -> tuple[tuple[tuple[int, int], ...], list[LocalNode]]:
        slots = self.slots_of(primary)
        if not slots:
            raise ClusterError(f"{step}: {primary.name} owns no slots (is it a primary?)")
        replicas = [r for r in self.replicas_of(primary) if r.up]
        if not replicas:
            raise ClusterError(f"{step}: {primary.name} has no live replica to take over its slots")
        return slots, replicas

    def _wait_promoted(
        self,
        primary: LocalNode,
        slots: tuple[tuple[int, int], ...],
        candidates: list[LocalNode],
        timeout: float,
        step: str,
    ) -> LocalNode:
        first_slot = slots[0][0]

        def taken_over() -> str | None:
            owner = self.primary_for_slot(first_slot)
            if owner not in candidates:
                return f"slot {first_slot} still owned by {owner.name}"
            return None if self.slots_of(owner) == slots else f"{owner.name} owns {self.slots_of(owner)}"

        try:
            self.wait_settled(timeout, also=taken_over)
        except ClusterError as exc:
            raise ClusterError(f"{step} {primary.name}: {exc}") from exc
        return self.primary_for_slot(first_slot)

    def _wait(self, timeout: float, step: str, node: LocalNode) -> None:
        try:
            self.wait_settled(timeout)
        except ClusterError as exc:
            raise ClusterError(f"{step} {node.name}: {exc}") from exc

    def _setslot_node_tolerant(self, node: LocalNode, slot: int, owner: LocalNode, step: str) -> None:
        try:
            node.command("CLUSTER", "SETSLOT", slot, "NODE", owner.node_id, step=step)
        except ClusterError as exc:
            # valkey-cli accepts these: the node just turned replica, or its SETSLOT was
            # unblocked while replicating to its replicas; gossip carries the change anyway.
            if not any(s in str(exc) for s in _SETSLOT_ACCEPTABLE):
                raise

    def _poll(self, condition: Callable[[], str | None], deadline: float, step: str) -> None:
        while True:
            problem = condition()
            if problem is None:
                return
            if time.monotonic() >= deadline:
                raise ClusterError(f"{step}: timed out: {problem}")
            time.sleep(_POLL_S)

    def _any_live(self) -> LocalNode:
        for node in self._nodes:
            if node.up:
                return node
        raise ClusterError("no live node to ask")

    def _live_primaries(self) -> list[LocalNode]:
        return [n for n in self.primaries() if n.up]

    def _is_primary_now(self, node: LocalNode) -> bool:
        return self._view_of(node).role == "primary"

    def _view_of(self, node: LocalNode) -> NodeView:
        for v in self.nodes():
            if v.node_id == node.node_id:
                return v
        raise ClusterError(f"{node.name} is not in the cluster's view")

    def _by_id(self, node_id: str) -> LocalNode:
        for n in self._nodes:
            if n._node_id == node_id:
                return n
        raise ClusterError(f"node id {node_id} is not one of this cluster's nodes")

    def _settle_problems(self) -> list[str]:
        live = [n for n in self._nodes if n.up]
        reports: dict[str, NodeReport] = {}
        problems: list[str] = []
        for node in live:
            try:
                reports[node.node_id] = node.report()
            except (redis.RedisError, OSError) as exc:
                problems.append(f"{node.name} did not answer: {exc}")
        return problems + settle_problems(reports, [n.node_id for n in live])

    def __repr__(self) -> str:
        return f"<LocalCluster {self._binary} nodes={[n.port for n in self._nodes]}>"
