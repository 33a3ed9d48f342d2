"""LocalCluster on one shared, real cluster: forming, routing, graceful failovers, a replica
restarted empty, a slot moved under writes, pub/sub per server kind, per-node statistics.

Every fault here leaves a settled cluster of 3 primaries with one replica each, so the
module shares one cluster (``cluster``); tests ask the controller who owns what now.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
import redis
import redis.asyncio.cluster as aiocluster
from redis.exceptions import ResponseError

from sim.cluster_server import ClusterError, FailoverMode, LocalCluster
from sim.cluster_view import SLOTS
from sim.redis_server import ServerBinary
from tests.cluster.support import cluster_client, node_client, raises_moved


def cluster_info(client: redis.Redis) -> dict[str, str]:
    text = client.execute_command("CLUSTER", "INFO")
    text = text.decode() if isinstance(text, bytes) else str(text)
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


def test_formed_cluster_has_three_primaries_each_with_one_replica(
    cluster: LocalCluster, server_binary: ServerBinary
) -> None:
    views = cluster.nodes()
    primaries = [v for v in views if v.role == "primary"]
    replicas = [v for v in views if v.role == "replica"]
    assert (len(primaries), len(replicas)) == (3, 3)
    assert sorted(r.primary_id or "" for r in replicas) == sorted(p.node_id for p in primaries)
    ranges = sorted(r for p in primaries for r in p.slots)
    assert ranges[0][0] == 0 and ranges[-1][1] == SLOTS - 1
    assert sum(last - first + 1 for first, last in ranges) == SLOTS
    assert all(prev[1] + 1 == nxt[0] for prev, nxt in itertools.pairwise(ranges))
    for primary in cluster.primaries():
        (replica,) = cluster.replicas_of(primary)
        assert cluster.role(replica) == "replica" and cluster.slots_of(replica) == ()
    assert cluster.startup_nodes == [("127.0.0.1", n.port) for n in cluster.all_nodes]
    assert cluster.urls == [f"redis://127.0.0.1:{n.port}/0" for n in cluster.all_nodes]
    assert len({n.server.workdir for n in cluster.all_nodes}) == 6
    for node in cluster.all_nodes:
        assert (node.server.workdir / "nodes.conf").is_file()
        info = cluster_info(node_client(node))
        assert (info["cluster_state"], info["cluster_known_nodes"], info["cluster_size"]) == ("ok", "6", "3")
        server = cluster.info(node, "server")
        name = server.get("server_name", "redis")  # Valkey names itself; Redis 6.2 does not
        assert f"{name} {server[f'{name}_version']}" == str(server_binary)
        assert server["process_id"] == node.pid and server["tcp_port"] == node.port
        assert cluster.node(node.node_id) is node and cluster.node(node.port) is node


@pytest.mark.parametrize("key", ["{pool}:n1", "{pool}", "plain-key", "{}x", "a{b}{c}", "{unclosed"])
def test_key_slot_matches_the_servers_rule(cluster: LocalCluster, key: str) -> None:
    assert cluster.key_slot(key) == node_client(cluster.all_nodes[0]).execute_command(
        "CLUSTER", "KEYSLOT", key
    )


def test_writes_through_the_cluster_client_land_on_the_slot_owner(cluster: LocalCluster) -> None:
    rc = cluster_client(cluster)
    keys = [f"{{pool-w}}:n{i}" for i in range(20)]
    for k in keys:
        rc.set(k, k)
    slot = cluster.key_slot("{pool-w}")
    owner = cluster.primary_for_key(keys[0])
    assert cluster.primary_for_slot(slot) is owner
    assert node_client(owner).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 20
    assert node_client(owner).get(keys[3]) == keys[3].encode()
    others = [p for p in cluster.primaries() if p is not owner]
    assert len(others) == 2
    for other in others:
        assert node_client(other).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        with raises_moved():
            node_client(other).get(keys[3])  # the other primaries redirect to the owner
    rc.close()


def test_graceful_forced_and_takeover_failovers_swap_roles_and_keep_writes(cluster: LocalCluster) -> None:
    rc = cluster_client(cluster)
    keys = [f"{{pool-f}}:n{i}" for i in range(50)]
    for k in keys:
        rc.set(k, k)
    first = cluster.primary_for_key("{pool-f}")
    (replica,) = cluster.replicas_of(first)
    promoted = cluster.failover(first)  # graceful: the replica catches up before it takes over
    assert promoted is replica
    assert cluster.primary_for_key("{pool-f}") is replica
    assert (cluster.role(first), cluster.replicas_of(replica)) == ("replica", [first])
    assert rc.mget(keys) == [k.encode() for k in keys]

    assert cluster.failover(replica, mode=FailoverMode.FORCE) is first
    assert (cluster.primary_for_key("{pool-f}"), cluster.role(replica)) == (first, "replica")
    assert cluster.failover(first, mode="takeover") is replica
    assert (cluster.primary_for_key("{pool-f}"), cluster.role(first)) == (replica, "replica")
    assert rc.mget(keys) == [k.encode() for k in keys]
    with pytest.raises(ValueError, match="'sideways' is not a valid FailoverMode"):
        cluster.failover(replica, mode="sideways")
    rc.close()


def test_a_replica_restarted_empty_resyncs_from_its_primary(cluster: LocalCluster) -> None:
    owner = cluster.primary_for_key("{pool-r}")
    writer = node_client(owner)
    for i in range(30):
        writer.set(f"{{pool-r}}:n{i}", i)
    assert writer.execute_command("WAIT", 1, 5000) == 1
    (replica,) = cluster.replicas_of(owner)
    old_pid = replica.pid
    cluster.restart(replica)
    assert replica.pid != old_pid and replica.up
    assert (cluster.role(replica), cluster.replicas_of(owner)) == ("replica", [replica])
    reader = node_client(replica)
    reader.execute_command("READONLY")  # a replica serves reads of its primary's slots only when asked
    assert reader.get("{pool-r}:n29") == b"29"
    assert reader.execute_command("CLUSTER", "COUNTKEYSINSLOT", cluster.key_slot("{pool-r}")) == 30


async def test_move_slot_while_a_writer_keeps_writing(cluster: LocalCluster) -> None:
    tag = "{pool-m}"
    slot = cluster.key_slot(tag)
    source = cluster.primary_for_slot(slot)
    target = next(p for p in cluster.primaries() if p is not source)
    rc = aiocluster.RedisCluster(
        startup_nodes=[aiocluster.ClusterNode(host, port) for host, port in cluster.startup_nodes]
    )
    try:
        pipe = rc.pipeline()
        for i in range(1500):
            pipe.set(f"{tag}:pre{i}", i)
        await pipe.execute()
        acked: list[str] = []
        during_move = 0
        moving = False
        stop = asyncio.Event()

        async def writer() -> None:
            nonlocal during_move
            i = 0
            while not stop.is_set():
                key = f"{tag}:w{i}"
                await rc.set(key, i)  # ASK-redirected by the source once the key is not there
                acked.append(key)
                during_move += moving
                i += 1

        async def wait_for_writes(count: int) -> None:
            deadline = time.monotonic() + 10.0
            while len(acked) < count:
                assert time.monotonic() < deadline, f"writer stalled at {len(acked)} writes"
                await asyncio.sleep(0.005)  # poll; the deadline bounds the wait

        task = asyncio.create_task(writer())
        await wait_for_writes(10)
        moving = True
        moved = await asyncio.to_thread(cluster.move_slot, slot, target, batch=50)
        moving = False
        await wait_for_writes(len(acked) + 10)  # and the writer goes on after the move
        stop.set()
        await task

        assert moved >= 1500  # every key written before the move, in 30+ MIGRATE batches
        assert during_move > 0, "no write was acknowledged while the slot moved"
        assert cluster.primary_for_slot(slot) is target
        assert node_client(target).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 1500 + len(acked)
        assert node_client(source).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        values = await rc.mget(acked)  # one slot, so one command; every acknowledged write is there
        assert values == [str(i).encode() for i in range(len(acked))]
    finally:
        await rc.aclose()
    assert cluster.move_slot(slot, target) == 0  # already there: nothing to do


def test_pubsub_per_server_kind(cluster: LocalCluster, server_binary: ServerBinary) -> None:
    """The library picks sharded or plain pub/sub from the server; pin what each kind does."""
    channel = "{pool-p}:events"
    owner = cluster.primary_for_key(channel)
    others = [p for p in cluster.primaries() if p is not owner]
    rc = cluster_client(cluster)

    # Plain PUBLISH reaches a subscriber on any node: the cluster bus broadcasts it.
    plain = node_client(others[0]).pubsub()
    plain.subscribe(channel)
    assert plain.get_message(timeout=2.0)["type"] == "subscribe"  # type: ignore[index]
    node_client(owner).publish(channel, "plain")
    assert plain.get_message(timeout=2.0)["data"] == b"plain"  # type: ignore[index]
    plain.close()

    sharded = node_client(owner).pubsub()
    if not server_binary.sharded_pubsub:
        with pytest.raises(ResponseError, match="unknown command"):
            sharded.ssubscribe(channel)
            sharded.get_sharded_message(timeout=2.0)
        sharded.close()
        rc.close()
        return
    sharded.ssubscribe(channel)
    assert sharded.get_sharded_message(timeout=2.0)["type"] == "ssubscribe"  # type: ignore[index]
    assert rc.spublish(channel, "sharded") == 1
    assert sharded.get_sharded_message(timeout=2.0)["data"] == b"sharded"  # type: ignore[index]
    with raises_moved():  # a shard channel lives on the shard that owns its slot
        elsewhere = node_client(others[0]).pubsub()
        elsewhere.ssubscribe(channel)
        elsewhere.get_sharded_message(timeout=2.0)
    # When the slot moves away, the server unsubscribes the channel's subscribers.
    cluster.move_key_slot(channel, others[0])
    message = sharded.get_sharded_message(timeout=2.0)
    assert message is not None and (message["type"], message["channel"]) == ("sunsubscribe", channel.encode())
    sharded.close()
    rc.close()


def test_kill_clients_closes_pubsub_connections_of_one_node(cluster: LocalCluster) -> None:
    first, second = cluster.primaries()[:2]
    sub = node_client(first).pubsub()
    sub.subscribe("chan")
    assert sub.get_message(timeout=2.0)["type"] == "subscribe"  # type: ignore[index]
    bystander = node_client(second).pubsub()
    bystander.subscribe("chan")
    assert bystander.get_message(timeout=2.0)["type"] == "subscribe"  # type: ignore[index]
    assert cluster.kill_clients(first, "pubsub") == 1
    with pytest.raises(redis.ConnectionError):
        sub.get_message(timeout=2.0)
    assert node_client(second).execute_command("PUBSUB", "NUMSUB", "chan") == [b"chan", 1]
    sub.close()
    bystander.close()


def test_command_stats_are_per_node(cluster: LocalCluster) -> None:
    owner = cluster.primary_for_key("{pool-s}")
    other = next(p for p in cluster.primaries() if p is not owner)
    client = node_client(owner)
    client.ping()  # connect before the reset, so connection set-up is not counted
    cluster.reset_stats()
    for i in range(3):
        client.set(f"{{pool-s}}:n{i}", i)
    assert cluster.command_stats(owner)["set"] == 3
    assert "set" not in cluster.command_stats(other)


def test_errors_name_the_node_and_the_step(cluster: LocalCluster) -> None:
    primary = cluster.primaries()[0]
    (replica,) = cluster.replicas_of(primary)
    other_replica = cluster.replicas_of(cluster.primaries()[1])[0]
    with pytest.raises(ClusterError, match=rf"kill_primary: node-{replica.index} .* owns no slots"):
        cluster.kill_primary(replica)
    with pytest.raises(ClusterError, match=rf"move_slot 0: node-{replica.index} .* is not a live primary"):
        cluster.move_slot(0, replica)
    with pytest.raises(
        ClusterError, match=rf"node-{other_replica.index} .* does not replicate node-{primary.index}"
    ):
        cluster.failover(primary, replica=other_replica)
    with pytest.raises(ValueError, match=r"slot: got 16384; allowed: 0\.\.16383"):
        cluster.primary_for_slot(SLOTS)
    with pytest.raises(ClusterError, match="no node 'nope'"):
        cluster.node("nope")
    with pytest.raises(ValueError, match="primaries: got 0"):
        LocalCluster(primaries=0)
    assert replica.up and cluster.role(replica) == "replica"  # nothing was done to it
