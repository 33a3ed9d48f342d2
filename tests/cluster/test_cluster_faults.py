"""LocalCluster faults that leave a cluster short of a node or of data: one fresh cluster per test.

Writes that must survive a failover are made on one connection to the primary and
confirmed with ``WAIT 1`` (replication is asynchronous: only a write a replica
acknowledged is promised to outlive its primary).
"""

from __future__ import annotations

import pytest

from sim.cluster_server import ClusterError, LocalCluster, LocalNode
from tests.cluster.support import cluster_client, node_client


def write_replicated(primary: LocalNode, tag: str, count: int) -> list[str]:
    """``count`` keys of ``tag`` written to ``primary``, acknowledged by its replica."""
    client = node_client(primary)
    keys = [f"{tag}:n{i}" for i in range(count)]
    for k in keys:
        client.set(k, k)
    assert client.execute_command("WAIT", 1, 5000) == 1  # same connection: WAIT covers its writes
    return keys


def replica_reads(node: LocalNode, keys: list[str]) -> list[bytes | None]:
    client = node_client(node)
    client.execute_command("READONLY")
    return list(client.mget(keys))


def test_killed_primary_is_replaced_by_its_replica_and_replicated_writes_survive(
    fresh_cluster: LocalCluster,
) -> None:
    cluster = fresh_cluster
    owner = cluster.primary_for_key("{pool-k}")
    (replica,) = cluster.replicas_of(owner)
    keys = write_replicated(owner, "{pool-k}", 100)

    promoted = cluster.kill_primary(owner)
    assert promoted is replica
    assert not owner.server.running and owner.pid is None
    assert cluster.primary_for_key("{pool-k}") is replica and cluster.role(replica) == "primary"
    rc = cluster_client(cluster)
    assert rc.mget(keys) == [k.encode() for k in keys]
    rc.set("{pool-k}:after", "1")  # the new primary takes writes

    # Started again with its nodes.conf, the old primary rejoins as the new one's replica.
    cluster.restart(owner)
    assert (cluster.role(owner), cluster.replicas_of(replica)) == ("replica", [owner])
    assert replica_reads(owner, [*keys[:3], "{pool-k}:after"]) == [
        b"{pool-k}:n0",
        b"{pool-k}:n1",
        b"{pool-k}:n2",
        b"1",
    ]

    cluster.kill(owner)
    with pytest.raises(ClusterError, match=rf"kill_primary: node-{replica.index} .* has no live replica"):
        cluster.kill_primary(replica)
    assert replica.up  # refused before anything was done
    rc.close()


def test_paused_primary_is_failed_over_and_comes_back_as_a_replica(fresh_cluster: LocalCluster) -> None:
    cluster = fresh_cluster
    owner = cluster.primary_for_key("{pool-z}")
    (replica,) = cluster.replicas_of(owner)
    keys = write_replicated(owner, "{pool-z}", 50)

    promoted = cluster.pause_primary(owner)
    assert promoted is replica
    assert owner.server.paused and owner.server.running and not owner.up
    assert cluster.primary_for_key("{pool-z}") is replica
    rc = cluster_client(cluster)
    assert rc.mget(keys) == [k.encode() for k in keys]
    rc.set("{pool-z}:while-paused", "1")

    cluster.resume(owner)
    assert owner.up
    assert (cluster.role(owner), cluster.replicas_of(replica)) == ("replica", [owner])
    # It learned it lost the slot, and resynced from the new primary (the write it missed too).
    assert replica_reads(owner, ["{pool-z}:n49", "{pool-z}:while-paused"]) == [b"{pool-z}:n49", b"1"]
    rc.close()


def test_primary_restarted_empty_loses_its_slots_data_everywhere(fresh_cluster: LocalCluster) -> None:
    cluster = fresh_cluster
    owner = cluster.primary_for_key("{pool-e}")
    (replica,) = cluster.replicas_of(owner)
    # A tag whose slot another primary owns: its data must not be touched.
    other_tag = next(
        t for t in (f"{{other-{i}}}" for i in range(100)) if cluster.primary_for_key(t) is not owner
    )
    lost = write_replicated(owner, "{pool-e}", 40)
    kept = write_replicated(cluster.primary_for_key(other_tag), other_tag, 40)
    assert replica_reads(replica, lost[:1]) == [lost[0].encode()]  # the replica had it

    cluster.restart(owner)  # keep_data=False; its replica may not fail over meanwhile

    assert cluster.role(owner) == "primary" and cluster.primary_for_key("{pool-e}") is owner
    assert cluster.replicas_of(owner) == [replica]
    slot = cluster.key_slot("{pool-e}")
    assert node_client(owner).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    # The replica resynced from its empty primary: the data is gone cluster-wide.
    assert node_client(replica).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    rc = cluster_client(cluster)
    assert rc.mget(lost) == [None] * len(lost)
    assert rc.mget(kept) == [k.encode() for k in kept]
    # The failover block was lifted again.
    assert node_client(replica).config_get("cluster-replica-no-failover") == {
        "cluster-replica-no-failover": "no"
    }
    rc.close()
