"""The read path of LocklessRegistry against a real redis-server (DESIGN.md sections 4 and 6).

What reaches Redis is counted by the server itself (``INFO commandstats`` deltas), so
"an L1 hit sends nothing" and "concurrent misses share one read" are checked where
they matter. To make the cache stale on purpose, the registry's event subscription
goes through a FaultProxy that is blackholed (bytes are held, then released in order)
while its commands go straight to the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from lockless.clock import ManualClock
from lockless.config import CacheConfig, NodeLifecycleConfig, RedisConfig, RegistryConfig, SubscriberConfig
from lockless.core.l1 import L1Store
from lockless.core.modes import Mode
from lockless.core.snapshot import NodeSnapshot, NodeSpec, Requirements
from lockless.protocol import Heartbeat
from lockless.redis.connection import ConnectionFactory
from lockless.redis.keys import KeySpace
from lockless.redis.store import RedisStore
from lockless.registry import LocklessRegistry
from tests.support import CONNECT_TIMEOUT_S, cache_view, eventually, redis_view

POOL = "p"


def make_config(
    url: str, ns: str, *, quiet: bool = False, timeout: float = 2.0, **cache: Any
) -> RegistryConfig:
    """A registry config; ``quiet`` pushes the subscriber PING and health probe out past the test."""
    interval = 60.0 if quiet else 0.1
    return RegistryConfig(
        pools=(POOL,),
        redis=RedisConfig(
            url=url,
            namespace=ns,
            socket_timeout_s=timeout,
            connect_timeout_s=max(timeout, CONNECT_TIMEOUT_S),
            pool_timeout_s=timeout,
        ),
        nodes=NodeLifecycleConfig(dead_after_s=30.0, ttl_s=120.0),
        cache=CacheConfig(seed=1, **cache),
        subscriber=SubscriberConfig(ping_interval_s=interval, pong_timeout_s=interval, reconnect_max_s=0.2),
    )


def make_store(url: str, ns: str) -> RedisStore:
    return RedisStore(RedisConfig(url=url, namespace=ns, socket_timeout_s=2.0), NodeLifecycleConfig())


def spec(node_id: str, max_jobs: int = 4, **kwargs: Any) -> NodeSpec:
    return NodeSpec(node_id=node_id, pool=POOL, max_jobs=max_jobs, **kwargs)


class CommandCounter:
    """Calls per command on the server, from ``INFO commandstats``."""

    def __init__(self, raw: aioredis.Redis) -> None:
        self.raw = raw
        self.base: dict[str, int] = {}

    async def _now(self) -> dict[str, int]:
        stats = await self.raw.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items() if isinstance(v, dict)}

    async def start(self) -> None:
        self.base = await self._now()

    async def delta(self, *names: str) -> dict[str, int]:
        now = await self._now()
        return {name: now.get(name, 0) - self.base.get(name, 0) for name in names}


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def writer(redis_url: str, ns: str) -> AsyncIterator[RedisStore]:
    """Another writer on the same namespace (a node agent, or another scheduler instance)."""
    s = make_store(redis_url, ns)
    yield s
    await s.close()


async def write_behind_the_cache(raw: aioredis.Redis, ns: str, node_id: str, version: int = 1000) -> None:
    """A valid record and alive entry written without an event: the cache has not seen it."""
    keys = KeySpace(ns)
    fields = spec(node_id).to_hash_fields()
    fields.update(version=str(version), current_jobs="0")
    await raw.hset(keys.node(POOL, node_id), mapping=fields)
    await raw.zadd(keys.alive(POOL), {node_id: int(time.time() * 1000)})


async def until(condition: Callable[[], Any], what: str, timeout: float = 5.0) -> None:
    await eventually(condition, timeout, what)


# ======================================================================== L1 hits
async def test_l1_hits_send_nothing_to_redis(redis_url: str, ns: str, raw, writer: RedisStore) -> None:
    async with LocklessRegistry(make_config(redis_url, ns)) as registry:
        await writer.register(spec("n1"))
        await until(lambda: registry.cached(POOL, "n1") is not None, "n1 cached")
        counter = CommandCounter(raw)
        await counter.start()
        hits_before = registry.metrics()["l1_hits"]
        results = [await registry.get_node(POOL, "n1") for _ in range(1000)]
        delta = await counter.delta("hgetall", "evalsha", "hget", "hmget", "eval")
        assert delta == {"hgetall": 0, "evalsha": 0, "hget": 0, "hmget": 0, "eval": 0}
        assert registry.metrics()["l1_hits"] == hits_before + 1000
        assert registry.metrics()["misses"] == 0
        assert all(r is results[0] for r in results) and results[0].node_id == "n1"


async def test_an_expired_entry_is_read_again_once(redis_url: str, ns: str, raw, writer: RedisStore) -> None:
    clock = ManualClock()
    config = make_config(redis_url, ns, entry_ttl_s=5.0, ttl_jitter=0.0)
    async with LocklessRegistry(config, clock=clock) as registry:
        version = await writer.register(spec("n1"))
        await until(lambda: registry.cached(POOL, "n1") is not None, "n1 cached")
        counter = CommandCounter(raw)
        await counter.start()
        assert await registry.get_node(POOL, "n1") is registry.cached(POOL, "n1")  # a hit: fresh
        assert (await counter.delta("hgetall"))["hgetall"] == 0
        clock.advance(4.9)
        assert await registry.get_node(POOL, "n1") is not None
        assert (await counter.delta("hgetall"))["hgetall"] == 0  # not yet expired
        clock.advance(0.2)  # past the 5 s entry TTL (no jitter)
        nodes = [await registry.get_node(POOL, "n1") for _ in range(3)]
        assert all(n is not None and n.version == version for n in nodes)
        assert (await counter.delta("hgetall"))["hgetall"] == 1  # refreshed once, then hits again
        assert registry.metrics()["l2_reads"] == 1


# ================================================================== negative cache
async def test_reads_of_a_missing_node_reach_redis_once(redis_url: str, ns: str, raw) -> None:
    async with LocklessRegistry(make_config(redis_url, ns, negative_ttl_s=30.0)) as registry:
        counter = CommandCounter(raw)
        await counter.start()
        results = [await registry.get_node(POOL, "ghost") for _ in range(100)]
        assert results == [None] * 100
        assert (await counter.delta("hgetall"))["hgetall"] == 1
        metrics = registry.metrics()
        assert (metrics["misses"], metrics["negative_hits"], metrics["l2_reads"]) == (1, 99, 1)


async def test_a_negative_entry_expires(redis_url: str, ns: str, raw) -> None:
    async with LocklessRegistry(make_config(redis_url, ns, negative_ttl_s=0.05, ttl_jitter=0.0)) as registry:
        counter = CommandCounter(raw)
        await counter.start()
        assert await registry.get_node(POOL, "ghost") is None
        deadline = time.monotonic() + 5.0
        while (await counter.delta("hgetall"))["hgetall"] < 2:
            assert time.monotonic() < deadline, "the negative entry never expired"
            assert await registry.get_node(POOL, "ghost") is None
        assert registry.metrics()["l2_reads"] == 2


async def test_a_registration_event_clears_a_negative_entry(
    redis_url: str, ns: str, writer: RedisStore
) -> None:
    async with LocklessRegistry(make_config(redis_url, ns, negative_ttl_s=300.0)) as registry:
        assert await registry.get_node(POOL, "late") is None
        version = await writer.register(spec("late"))
        await until(lambda: registry.cached(POOL, "late") is not None, "late cached")
        node = await registry.get_node(POOL, "late")
        assert node is not None and node.version == version


# ==================================================================== single flight
async def test_concurrent_misses_share_one_redis_read(redis_url: str, ns: str, raw) -> None:
    async with LocklessRegistry(make_config(redis_url, ns)) as registry:
        await write_behind_the_cache(raw, ns, "cold")
        assert registry.cached(POOL, "cold") is None
        counter = CommandCounter(raw)
        await counter.start()
        results = await asyncio.gather(*(registry.get_node(POOL, "cold") for _ in range(50)))
        assert (await counter.delta("hgetall"))["hgetall"] == 1
        assert all(isinstance(r, NodeSnapshot) and r.version == 1000 for r in results)
        metrics = registry.metrics()
        assert metrics["singleflight_joins"] == 49
        assert (metrics["misses"], metrics["l2_reads"]) == (50, 1)
        # And the node is cached now: the next read is a hit.
        assert await registry.get_node(POOL, "cold") is results[0]
        assert (await counter.delta("hgetall"))["hgetall"] == 1


async def test_concurrent_refreshes_share_one_redis_read(redis_url: str, ns: str, raw, writer) -> None:
    async with LocklessRegistry(make_config(redis_url, ns)) as registry:
        await writer.register(spec("n1"))
        await until(lambda: registry.cached(POOL, "n1") is not None, "n1 cached")
        counter = CommandCounter(raw)
        await counter.start()
        results = await asyncio.gather(*(registry.refresh_node(POOL, "n1") for _ in range(20)))
        assert (await counter.delta("hgetall"))["hgetall"] == 1
        assert len({id(r) for r in results}) == 1
        assert registry.metrics()["singleflight_joins"] == 19


# ===================================================================== batch reads
async def test_get_nodes_batch_reads_all_misses_in_one_round_trip(
    redis_url: str, ns: str, raw, writer: RedisStore
) -> None:
    async with LocklessRegistry(make_config(redis_url, ns, quiet=True, negative_ttl_s=300.0)) as registry:
        for i in range(5):
            await writer.register(spec(f"hot{i}"))
        await until(lambda: len(registry.cached_nodes(POOL)) == 5, "hot nodes cached")
        for i in range(10):
            await write_behind_the_cache(raw, ns, f"cold{i}")
        ids = [f"hot{i}" for i in range(5)] + [f"cold{i}" for i in range(10)] + ["ghost1", "ghost2"]
        counter = CommandCounter(raw)
        await counter.start()
        trips_before = registry.metrics().histograms["redis_latency_us"].count
        out = await registry.get_nodes_batch(POOL, ids)
        assert registry.metrics().histograms["redis_latency_us"].count == trips_before + 1  # one round trip
        assert (await counter.delta("hgetall"))["hgetall"] == 12  # only the misses
        assert list(out) == ids
        assert all(out[f"hot{i}"] is registry.cached(POOL, f"hot{i}") for i in range(5))
        assert all(out[f"cold{i}"].version == 1000 for i in range(10))  # type: ignore[union-attr]
        assert out["ghost1"] is None and out["ghost2"] is None
        # Everything is known now (the ghosts negatively): a second batch sends nothing.
        again = await registry.get_nodes_batch(POOL, ids)
        assert again == out
        assert registry.metrics().histograms["redis_latency_us"].count == trips_before + 1
        assert (await counter.delta("hgetall"))["hgetall"] == 12


# ======================================================================= selection
def expected_breakdown(truth: dict[str, NodeSnapshot], req: Requirements) -> tuple[set[str], dict[str, int]]:
    """Fits and filter reasons computed from Redis truth, independently of the library."""
    fits: set[str] = set()
    reasons: dict[str, int] = {}
    for node in truth.values():
        if node.status == "draining":
            reason = "draining"
        elif node.current_jobs >= node.max_jobs:
            reason = "full"
        elif not req.labels <= node.labels:
            reason = f"missing label {min(req.labels - node.labels)}"
        elif any(node.resources.get(k, 0) < v for k, v in req.resources.items()):
            reason = f"short of {min(k for k, v in req.resources.items() if node.resources.get(k, 0) < v)}"
        else:
            fits.add(node.node_id)
            continue
        reasons[reason] = reasons.get(reason, 0) + 1
    return fits, reasons


@pytest.mark.parametrize("policy", ["power_of_two", "least_loaded"])
async def test_select_nodes_explains_what_it_filtered(
    redis_url: str, ns: str, writer: RedisStore, policy: str
) -> None:
    async with LocklessRegistry(make_config(redis_url, ns)) as registry:
        for i in range(3):
            await writer.register(spec(f"full{i}", max_jobs=1, labels={"x"}, resources={"cpu": 8}))
            await writer.job_start(POOL, f"full{i}", "j")
        for i in range(2):
            await writer.register(spec(f"drain{i}", status="draining", labels={"x"}, resources={"cpu": 8}))
        for i in range(4):
            await writer.register(spec(f"plain{i}", resources={"cpu": 8}))
        for i in range(2):
            await writer.register(spec(f"small{i}", labels={"x"}, resources={"cpu": 2}))
        await writer.register(spec("fit", labels={"x", "y"}, resources={"cpu": 8}))
        await writer.job_start(POOL, "fit", "j")
        truth = {n.node_id: n for n in (await writer.relist(POOL)).nodes}
        await until(
            lambda: (
                cache_view(registry, POOL)
                == {k: (n.version, n.current_jobs, n.status) for k, n in truth.items()}
            ),
            "the cache to match Redis",
        )

        req = Requirements(labels={"x"}, resources={"cpu": 4})
        fits, reasons = expected_breakdown(truth, req)
        assert fits == {"fit"}
        selection = await registry.select_nodes(POOL, count=2, requirements=req, policy=policy)
        assert selection.node_ids == ("fit",)
        assert selection.exhaustive and selection.considered == 12
        assert (
            dict(selection.filtered)
            == reasons
            == {
                "full": 3,
                "draining": 2,
                "missing label x": 4,
                "short of cpu": 2,
            }
        )
        assert selection.explain() == (
            "1 of 12 picked in pool 'p'; filtered: 4 missing label x, 3 full, 2 draining, 2 short of cpu"
        )

        none_fit = Requirements(labels={"z"})
        fits, reasons = expected_breakdown(truth, none_fit)
        selection = await registry.select_nodes(POOL, requirements=none_fit, policy=policy)
        assert selection.picks == () and not fits
        assert dict(selection.filtered) == reasons
        assert (
            selection.explain()
            == "0 of 12 picked in pool 'p'; filtered: 7 missing label z, 3 full, 2 draining"
        )

        # After a job finishes on a full node and a draining node comes back, the answer follows.
        await writer.job_finish(POOL, "full0", "j")
        await writer.register(spec("drain0", labels={"x"}, resources={"cpu": 8}))
        await until(lambda: registry.cached(POOL, "drain0").status == "up", "drain0 back up")  # type: ignore[union-attr]
        await until(lambda: registry.cached(POOL, "full0").current_jobs == 0, "full0 freed")  # type: ignore[union-attr]
        selection = await registry.select_nodes(POOL, count=5, requirements=req, policy=policy)
        assert set(selection.node_ids) == {"fit", "full0", "drain0"}
        assert dict(selection.filtered) == {"full": 2, "draining": 1, "missing label x": 4, "short of cpu": 2}


async def test_select_nodes_default_policy_comes_from_the_config(redis_url: str, ns: str, writer) -> None:
    async with LocklessRegistry(make_config(redis_url, ns, policy="least_loaded")) as registry:
        await writer.register(spec("a"))
        await until(lambda: registry.cached(POOL, "a") is not None, "a cached")
        assert (await registry.select_nodes(POOL)).policy == "least_loaded"
        assert (await registry.select_nodes(POOL, policy="power_of_two")).policy == "power_of_two"


# ============================================================ stale cache, placement
class StreamThroughProxy(ConnectionFactory):
    """Test seam: commands straight to the server, the event stream through a fault proxy."""

    def __init__(self, config: RedisConfig, proxy_url: str) -> None:
        super().__init__(config)
        self._via = ConnectionFactory(dataclasses.replace(config, url=proxy_url))

    async def open_stream(self):  # type: ignore[no-untyped-def]
        return await self._via.open_stream()


class HeldEvents:
    """A registry whose event subscription runs through ``proxy`` while its commands go direct."""

    def __init__(self, fault_server, proxy, ns: str) -> None:
        cfg = make_config(fault_server.url, ns, quiet=True)
        direct = RedisConfig(url=fault_server.url, namespace=ns, socket_timeout_s=2.0)
        store = RedisStore(direct, cfg.nodes, connections=StreamThroughProxy(direct, proxy.url))
        self.registry = LocklessRegistry(cfg, instance="held", store=store)
        self.proxy = proxy

    async def __aenter__(self) -> LocklessRegistry:
        await self.registry.start()
        return self.registry

    async def __aexit__(self, *exc: object) -> None:
        self.proxy.blackhole(False)
        await self.registry.close()


async def test_place_job_falls_back_when_the_first_pick_is_full_in_redis(
    fault_server, proxy, ns: str
) -> None:
    writer, rival = make_store(fault_server.url, ns), make_store(fault_server.url, ns)
    try:
        async with HeldEvents(fault_server, proxy, ns) as registry:
            await writer.register(spec("n1", max_jobs=1))
            await writer.register(spec("n2", max_jobs=1))
            await until(lambda: len(registry.cached_nodes(POOL)) == 2, "both nodes cached")
            proxy.blackhole(True)  # from here on, events are held: the cache goes stale
            taken = await rival.job_start(POOL, "n1", "rival-job")
            assert taken.admitted
            assert registry.cached(POOL, "n1").current_jobs == 0  # type: ignore[union-attr]

            placement = await registry.place_job(POOL, "job-1", policy="least_loaded")
            assert placement.placed
            assert (placement.node_id, placement.rejected) == ("n2", ("n1",))
            assert placement.reason == "admitted"
            assert placement.selection is not None and placement.selection.node_ids == ("n1", "n2")
            # The rejection told the registry n1's real count: the stale "free" view is corrected.
            n1 = registry.cached(POOL, "n1")
            assert n1 is not None and (n1.version, n1.current_jobs) == (taken.version, 1)
            n2 = registry.cached(POOL, "n2")
            assert n2 is not None and (n2.version, n2.current_jobs) == (placement.version, 1)
            assert (await registry.select_nodes(POOL)).picks == ()
            nowhere = await registry.place_job(POOL, "job-2")
            assert not nowhere.placed and nowhere.reason.startswith("0 of 2 picked")

            proxy.blackhole(False)
            truth = await redis_view(writer, POOL)
            await until(lambda: cache_view(registry, POOL) == truth, "the cache to converge on Redis")
            assert registry.mode is Mode.NORMAL
    finally:
        await writer.close()
        await rival.close()


async def test_an_admission_is_assumed_at_once_and_an_older_event_does_not_undo_it(
    fault_server, proxy, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = make_store(fault_server.url, ns)
    try:
        async with HeldEvents(fault_server, proxy, ns) as registry:
            registered = await writer.register(spec("n1", max_jobs=4))
            await until(lambda: registry.cached(POOL, "n1") is not None, "n1 cached")
            # Record every L1 apply of n1 and what L1 held right after it.
            applied: list[tuple[int, bool, NodeSnapshot | None]] = []
            real_apply = L1Store.apply

            def recording_apply(l1: L1Store, node: NodeSnapshot, now: float) -> bool:
                stored = real_apply(l1, node, now)
                applied.append((node.version, stored, registry.cached(POOL, node.node_id)))
                return stored

            monkeypatch.setattr(L1Store, "apply", recording_apply)

            proxy.blackhole(True)
            beat = await writer.heartbeat(Heartbeat(pool=POOL, node_id="n1", load=0.9))  # held event
            assert beat.changed and beat.version == registered + 1
            admission = await registry.job_start(POOL, "n1", "j1")
            assert admission.admitted and admission.version == registered + 2
            node = await registry.get_node(POOL, "n1")
            assert node is not None
            assert (node.version, node.current_jobs) == (admission.version, 1)
            assert node.load == 0.0  # built from the cached snapshot: the heartbeat has not arrived

            proxy.blackhole(False)
            await until(lambda: len(applied) >= 2, "both held events to be applied")
            (older_version, older_stored, after_older), (newer_version, newer_stored, after_newer) = applied[
                :2
            ]
            assert (older_version, older_stored) == (beat.version, False)  # the older event did not win
            assert after_older is not None and (after_older.version, after_older.current_jobs) == (
                admission.version,
                1,
            )
            assert (newer_version, newer_stored) == (admission.version, True)  # the real record retires it
            assert after_newer is not None and (after_newer.current_jobs, after_newer.load) == (1, 0.9)
            node = await registry.get_node(POOL, "n1")
            assert node is not None and (node.version, node.current_jobs, node.load) == (
                admission.version,
                1,
                0.9,
            )
    finally:
        await writer.close()


async def test_job_finish_is_assumed_at_once(redis_url: str, ns: str, writer: RedisStore) -> None:
    async with LocklessRegistry(make_config(redis_url, ns)) as registry:
        await writer.register(spec("n1"))
        await until(lambda: registry.cached(POOL, "n1") is not None, "n1 cached")
        admission = await registry.job_start(POOL, "n1", "j1")
        assert admission.admitted
        assert await registry.job_finish(POOL, "n1", "j1")
        node = await registry.get_node(POOL, "n1")
        assert node is not None and node.current_jobs == 0 and node.version == admission.version + 1
        assert not await registry.job_finish(POOL, "n1", "j1")  # idempotent


async def test_local_admissions_count_against_capacity_in_the_local_view(fault_server, ns: str) -> None:
    # In LOCAL_ONLY, job_start admits against L1 and journals; the admission must show in
    # L1 at once, or every later placement sees the node as free and admits past max_jobs.
    cfg = make_config(fault_server.url, ns, timeout=0.25)
    async with LocklessRegistry(cfg) as registry:
        await registry.register_node(spec("n1", max_jobs=1))
        await until(lambda: registry.cached(POOL, "n1") is not None, "n1 cached")
        await asyncio.to_thread(fault_server.stop)
        await until(lambda: registry.mode is Mode.LOCAL_ONLY, "LOCAL_ONLY", timeout=10.0)
        first = await registry.job_start(POOL, "n1", "a")
        assert (first.admitted, first.reason) == (True, "journaled")
        node = await registry.get_node(POOL, "n1")
        assert node is not None and node.current_jobs == 1
        assert (await registry.select_nodes(POOL)).picks == ()
        second = await registry.job_start(POOL, "n1", "b")
        assert (second.admitted, second.reason) == (False, "full")


async def test_a_registration_is_read_back_at_once_without_its_event(fault_server, proxy, ns: str) -> None:
    # Read-your-writes: with the event stream held, the registering instance still sees the node
    # (the record is read back in the registration's own round trip) and can place on it.
    async with HeldEvents(fault_server, proxy, ns) as registry:
        proxy.blackhole(True)
        version = await registry.register_node(spec("fresh", max_jobs=2))
        node = registry.cached(POOL, "fresh")
        assert node is not None and (node.version, node.max_jobs, node.current_jobs) == (version, 2, 0)
        placement = await registry.place_job(POOL, "j1")
        assert placement.node_id == "fresh"
