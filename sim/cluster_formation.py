"""Forming a local cluster from fresh nodes, with cluster commands only.

What ``valkey-cli --cluster create`` does: ``CLUSTER ADDSLOTS`` on each primary, a distinct
``CLUSTER SET-CONFIG-EPOCH`` per node, ``CLUSTER MEET`` to the first node, then, once
every node knows every other, ``CLUSTER REPLICATE`` on each replica. Every wait polls the
nodes under a deadline, never a fixed sleep; a timeout raises
:class:`~sim.cluster_node.ClusterError` saying what was still wrong.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from sim.cluster_node import HOST, ClusterError, spawn_node
from sim.cluster_topology import POLL_S, ClusterTopology
from sim.cluster_view import SLOTS
from sim.redis_server import ServerBinary

__all__ = ["form_cluster"]


def form_cluster(
    topology: ClusterTopology,
    *,
    binary: ServerBinary,
    args: Sequence[str],
    primaries: int,
    replicas_per_primary: int,
    deadline: float,
) -> None:
    """Start the nodes into ``topology.members`` (primaries first) and form them into a settled cluster.

    The slots are split evenly over the first ``primaries`` nodes; replica ``i`` follows
    primary ``i % primaries``. On failure the nodes started so far stay in
    ``topology.members``, for the caller to clean up.
    """
    count = primaries * (1 + replicas_per_primary)
    for index in range(count):
        topology.members.append(spawn_node(index, binary, args, deadline))
    nodes = topology.members
    first_primaries = nodes[:primaries]
    bounds = [SLOTS * i // len(first_primaries) for i in range(len(first_primaries) + 1)]
    for i, primary in enumerate(first_primaries):
        primary.command("CLUSTER", "ADDSLOTS", *range(bounds[i], bounds[i + 1]), step="form")
    # Distinct epochs before meeting, so no two primaries start in a config-epoch collision.
    for epoch, node in enumerate(nodes, start=1):
        node.command("CLUSTER", "SET-CONFIG-EPOCH", epoch, step="form")
    first = nodes[0]
    for node in nodes[1:]:
        node.command("CLUSTER", "MEET", HOST, first.port, step="form")
    all_ids = {n.node_id for n in nodes}

    def everyone_knows_everyone() -> str | None:
        for node in nodes:
            known = {v.node_id for v in node.views() if v.healthy}
            if known != all_ids:
                return f"{node.name} knows {len(known & all_ids)} of {len(all_ids)} nodes"
        return None

    _poll(everyone_knows_everyone, deadline, "form: meet")
    for index, replica in enumerate(nodes[primaries:]):
        replica.command(
            "CLUSTER", "REPLICATE", first_primaries[index % len(first_primaries)].node_id, step="form"
        )
    topology.wait_settled(max(1.0, deadline - time.monotonic()))


def _poll(condition: Callable[[], str | None], deadline: float, step: str) -> None:
    while True:
        problem = condition()
        if problem is None:
            return
        if time.monotonic() >= deadline:
            raise ClusterError(f"{step}: timed out: {problem}")
        time.sleep(POLL_S)
