"""A real Redis Cluster on loopback, under the harness's control: 3 primaries, 3 replicas.

The single-server controller (``sim.redis_server``) models a broken Redis; this one
models a broken *cluster*: a primary killed or frozen so its replica takes over, a
graceful or forced failover, a node restarted empty, a slot moved to another primary
while clients keep writing, client connections killed. Each node is a
:class:`~sim.redis_server.RedisServer` (composed, not subclassed) running the binary
``LOCKLESS_SERVER`` names, Valkey 9 by default; Redis 6.2 (``redis``) forms clusters
too, without sharded pub/sub.

:class:`LocalCluster` is the one API; it composes a part per responsibility, each
usable and tested through it:

* ``sim.cluster_topology`` :class:`~sim.cluster_topology.ClusterTopology`: the members,
  and who owns what now, asked of the live nodes (the queries, and ``wait_settled``);
* ``sim.cluster_formation``: forming fresh nodes into a cluster with cluster commands only
  (what ``valkey-cli --cluster create`` does);
* ``sim.cluster_faults`` :class:`~sim.cluster_faults.ClusterFaults`: kills, pauses,
  restarts and failovers, each waiting for the cluster to settle in the expected shape;
* ``sim.cluster_migration``: one slot moved to another primary under load.

Every wait polls the nodes until :func:`sim.cluster_view.settle_problems` finds nothing
wrong, under a deadline, never a fixed sleep; a timeout raises :class:`ClusterError`
saying what was still wrong.

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
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from lockless import ConfigError
from sim import cluster_migration
from sim.cluster_faults import ClusterFaults, FailoverMode
from sim.cluster_formation import form_cluster
from sim.cluster_node import HOST, ClusterError, LocalNode
from sim.cluster_topology import ClusterTopology
from sim.cluster_topology import key_slot as _key_slot
from sim.cluster_view import NodeView
from sim.redis_server import ServerBinary, ServerKind, find_server

__all__ = ["ClusterError", "FailoverMode", "LocalCluster", "LocalNode"]


# Clusters started and not yet cleaned up. RedisServer's own atexit hook kills every running
# node; this one also removes the workdirs of nodes that were down at exit.
_LIVE_CLUSTERS: set[LocalCluster] = set()


@atexit.register
def _cleanup_survivors() -> None:
    for cluster in list(_LIVE_CLUSTERS):
        cluster.cleanup()


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
        # One lock for everything that changes the cluster (start, cleanup, faults, slot moves).
        self._lock = threading.RLock()
        self._topology = ClusterTopology()
        self._faults = ClusterFaults(self._topology, self._lock)

    # ---- lifecycle -----------------------------------------------------------------------

    @property
    def server(self) -> ServerBinary:
        """The binary every node runs."""
        return self._binary

    @property
    def all_nodes(self) -> list[LocalNode]:
        """Every node in creation order: primaries first as formed (roles change with faults)."""
        return list(self._topology.members)

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every node, for ``redis.cluster.ClusterNode(host, port)``."""
        return [(HOST, n.port) for n in self._topology.members]

    @property
    def urls(self) -> list[str]:
        """``redis://127.0.0.1:<port>/0`` of every node: seeds for a cluster client."""
        return [n.url for n in self._topology.members]

    def start(self, timeout: float = 30.0) -> None:
        """Start every node, form the cluster and return once it has settled."""
        with self._lock:
            if self._topology.members:
                raise ClusterError("cluster already started")
            _LIVE_CLUSTERS.add(self)
            try:
                form_cluster(
                    self._topology,
                    binary=self._binary,
                    args=self._args,
                    primaries=self._primaries,
                    replicas_per_primary=self._replicas_per_primary,
                    deadline=time.monotonic() + timeout,
                )
            except BaseException:
                self.cleanup()
                raise

    def cleanup(self) -> None:
        """Kill every node (SIGKILL: nothing to save) and remove their workdirs."""
        with self._lock:
            for node in self._topology.members:
                node.server.kill()
                node.server.cleanup()
            self._topology.members.clear()
            _LIVE_CLUSTERS.discard(self)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    # ---- what the cluster looks like (asked of ClusterTopology) --------------------------

    def node(self, which: str | int) -> LocalNode:
        """The node with this node id (``str``) or client port (``int``); ``all_nodes[i]`` by index."""
        return self._topology.node(which)

    def nodes(self) -> list[NodeView]:
        """``CLUSTER NODES`` as the first live node sees it (every live node agrees after a fault returns)."""
        return self._topology.views()

    def primaries(self) -> list[LocalNode]:
        """The nodes that own slots now, in creation order."""
        return self._topology.primaries()

    def replicas_of(self, primary: LocalNode) -> list[LocalNode]:
        """The nodes replicating ``primary`` now, in creation order."""
        return self._topology.replicas_of(primary)

    def role(self, node: LocalNode) -> str:
        """``"primary"`` or ``"replica"``, as the first live node sees ``node``."""
        return self._topology.view_of(node).role

    def slots_of(self, node: LocalNode) -> tuple[tuple[int, int], ...]:
        """Slot ranges ``(first, last)`` that ``node`` owns (empty for a replica)."""
        return self._topology.slots_of(node)

    @staticmethod
    def key_slot(key: str | bytes) -> int:
        """The hash slot of ``key`` (CRC16 of its ``{hash tag}`` if it has one), via redis-py."""
        return _key_slot(key)

    def primary_for_slot(self, slot: int) -> LocalNode:
        """The node that owns ``slot`` now."""
        return self._topology.primary_for_slot(slot)

    def primary_for_key(self, key: str | bytes) -> LocalNode:
        """The node that owns the slot of ``key``."""
        return self._topology.primary_for_slot(_key_slot(key))

    def wait_settled(self, timeout: float = 15.0, *, also: Callable[[], str | None] | None = None) -> None:
        """Wait until every live node is ``ok`` and agrees on slots and roles (see ``cluster_view``).

        ``also`` may add a condition: it returns ``None`` when met, else what is still wrong.
        Raises :class:`ClusterError` with what was still wrong at the deadline.
        """
        self._topology.wait_settled(timeout, also=also)

    # ---- faults (done by ClusterFaults) --------------------------------------------------

    def kill(self, node: LocalNode) -> None:
        """SIGKILL ``node`` and return at once (the cluster notices after the node timeout)."""
        self._faults.kill(node)

    def kill_primary(self, primary: LocalNode, timeout: float = 20.0) -> LocalNode:
        """SIGKILL ``primary``; return its replica once that owns the slots and the cluster settled."""
        return self._faults.kill_primary(primary, timeout)

    def pause(self, node: LocalNode) -> None:
        """SIGSTOP ``node`` and return at once: it hangs with its sockets open."""
        self._faults.pause(node)

    def pause_primary(self, primary: LocalNode, timeout: float = 20.0) -> LocalNode:
        """SIGSTOP ``primary``; return its replica once that owns the slots and the cluster settled.

        :meth:`resume` brings the old primary back; it then learns it lost its slots and
        becomes a replica of the new owner.
        """
        return self._faults.pause_primary(primary, timeout)

    def resume(self, node: LocalNode, timeout: float = 20.0) -> None:
        """SIGCONT ``node`` and wait until it rejoined and the cluster settled."""
        self._faults.resume(node, timeout)

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
        return self._faults.failover(primary, mode=mode, replica=replica, timeout=timeout)

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
        self._faults.restart(node, keep_data=keep_data, allow_failover=allow_failover, timeout=timeout)

    def kill_clients(self, node: LocalNode, client_type: str = "pubsub") -> int:
        """``CLIENT KILL TYPE <client_type>`` on ``node``; returns how many connections were closed."""
        return self._faults.kill_clients(node, client_type)

    # ---- slot migration (done by cluster_migration) --------------------------------------

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
            return cluster_migration.move_slot(self._topology, slot, to_primary, batch=batch, timeout=timeout)

    def move_key_slot(self, key: str | bytes, to_primary: LocalNode, **kwargs: Any) -> int:
        """:meth:`move_slot` for the slot of ``key``, e.g. ``"{pool}"`` for every key of that pool."""
        return self.move_slot(self.key_slot(key), to_primary, **kwargs)

    # ---- per-node statistics -------------------------------------------------------------

    def info(self, node: LocalNode, section: str = "default") -> dict[str, Any]:
        """``INFO <section>`` of ``node``, parsed."""
        return node.server.info(section)

    def command_stats(self, node: LocalNode) -> dict[str, int]:
        """Calls per command on ``node`` since start or :meth:`reset_stats` (includes our own polling)."""
        return node.server.command_stats()

    def reset_stats(self) -> None:
        """``CONFIG RESETSTAT`` on every live node."""
        for node in self._topology.members:
            if node.up:
                node.server.reset_stats()

    def __repr__(self) -> str:
        return f"<LocalCluster {self._binary} nodes={[n.port for n in self._topology.members]}>"
