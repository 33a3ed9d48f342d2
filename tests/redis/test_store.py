"""RedisStore reads, bad records and error translation, on a real redis-server.

Bad data is written with a raw client straight into the store's key space; outages are
real (a stopped, a frozen and a busy server). Every failure must surface as a
``lockless.errors`` type naming what is wrong, never as a redis-py exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from lockless.config import NodeLifecycleConfig, RedisConfig
from lockless.core.snapshot import NodeSnapshot, NodeSpec
from lockless.errors import MalformedRecord, RedisUnavailable
from lockless.protocol import Heartbeat
from lockless.redis.keys import KeySpace
from lockless.redis.store import RedisStore
from lockless.registry import LocklessRegistry
from tests.support import CONNECT_TIMEOUT_S, eventually, fast_config

POOL = "p"


def spec(node_id: str, max_jobs: int = 2) -> NodeSpec:
    return NodeSpec(node_id=node_id, pool=POOL, max_jobs=max_jobs)


def make_store(url: str, ns: str, timeout: float = 2.0) -> RedisStore:
    return RedisStore(
        RedisConfig(
            url=url,
            namespace=ns,
            socket_timeout_s=timeout,
            connect_timeout_s=max(timeout, CONNECT_TIMEOUT_S),
            pool_timeout_s=timeout,
        ),
        NodeLifecycleConfig(),
    )


@pytest.fixture
async def store(redis_url: str, ns: str) -> AsyncIterator[RedisStore]:
    s = make_store(redis_url, ns)
    yield s
    await s.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def corrupt(raw: aioredis.Redis, ns: str, node_id: str, **fields: str | None) -> None:
    """Overwrite (or with None, delete) fields of a node hash, bypassing the scripts."""
    key = KeySpace(ns).node(POOL, node_id)
    for name, value in fields.items():
        if value is None:
            await raw.hdel(key, name)
        else:
            await raw.hset(key, name, value)


# ========================================================================= reads
async def test_get_node_reads_the_record_or_none(store: RedisStore) -> None:
    assert await store.get_node(POOL, "n1") is None
    version = await store.register(NodeSpec(node_id="n1", pool=POOL, max_jobs=3, labels={"x"}, load=0.5))
    node = await store.get_node(POOL, "n1")
    assert isinstance(node, NodeSnapshot)
    assert (node.node_id, node.pool, node.version, node.max_jobs, node.current_jobs, node.load) == (
        "n1",
        POOL,
        version,
        3,
        0,
        0.5,
    )
    assert node.labels == frozenset({"x"})


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"max_jobs": "abc"}, "max_jobs"),
        ({"version": None}, "version"),
        ({"status": "gone"}, "status"),
        ({"labels": "not json"}, "labels"),
        ({"current_jobs": "-1"}, "current_jobs"),
    ],
)
async def test_a_malformed_record_raises_naming_node_and_field(
    store: RedisStore, raw: aioredis.Redis, ns: str, fields: dict[str, str | None], field: str
) -> None:
    await store.register(spec("bad"))
    await corrupt(raw, ns, "bad", **fields)
    with pytest.raises(MalformedRecord) as info:
        await store.get_node(POOL, "bad")
    assert (info.value.node_id, info.value.field) == ("bad", field)
    assert "'bad'" in str(info.value) and f"'{field}'" in str(info.value)


async def test_get_nodes_maps_only_the_bad_node_to_its_error(
    store: RedisStore, raw: aioredis.Redis, ns: str
) -> None:
    for node_id in ("a", "bad", "c"):
        await store.register(spec(node_id))
    await corrupt(raw, ns, "bad", max_jobs="abc")
    out = await store.get_nodes(POOL, ["a", "bad", "missing", "c"])
    assert list(out) == ["a", "bad", "missing", "c"]
    assert isinstance(out["a"], NodeSnapshot) and out["a"].node_id == "a"
    assert isinstance(out["c"], NodeSnapshot) and out["c"].node_id == "c"
    assert out["missing"] is None
    assert isinstance(out["bad"], MalformedRecord)
    assert (out["bad"].node_id, out["bad"].field) == ("bad", "max_jobs")
    assert await store.get_nodes(POOL, []) == {}


async def test_a_node_key_of_the_wrong_type_is_a_malformed_record(
    store: RedisStore, raw: aioredis.Redis, ns: str
) -> None:
    # A key clobbered by another program is bad data in Redis (DESIGN.md section 10), not a
    # bug in what the library sent: it must be reported like any other malformed record,
    # and must not stop the other nodes of a relist from being read.
    await store.register(spec("a"))
    await store.register(spec("bad"))
    key = KeySpace(ns).node(POOL, "bad")
    await raw.delete(key)
    await raw.set(key, "not a hash")
    with pytest.raises(MalformedRecord) as info:
        await store.get_node(POOL, "bad")
    assert info.value.node_id == "bad"
    out = await store.get_nodes(POOL, ["a", "bad"])
    assert isinstance(out["a"], NodeSnapshot) and isinstance(out["bad"], MalformedRecord)
    # relist (and so every registry start) reads the pool through the same pipeline.
    listing = await store.relist(POOL)
    assert [n.node_id for n in listing.nodes] == ["a"]
    assert [m.node_id for m in listing.malformed] == ["bad"]


async def test_pool_state_before_and_after_the_first_write(
    store: RedisStore, raw: aioredis.Redis, ns: str
) -> None:
    assert await store.pool_state(POOL) == (0, None)
    assert await store.pool_states([POOL, "other"]) == {POOL: (0, None), "other": (0, None)}
    await store.register(spec("a"))
    await store.register(spec("b"))
    seq, epoch = await store.pool_state(POOL)
    assert seq == 2 and epoch == await raw.get(KeySpace(ns).epoch(POOL))
    assert await store.pool_states([POOL, "other"]) == {POOL: (2, epoch), "other": (0, None)}
    assert await store.pools() == {POOL}


async def test_get_nodes_and_epoch_reads_the_records_with_their_pools_epoch(store: RedisStore) -> None:
    assert await store.get_nodes_and_epoch(POOL, ["a"]) == (None, {"a": None})
    await store.register(spec("a"))
    epoch, found = await store.get_nodes_and_epoch(POOL, ["a", "b"])
    assert epoch is not None and epoch == (await store.pool_state(POOL))[1]
    assert found == await store.get_nodes(POOL, ["a", "b"]) and found["b"] is None


async def test_register_many_is_one_write_per_spec_with_consecutive_versions(
    store: RedisStore, raw: aioredis.Redis, ns: str
) -> None:
    versions = await store.register_many(
        [spec(f"n{i}") for i in range(5)] + [NodeSpec(node_id="q1", pool="q", max_jobs=1)]
    )
    assert versions == [1, 2, 3, 4, 5, 1]  # each pool has its own seq
    assert await store.pools() == {POOL, "q"}
    assert await raw.xlen(KeySpace(ns).log(POOL)) == 5
    assert await store.register_many([]) == []


async def test_relist_reads_seq_and_every_alive_node_in_batches(
    store: RedisStore, raw: aioredis.Redis, ns: str
) -> None:
    for i in range(7):
        await store.register(spec(f"n{i}"))
    await store.job_start(POOL, "n3", "j1")
    await store.register(spec("bad"))
    await corrupt(raw, ns, "bad", max_jobs="abc")
    # An alive entry whose record expired (TTL) is skipped, not an error.
    await raw.zadd(KeySpace(ns).alive(POOL), {"expired": 1})
    listing = await store.relist(POOL, batch=3)
    assert listing.pool == POOL
    assert listing.seq == 9
    assert listing.epoch == await raw.get(KeySpace(ns).epoch(POOL))
    assert sorted(n.node_id for n in listing.nodes) == [f"n{i}" for i in range(7)]
    assert {n.node_id: n.current_jobs for n in listing.nodes}["n3"] == 1
    assert [(m.node_id, m.field) for m in listing.malformed] == [("bad", "max_jobs")]


async def test_relist_of_an_empty_pool(store: RedisStore) -> None:
    listing = await store.relist(POOL)
    assert (listing.seq, listing.epoch, listing.nodes, listing.malformed) == (0, None, (), ())


async def test_read_log_returns_entries_in_order_from_the_asked_seq(store: RedisStore) -> None:
    await store.register(spec("a"))
    await store.job_start(POOL, "a", "j1")
    await store.heartbeat(Heartbeat(pool=POOL, node_id="a", load=0.9))
    await store.remove(POOL, "a")
    read = await store.read_log(POOL, 2)
    assert read.complete and read.malformed == ()
    assert [(e.seq, e.op, e.node_id, e.version) for e in read.events] == [
        (2, "job_start", "a", 2),
        (3, "heartbeat", "a", 3),
        (4, "remove", "a", 4),
    ]
    assert read.events[0].record is not None and read.events[0].record.current_jobs == 1
    assert read.events[2].record is None
    assert [e.seq for e in (await store.read_log(POOL, 1, count=2)).events] == [1, 2]


async def test_read_log_is_incomplete_when_the_seq_was_trimmed_or_not_written(
    store: RedisStore, raw: aioredis.Redis, ns: str
) -> None:
    for i in range(5):
        await store.register(spec(f"n{i}"))
    assert not (await store.read_log(POOL, 6)).complete  # not written yet
    await raw.xtrim(KeySpace(ns).log(POOL), maxlen=2, approximate=False)
    trimmed = await store.read_log(POOL, 2)
    assert not trimmed.complete and trimmed.events == ()
    assert [e.seq for e in (await store.read_log(POOL, 4)).events] == [4, 5]


async def test_read_log_reports_a_malformed_entry(store: RedisStore, raw: aioredis.Redis, ns: str) -> None:
    await store.register(spec("a"))
    await raw.xadd(KeySpace(ns).log(POOL), {"e": json.dumps({"seq": 2, "op": "boom"})}, id="2-0")
    await raw.xadd(KeySpace(ns).log(POOL), {"other": "field"}, id="3-0")
    read = await store.read_log(POOL, 1)
    assert read.complete
    assert [e.seq for e in read.events] == [1]
    assert [m.field for m in read.malformed] == ["node", "event"]


async def test_ping_and_latency_metrics(store: RedisStore) -> None:
    before = store.metrics.histograms["redis_latency_us"].get_total_count()
    assert await store.ping() > 0
    assert store.metrics.histograms["redis_latency_us"].get_total_count() == before + 1


# ======================================================================== errors
async def _calls(s: RedisStore) -> list[tuple[str, Any]]:
    return [
        ("get_node", lambda: s.get_node(POOL, "n1")),
        ("get_nodes", lambda: s.get_nodes(POOL, ["n1", "n2"])),
        ("register", lambda: s.register(spec("n1"))),
        ("heartbeat_many", lambda: s.heartbeat_many([Heartbeat(pool=POOL, node_id="n1")])),
        ("job_start", lambda: s.job_start(POOL, "n1", "j")),
        ("relist", lambda: s.relist(POOL)),
        ("read_log", lambda: s.read_log(POOL, 1)),
        ("pool_states", lambda: s.pool_states([POOL])),
        ("ping", s.ping),
    ]


def _assert_translated(exc: BaseException) -> None:
    assert isinstance(exc, RedisUnavailable)
    assert not isinstance(
        exc, redis.exceptions.RedisError | ConnectionError
    )  # never redis-py's, nor the builtin
    assert isinstance(exc.__cause__, redis.exceptions.RedisError | OSError | asyncio.TimeoutError)


async def test_a_stopped_server_gives_redis_unavailable(fault_server, ns: str) -> None:
    s = make_store(fault_server.url, ns, timeout=0.25)
    try:
        await s.register(spec("n1"))  # a pooled connection exists and is about to go stale
        await asyncio.to_thread(fault_server.stop)
        for name, call in await _calls(s):
            errors = s.metrics.counters["redis_errors"]
            with pytest.raises(RedisUnavailable) as info:
                # The deadline is 20x the configured timeouts: it detects hangs, it does not time.
                await asyncio.wait_for(call(), 5.0)
            _assert_translated(info.value)
            assert s.metrics.counters["redis_errors"] == errors + 1, name
    finally:
        await s.close()


async def test_a_frozen_server_gives_redis_unavailable_after_the_socket_timeout(
    fault_server, ns: str
) -> None:
    s = make_store(fault_server.url, ns, timeout=0.25)
    try:
        await s.register(spec("n1"))
        await asyncio.to_thread(fault_server.pause)
        for _name, call in (await _calls(s))[:3]:
            with pytest.raises(RedisUnavailable) as info:
                await asyncio.wait_for(call(), 5.0)
            _assert_translated(info.value)
        await asyncio.to_thread(fault_server.resume)
        node = await asyncio.wait_for(s.get_node(POOL, "n1"), 5.0)
        assert node is not None and node.node_id == "n1"
    finally:
        await asyncio.to_thread(fault_server.resume)
        await s.close()


async def test_a_busy_server_gives_redis_unavailable(fault_server, ns: str) -> None:
    s = make_store(fault_server.url, ns, timeout=2.0)
    admin = aioredis.Redis.from_url(fault_server.url, socket_timeout=5)
    blocker = aioredis.Redis.from_url(fault_server.url, socket_timeout=30)
    try:
        await s.register(spec("n1"))
        await admin.config_set("lua-time-limit", 10)
        # A runaway script: after lua-time-limit every other client gets BUSY until it is killed.
        busy = asyncio.create_task(blocker.eval("while true do end", 0))

        async def sees_busy() -> BaseException:
            while True:
                try:
                    await s.get_node(POOL, "n1")
                except RedisUnavailable as exc:
                    return exc
                await asyncio.sleep(0.01)  # poll; the wait_for below bounds it

        exc = await asyncio.wait_for(sees_busy(), 10.0)
        _assert_translated(exc)
        assert "BUSY" in str(exc)
        await admin.script_kill()
        with contextlib.suppress(redis.exceptions.ResponseError):
            await busy
        assert (await s.get_node(POOL, "n1")) is not None
    finally:
        with contextlib.suppress(Exception):
            await admin.script_kill()
        await admin.aclose()
        await blocker.aclose()
        await s.close()


# ================================================================ via the registry
async def test_registry_get_node_raises_malformed_and_keeps_serving_others(
    redis_url: str, ns: str, raw: aioredis.Redis
) -> None:
    cfg = fast_config(redis_url, ns)
    writer = make_store(redis_url, ns)
    try:
        async with LocklessRegistry(cfg, instance="r") as registry:
            await writer.register(spec("good"))
            await eventually(lambda: registry.cached(POOL, "good") is not None, 3.0, "good cached")
            # A record written behind the cache's back (no event): read on first access.
            key = KeySpace(ns).node(POOL, "bad")
            await raw.hset(key, mapping={"version": "99", "status": "up", "max_jobs": "abc"})
            await raw.hset(key, mapping={"current_jobs": "0"})
            await raw.zadd(KeySpace(ns).alive(POOL), {"bad": 1})
            before = registry.metrics()["events_malformed"]
            with pytest.raises(MalformedRecord) as info:
                await registry.get_node(POOL, "bad")
            assert (info.value.node_id, info.value.field) == ("bad", "max_jobs")
            assert registry.metrics()["events_malformed"] == before + 1
            assert registry.cached(POOL, "bad") is None  # a guess is never cached
            good = await registry.get_node(POOL, "good")
            assert good is not None and good.node_id == "good"
            # A relist skips the bad record, counts it, and keeps every good one.
            assert await registry.relist_pool(POOL) == 1
            assert set(registry.cached_nodes(POOL)) == {"good"}
            assert registry.metrics()["events_malformed"] == before + 2
            # New writes still flow.
            await writer.register(spec("later"))
            await eventually(lambda: registry.cached(POOL, "later") is not None, 3.0, "later cached")
    finally:
        await writer.close()


async def test_registry_starts_with_a_malformed_record_in_its_pool(
    redis_url: str, ns: str, raw: aioredis.Redis
) -> None:
    writer = make_store(redis_url, ns)
    try:
        await writer.register(spec("good"))
        await writer.register(spec("bad"))
        await corrupt(raw, ns, "bad", version=None)
        async with LocklessRegistry(fast_config(redis_url, ns), instance="r") as registry:
            assert set(registry.cached_nodes(POOL)) == {"good"}
            assert registry.metrics()["events_malformed"] == 1
            selection = await registry.select_nodes(POOL)
            assert selection.node_ids == ("good",)
    finally:
        await writer.close()
