"""Faults on a local cluster: a node killed, frozen, resumed or restarted (maybe empty), a failover.

:class:`ClusterFaults` does each fault to the nodes of a
:class:`~sim.cluster_topology.ClusterTopology`, then waits (polling, under a deadline)
until the topology says the cluster has settled in the expected shape: the replica that
took over owns exactly the old primary's slots, a restarted node has rejoined. A timeout
raises :class:`~sim.cluster_node.ClusterError` naming the fault, the node and what was
still wrong. Faults hold the cluster's lock, so faults from several threads run one at a time.
"""

from __future__ import annotations

import enum
import threading
import time

from sim.cluster_node import ClusterError, LocalNode
from sim.cluster_topology import ClusterTopology
from sim.cluster_view import SlotRange
from sim.redis_server import RedisServerError

__all__ = ["ClusterFaults", "FailoverMode"]

#: How long a manual failover may take before it is asked again (the server gives up after 5 s).
_MANUAL_FAILOVER_S = 6.0


class FailoverMode(enum.StrEnum):
    """How :meth:`LocalCluster.failover` asks a replica to take over (``CLUSTER FAILOVER``)."""

    GRACEFUL = "graceful"
    """The primary stops writes, the replica catches up, then takes over: no acknowledged write lost."""
    FORCE = "force"
    """No handshake with the primary (it may be down), but an election among the primaries."""
    TAKEOVER = "takeover"
    """No handshake and no election: the replica bumps its epoch and claims the slots alone."""


class ClusterFaults:
    """The faults of one cluster, done to ``topology``'s nodes under ``lock``."""

    def __init__(self, topology: ClusterTopology, lock: threading.RLock) -> None:
        self._topology = topology
        self._lock = lock

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
        """SIGSTOP ``primary``; return its replica once that owns the slots (see ``LocalCluster``)."""
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
        """``CLUSTER FAILOVER [FORCE|TAKEOVER]`` on a replica of ``primary``; returns it once it owns them."""
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
        """Crash ``node`` and start it again, empty unless ``keep_data`` (:meth:`LocalCluster.restart`)."""
        with self._lock:
            # A primary's replicas may not take over while it restarts (unless allowed), so an
            # empty restart loses its slots' keys however slow the restart is.
            blocked = []
            if not allow_failover and node._node_id and self._topology.is_primary_now(node):
                blocked = [r for r in self._topology.replicas_of(node) if r.up]
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

    def kill_clients(self, node: LocalNode, client_type: str = "pubsub") -> int:
        """``CLIENT KILL TYPE <client_type>`` on ``node``; returns how many connections were closed."""
        return node.server.kill_clients(client_type)

    # ---- internals ---------------------------------------------------------------------

    def _takeover_plan(self, primary: LocalNode, step: str) -> tuple[tuple[SlotRange, ...], list[LocalNode]]:
        # What a takeover must end in (the primary's slots) and who may take over (its live
        # replicas), checked before the fault so a refused fault leaves the cluster untouched.
        slots = self._topology.slots_of(primary)
        if not slots:
            raise ClusterError(f"{step}: {primary.name} owns no slots (is it a primary?)")
        replicas = [r for r in self._topology.replicas_of(primary) if r.up]
        if not replicas:
            raise ClusterError(f"{step}: {primary.name} has no live replica to take over its slots")
        return slots, replicas

    def _wait_promoted(
        self,
        primary: LocalNode,
        slots: tuple[SlotRange, ...],
        candidates: list[LocalNode],
        timeout: float,
        step: str,
    ) -> LocalNode:
        topology = self._topology
        first_slot = slots[0][0]

        def taken_over() -> str | None:
            owner = topology.primary_for_slot(first_slot)
            if owner not in candidates:
                return f"slot {first_slot} still owned by {owner.name}"
            return (
                None if topology.slots_of(owner) == slots else f"{owner.name} owns {topology.slots_of(owner)}"
            )

        try:
            topology.wait_settled(timeout, also=taken_over)
        except ClusterError as exc:
            raise ClusterError(f"{step} {primary.name}: {exc}") from exc
        return topology.primary_for_slot(first_slot)

    def _wait(self, timeout: float, step: str, node: LocalNode) -> None:
        try:
            self._topology.wait_settled(timeout)
        except ClusterError as exc:
            raise ClusterError(f"{step} {node.name}: {exc}") from exc
