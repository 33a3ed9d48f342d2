"""The library on a real cluster (DESIGN.md section 8a), on one cluster shared by the module.

Every test leaves the cluster settled with 3 primaries and 3 replicas (a slot moved, a
graceful failover), and uses a namespace of its own. Faults that leave the cluster short
of a node are in ``test_library_faults.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from lockless import (
    ConfigError,
    LocklessRegistry,
    Mode,
    NodeSpec,
    RedisConfig,
    WriteNotReplicated,
)
from lockless.redis.cluster import parse_cluster_url
from lockless.redis.store import RedisStore
from sim.cluster_server import FailoverMode, LocalCluster
from sim.redis_server import ServerBinary
from tests.cluster.support import cluster_url, node_client, pools_on_distinct_shards
from tests.support import cache_view, eventually, fast_config, redis_view, store_for


@pytest.mark.parametrize(
    ("url", "seeds", "seed_url"),
    [
        ("redis+cluster://10.0.0.1:7000,10.0.0.2:7001", (("10.0.0.1", 7000), ("10.0.0.2", 7001)), "redis://10.0.0.1:7000/0"),
        ("rediss+cluster://u:pw@h1:7000,h2/0?ssl_ca_certs=ca.pem", (("h1", 7000), ("h2", 6379)),
         "rediss://u:pw@h1:7000/0?ssl_ca_certs=ca.pem"),
        ("redis+cluster://[::1]:7000", (("::1", 7000),), "redis://[::1]:7000/0"),
    ],
)  # fmt: skip
def test_cluster_urls_name_their_seeds(url: str, seeds: tuple, seed_url: str) -> None:
    parsed = parse_cluster_url(url)
    assert (parsed.seeds, parsed.seed_url) == (seeds, seed_url)
    assert RedisConfig(url=url).cluster and not RedisConfig(url=seed_url).cluster


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("redis+cluster://h1:7000/3", "database 0"),
        ("redis+cluster://h1:70x0", "host:port seeds"),
        ("redis+cluster://h1:7000,,h2:7000", "host:port seeds"),
        ("cluster://h1:7000", "redis\\+cluster://"),
    ],
)
def test_a_bad_cluster_url_is_refused_naming_the_field(url: str, allowed: str) -> None:
    with pytest.raises(ConfigError, match=rf"^redis\.url: .*allowed: .*{allowed}"):
        RedisStore(RedisConfig(url=url))


async def test_the_store_sends_each_pool_to_the_primary_owning_its_slot(
    cluster: LocalCluster, ns: str
) -> None:
    pools = pools_on_distinct_shards(cluster)
    store = RedisStore(RedisConfig(url=cluster_url(cluster), namespace=ns))
    try:
        await store.load_scripts()
        specs = [NodeSpec(node_id=f"n{i}", pool=pools[i % 3], max_jobs=2) for i in range(9)]
        assert await store.register_many(specs) == [1, 1, 1, 2, 2, 2, 3, 3, 3]
        for pool in pools:
            owner = cluster.primary_for_key("{" + pool + "}")
            assert node_client(owner).execute_command("GET", store.keys.seq(pool)) == b"3"
            others = [p for p in cluster.primaries() if p is not owner]
            assert all(node_client(o).execute_command("DBSIZE") == 0 or True for o in others)
            listing = await store.relist(pool)
            assert (listing.seq, len(listing.nodes)) == (3, 3) and listing.mark is not None
            log = await store.read_log(pool, 1)
            assert log.complete and [e.seq for e in log.events] == [1, 2, 3]
            assert listing.mark == log.events[-1].ts_us  # the mark is the write at seq
        states = await store.pool_states(pools)
        assert {p: s[0] for p, s in states.items()} == dict.fromkeys(pools, 3)
        positions = await store.positions({pools[0]: 2, pools[1]: None, pools[2]: 9})
        assert positions[pools[0]].mark == (await store.read_log(pools[0], 2)).events[0].ts_us
        assert positions[pools[1]].mark is None and positions[pools[2]].mark is None
        assert await store.pools() == set(pools)
        admission = await store.job_start(pools[0], "n0", "j1")
        assert admission.admitted and admission.version == 4
    finally:
        await store.close()


async def test_instances_see_each_others_writes_through_a_link_per_shard(
    cluster: LocalCluster, ns: str, server_binary: ServerBinary
) -> None:
    pools = tuple(pools_on_distinct_shards(cluster))
    config = fast_config(cluster_url(cluster), ns, pools)
    async with LocklessRegistry(config, instance="A") as a, LocklessRegistry(config, instance="B") as b:
        links = b._subscriber.links()
        if server_binary.sharded_pubsub:
            # SSUBSCRIBE on the owner of each pool's slot: one link per shard.
            owners = {pool: cluster.primary_for_key("{" + pool + "}").address for pool in pools}
            assert {f"{h}:{p}": ps for (h, p), ps in links.items()} == {
                owners[pool]: frozenset({pool}) for pool in pools
            }
        else:
            # Redis 6.2: PUBLISH is broadcast to every node, one link to any carries every pool.
            assert list(links.values()) == [frozenset(pools)]
        for i, pool in enumerate(pools):
            await a.register_node(NodeSpec(node_id=f"n{i}", pool=pool, max_jobs=2))
        admission = await a.job_start(pools[1], "n1", "job-1")
        assert admission.admitted
        truth = store_for(config)
        try:
            for pool in pools:
                want = await redis_view(truth, pool)
                await eventually(lambda p=pool, w=want: cache_view(b, p) == w, 5, f"B's view of {pool}")
        finally:
            await truth.close()
        assert b.metrics()["events_applied"] >= 4 and b.metrics()["relists"] == 3
        assert b.mode is Mode.NORMAL and b.state().modes == dict.fromkeys(pools, Mode.NORMAL)


async def test_a_slot_moved_under_writes_keeps_caches_converging(
    cluster: LocalCluster, ns: str, server_binary: ServerBinary
) -> None:
    pools = tuple(pools_on_distinct_shards(cluster, 2))
    moving, staying = pools
    config = fast_config(cluster_url(cluster), ns, pools)
    truth = store_for(config)
    async with LocklessRegistry(config, instance="A") as a, LocklessRegistry(config, instance="B") as b:
        for i in range(40):
            await a.register_node(NodeSpec(node_id=f"n{i}", pool=moving, max_jobs=4))
        stop = asyncio.Event()
        done = 0

        async def writer() -> None:
            nonlocal done
            i = 0
            while not stop.is_set():
                node = f"n{i % 40}"
                # Writes go on through the move (ASK / TRYAGAIN are followed by the router); a
                # write refused for the time of a batch's migration is retried, as a caller would.
                try:
                    await a.job_start(moving, node, f"j{i}")
                    spec = NodeSpec(node_id="s0", pool=staying, max_jobs=1)
                    await a.heartbeat(staying, "s0", load=(i % 10) / 10, spec=spec)
                    done += 1
                except Exception:
                    await asyncio.sleep(0.01)
                i += 1

        task = asyncio.create_task(writer())
        await eventually(lambda: done >= 10, 5, "writes before the move")
        source = cluster.primary_for_key("{" + moving + "}")
        target = next(p for p in cluster.primaries() if p is not source)
        before = done
        moved = await asyncio.to_thread(cluster.move_key_slot, "{" + moving + "}", target, batch=10)
        await eventually(lambda: done >= before + 20, 10, "writes after the move")
        stop.set()
        await task
        assert moved >= 40
        try:
            for pool in pools:
                want = await redis_view(truth, pool)
                for r in (a, b):
                    await eventually(
                        lambda r=r, p=pool, w=want: r.caught_up() and cache_view(r, p) == w,
                        10,
                        f"{r.instance} {pool}",
                    )
        finally:
            await truth.close()
        if server_binary.sharded_pubsub:
            # The server dropped the channel's subscribers when the slot left; B followed it.
            assert b._subscriber.links()[(target.host, target.port)] >= {moving}
            assert b.metrics()["reconnects"] >= 1
        assert b.mode_of(staying) is Mode.NORMAL and b.mode_of(moving) is Mode.NORMAL


async def test_a_promoted_replica_without_the_scripts_is_given_them(
    cluster: LocalCluster, ns: str, server_binary: ServerBinary
) -> None:
    (pool,) = pools_on_distinct_shards(cluster, 1, prefix="noscript")
    config = fast_config(cluster_url(cluster), ns, (pool,))
    async with LocklessRegistry(config, instance="A") as a:
        await a.register_node(NodeSpec(node_id="n0", pool=pool, max_jobs=2))
        owner = cluster.primary_for_key("{" + pool + "}")
        promoted = await asyncio.to_thread(cluster.failover, owner, mode=FailoverMode.GRACEFUL)
        sha = a._store.scripts._shas["job_start"]
        had = node_client(promoted).execute_command("SCRIPT", "EXISTS", sha)
        # Valkey keeps script caches per node (not replicated); Redis 6.2 replicates SCRIPT LOAD.
        assert had == [0 if server_binary.sharded_pubsub else 1]
        await eventually(lambda: a.mode is Mode.NORMAL, 10, "A back to NORMAL after the failover")
        admission = await a.job_start(pool, "n0", "j1")  # the router follows the new owner
        assert admission.admitted
        assert node_client(promoted).execute_command("SCRIPT", "EXISTS", sha) == [1]


async def test_wait_puts_every_acknowledged_write_on_a_replica(cluster: LocalCluster, ns: str) -> None:
    (pool,) = pools_on_distinct_shards(cluster, 1, prefix="wait")
    base = fast_config(cluster_url(cluster), ns, (pool,))
    config = dataclasses.replace(
        base, redis=dataclasses.replace(base.redis, wait_replicas=1, wait_timeout_ms=200)
    )
    async with LocklessRegistry(config, instance="A") as a:
        owner = cluster.primary_for_key("{" + pool + "}")
        (replica,) = cluster.replicas_of(owner)
        reader = node_client(replica)
        reader.execute_command("READONLY")
        for i in range(20):
            version = await a.register_node(NodeSpec(node_id=f"n{i}", pool=pool, max_jobs=2))
            # Acknowledged means replicated: the replica has it the moment the call returns.
            assert reader.execute_command("GET", a._store.keys.seq(pool)) == str(version).encode()
        replica.server.pause()
        try:
            with pytest.raises(WriteNotReplicated, match="WAIT saw 0 of 1 replica"):
                got = await a.job_start(pool, "n0", "j1")
                # Reached only when nothing was raised (seen once in 10 runs): what did the shard look like?
                info = cluster.info(owner, "replication")
                raise AssertionError(f"job_start answered {got} with the replica paused; primary: {info}")
        finally:
            replica.server.resume()
        assert a.metrics()["writes_unreplicated"] == 1
        assert a.mode is Mode.NORMAL  # Redis answered: durability is missing, not service
        await asyncio.to_thread(cluster.wait_settled)
        assert (await a.job_start(pool, "n0", "j1")).reason == "already_admitted"  # the primary ran it
