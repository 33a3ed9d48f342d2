"""Live resharding of a local cluster: one slot moved to another primary while clients keep using it.

:func:`move_slot` does what ``valkey-cli --cluster reshard`` does for one slot, with
cluster commands only, and returns once every live node agrees on the new owner (asking
the :class:`~sim.cluster_topology.ClusterTopology`, under a deadline).
"""

from __future__ import annotations

import time

from sim.cluster_node import HOST, ClusterError, LocalNode
from sim.cluster_topology import ClusterTopology

__all__ = ["move_slot"]

# Errors valkey-cli accepts from SETSLOT NODE on the source (valkey-cli.c clusterManagerMoveSlot).
_SETSLOT_ACCEPTABLE = ("only with masters", "only with primaries", "UNBLOCKED", "NOREPLICAS")


def move_slot(
    topology: ClusterTopology, slot: int, to_primary: LocalNode, *, batch: int = 100, timeout: float = 30.0
) -> int:
    """Move ``slot`` to ``to_primary`` while clients keep using it; return how many keys moved.

    The classic live resharding (as ``valkey-cli --cluster reshard`` does it): ``CLUSTER
    SETSLOT IMPORTING`` on the destination, ``MIGRATING`` on the source, then ``MIGRATE
    ... KEYS`` in batches of ``batch`` keys until the source has none left (meanwhile the
    source answers ``ASK`` for keys it no longer has, and ``TRYAGAIN`` to a multi-key
    command whose keys are split), then ``SETSLOT NODE`` on the destination, the source
    and every other primary. Returns once every live node agrees on the new owner.
    Moving a slot to the primary that already owns it does nothing and returns 0.
    The caller holds the cluster's lock.
    """
    source = topology.primary_for_slot(slot)
    if source is to_primary:
        return 0
    if not to_primary.up or not topology.is_primary_now(to_primary):
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
    _setslot_node_tolerant(source, slot, to_primary, step)
    for other in topology.live_primaries():
        if other not in (source, to_primary):
            _setslot_node_tolerant(other, slot, to_primary, step)

    def owner_is_destination() -> str | None:
        owner = topology.primary_for_slot(slot)
        return None if owner is to_primary else f"slot {slot} still owned by {owner.name}"

    topology.wait_settled(max(1.0, deadline - time.monotonic()), also=owner_is_destination)
    return moved


def _setslot_node_tolerant(node: LocalNode, slot: int, owner: LocalNode, step: str) -> None:
    try:
        node.command("CLUSTER", "SETSLOT", slot, "NODE", owner.node_id, step=step)
    except ClusterError as exc:
        # valkey-cli accepts these: the node just turned replica, or its SETSLOT was
        # unblocked while replicating to its replicas; gossip carries the change anyway.
        if not any(s in str(exc) for s in _SETSLOT_ACCEPTABLE):
            raise
