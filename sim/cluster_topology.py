"""Who is in a local cluster and who owns what now, asked of the live nodes; and the wait for it to settle.

:class:`ClusterTopology` holds a cluster's members (the :class:`~sim.cluster_node.LocalNode`
processes, in creation order) and answers every question about them by asking the nodes
themselves: roles and slot owners change with every fault, so nothing is cached here.
:meth:`ClusterTopology.wait_settled` polls until :func:`sim.cluster_view.settle_problems`
finds nothing wrong, under a deadline, never a fixed sleep.

The cluster's formation, faults and slot moves (``sim.cluster_formation``,
``sim.cluster_faults``, ``sim.cluster_migration``) change the cluster, then ask this
object when the change has landed. :class:`~sim.cluster_server.LocalCluster` puts them
together behind one API.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from redis.crc import key_slot as crc_key_slot

from lockless import ConfigError
from sim.cluster_node import ClusterError, LocalNode
from sim.cluster_view import SLOTS, NodeReport, NodeView, SlotRange, settle_problems

__all__ = ["POLL_S", "ClusterTopology", "key_slot"]

POLL_S = 0.02
"""Poll interval of every wait on a cluster; the deadline, not this, bounds the wait."""


def key_slot(key: str | bytes) -> int:
    """The hash slot of ``key`` (CRC16 of its ``{hash tag}`` if it has one), via redis-py."""
    return crc_key_slot(key.encode() if isinstance(key, str) else key)


class ClusterTopology:
    """The members of one cluster, and what the first live one says about them now."""

    def __init__(self) -> None:
        #: Every node in creation order (the cluster's start appends, its cleanup clears).
        self.members: list[LocalNode] = []

    def node(self, which: str | int) -> LocalNode:
        """The member with this node id (``str``) or client port (``int``)."""
        for n in self.members:
            if which == (n._node_id if isinstance(which, str) else n.port):
                return n
        raise ClusterError(f"no node {which!r}; nodes: {[n.name for n in self.members]}")

    def views(self) -> list[NodeView]:
        """``CLUSTER NODES`` as the first live node sees it."""
        return self.any_live().views()

    def primaries(self) -> list[LocalNode]:
        """The members that own slots now, in creation order."""
        ids = {v.node_id for v in self.views() if v.role == "primary" and v.slots}
        return [n for n in self.members if n._node_id in ids]

    def live_primaries(self) -> list[LocalNode]:
        """:meth:`primaries` that are up (not killed, not paused)."""
        return [n for n in self.primaries() if n.up]

    def replicas_of(self, primary: LocalNode) -> list[LocalNode]:
        """The members replicating ``primary`` now, in creation order."""
        ids = {v.node_id for v in self.views() if v.primary_id == primary.node_id}
        return [n for n in self.members if n._node_id in ids]

    def view_of(self, node: LocalNode) -> NodeView:
        """How the first live node sees ``node``."""
        for v in self.views():
            if v.node_id == node.node_id:
                return v
        raise ClusterError(f"{node.name} is not in the cluster's view")

    def is_primary_now(self, node: LocalNode) -> bool:
        """Whether the first live node sees ``node`` as a primary."""
        return self.view_of(node).role == "primary"

    def slots_of(self, node: LocalNode) -> tuple[SlotRange, ...]:
        """Slot ranges ``(first, last)`` that ``node`` owns (empty for a replica)."""
        return self.view_of(node).slots

    def primary_for_slot(self, slot: int) -> LocalNode:
        """The member that owns ``slot`` now."""
        if not 0 <= slot < SLOTS:
            raise ConfigError("slot", slot, f"0..{SLOTS - 1}")
        for v in self.views():
            if v.role == "primary" and v.owns(slot):
                return self.by_id(v.node_id)
        raise ClusterError(f"slot {slot} has no owner")

    def by_id(self, node_id: str) -> LocalNode:
        """The member with this node id."""
        for n in self.members:
            if n._node_id == node_id:
                return n
        raise ClusterError(f"node id {node_id} is not one of this cluster's nodes")

    def any_live(self) -> LocalNode:
        """The first member that is up: the one every query asks."""
        for node in self.members:
            if node.up:
                return node
        raise ClusterError("no live node to ask")

    def wait_settled(self, timeout: float = 15.0, *, also: Callable[[], str | None] | None = None) -> None:
        """Wait until every live node is ``ok`` and agrees on slots and roles (see ``cluster_view``).

        ``also`` may add a condition: it returns ``None`` when met, else what is still wrong.
        Raises :class:`ClusterError` with what was still wrong at the deadline.
        """
        deadline = time.monotonic() + timeout
        while True:
            problems = self.settle_problems()
            if not problems and also is not None:
                extra = also()
                problems = [extra] if extra else []
            if not problems:
                return
            if time.monotonic() >= deadline:
                raise ClusterError(f"cluster did not settle within {timeout} s: " + "; ".join(problems[:6]))
            time.sleep(POLL_S)

    def settle_problems(self) -> list[str]:
        """What keeps the cluster from having settled now (empty once it has), as sentences."""
        live = [n for n in self.members if n.up]
        reports: dict[str, NodeReport] = {}
        problems: list[str] = []
        for node in live:
            try:
                reports[node.node_id] = node.report()
            except (redis.RedisError, OSError) as exc:
                problems.append(f"{node.name} did not answer: {exc}")
        return problems + settle_problems(reports, [n.node_id for n in live])
