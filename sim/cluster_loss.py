"""Cluster faults that lose acknowledged writes, built on :class:`~sim.cluster_server.LocalCluster`.

A replica that lags (cut off by the network, stalled by its disk or its CPU) is what
loses writes in a failover; :func:`cut_off_replica` models that lag on a shard with
``sim.replica_lag.cut_off`` (the rule, shared with the Sentinel harness), and killing the
primary then (:func:`kill_and_promote`) loses precisely the writes acknowledged meanwhile.

Every function is synchronous and bounded by a timeout, like ``LocalCluster``'s; call
them through ``asyncio.to_thread`` from a loop.
"""

from __future__ import annotations

import time

from sim import replica_lag
from sim.cluster_server import ClusterError, LocalCluster, LocalNode

__all__ = ["cut_off_replica", "kill_and_promote", "replication_offsets", "wait_in_sync"]


def replication_offsets(cluster: LocalCluster, primary: LocalNode, replica: LocalNode) -> tuple[int, int]:
    """``(primary's master_repl_offset, replica's slave_repl_offset)`` from ``INFO replication``."""
    return replica_lag.replication_offsets(primary.server, replica.server)


def wait_in_sync(
    cluster: LocalCluster, primary: LocalNode, replica: LocalNode, timeout: float = 10.0
) -> None:
    """Wait until ``replica`` has every byte ``primary`` has sent (offsets equal)."""
    replica_lag.wait_in_sync(
        primary.server, replica.server, timeout, names=(primary.name, replica.name), error=ClusterError
    )


def cut_off_replica(cluster: LocalCluster, primary: LocalNode, *, timeout: float = 10.0) -> LocalNode:
    """Freeze ``primary``'s replica once it is in sync, and close its replication link; return it.

    From the return on, writes ``primary`` acknowledges reach no replica. Undo with
    :func:`kill_and_promote` (the replica takes over without them) or ``replica.server.resume()``
    (it reconnects and catches up: nothing lost)."""
    replicas = [r for r in cluster.replicas_of(primary) if r.up]
    if not replicas:
        raise ClusterError(f"cut_off_replica: {primary.name} has no live replica")
    replica = replicas[0]
    replica_lag.cut_off(
        primary.server, replica.server, timeout, names=(primary.name, replica.name), error=ClusterError
    )
    return replica


def kill_and_promote(
    cluster: LocalCluster, primary: LocalNode, replica: LocalNode, *, timeout: float = 20.0
) -> LocalNode:
    """SIGKILL ``primary`` and let its cut-off ``replica`` go; return once the replica owns the slots.

    The replica finds its primary gone, and after ``cluster-node-timeout`` the cluster
    promotes it with the data it had when it was cut off."""
    slots = cluster.slots_of(primary)
    if not slots:
        raise ClusterError(f"kill_and_promote: {primary.name} owns no slots")
    first = slots[0][0]
    primary.server.kill()
    replica.server.resume()

    def promoted() -> str | None:
        owner = cluster.primary_for_slot(first)
        return None if owner is replica else f"slot {first} still owned by {owner.name}"

    cluster.wait_settled(timeout, also=promoted)
    return replica


def take_over_from_frozen(
    cluster: LocalCluster, primary: LocalNode, replica: LocalNode, *, timeout: float = 10.0
) -> None:
    """Freeze ``primary`` and have its cut-off ``replica`` take its slots at once (``CLUSTER
    FAILOVER TAKEOVER``: no vote, no handshake); return as soon as the replica says it is a primary.

    Clients of the frozen primary notice only when their commands or PINGs time out, so the
    caller has those timeouts' worth of time to write to the new primary first (the writes a
    real failover's first clients make): :func:`kill_frozen` then ends the old primary."""
    primary.server.pause()
    replica.server.resume()
    replica.command("CLUSTER", "FAILOVER", "TAKEOVER", step="take_over_from_frozen")
    deadline = time.monotonic() + timeout
    while cluster.info(replica, "replication").get("role") != "master":
        if time.monotonic() >= deadline:
            raise ClusterError(f"take_over_from_frozen: {replica.name} still a replica after {timeout} s")
        time.sleep(0.002)  # poll; the deadline bounds the wait


def kill_frozen(
    cluster: LocalCluster, primary: LocalNode, replica: LocalNode, *, timeout: float = 20.0
) -> None:
    """End a primary frozen by :func:`take_over_from_frozen` and wait until the cluster agrees
    that ``replica`` owns its slots."""
    primary.server.kill()
    primary.server.resume()  # (a no-op on a dead process; keeps its bookkeeping straight)

    def everyone_agrees() -> str | None:
        views = cluster.nodes()
        owner = next((v for v in views if v.node_id == replica.node_id), None)
        return None if owner is not None and owner.role == "primary" and owner.slots else "not yet"

    cluster.wait_settled(timeout, also=everyone_agrees)
