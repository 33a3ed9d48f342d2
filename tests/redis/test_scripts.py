"""The Lua write path on a real redis-server (DESIGN.md sections 2-3).

Each mutation must be atomic: the node record, the pool ``seq``, the log entry
``<seq>-0`` and the published document all describe the same change. A raw pub/sub
subscription is opened *before* each mutation, so the published document can be
compared with the log entry and the record. Absence of an event is checked without
sleeping: a later marker mutation must be the very next message, with the next seq.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from lockless.config import NodeLifecycleConfig, RedisConfig
from lockless.core.snapshot import NodeSpec, parse_event, parse_node_hash
from lockless.protocol import Heartbeat
from lockless.redis import scripts
from lockless.redis.keys import KeySpace
from lockless.redis.scripts import jobs_digest
from lockless.redis.store import RedisStore
from sim.redis_server import RedisServer
from tests.support import eventually_async

POOL = "p"
TTL_MS = 60_000
#: What EVALSHA calls every script by.
SHAS = [hashlib.sha1(body.encode()).hexdigest() for body in scripts.ALL.values()]


def spec(node_id: str = "n1", max_jobs: int = 4, **kwargs: Any) -> NodeSpec:
    return NodeSpec(
        node_id=node_id, pool=POOL, max_jobs=max_jobs, resources={"cpu": 8}, labels={"m"}, **kwargs
    )


def make_store(url: str, ns: str, **lifecycle: Any) -> RedisStore:
    lifecycle.setdefault("ttl_s", TTL_MS / 1000)
    return RedisStore(
        RedisConfig(url=url, namespace=ns, socket_timeout_s=2.0, connect_timeout_s=2.0, pool_timeout_s=2.0),
        NodeLifecycleConfig(**lifecycle),
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


class Events:
    """A raw subscription to one pool's channel, open before the mutations under test."""

    def __init__(self, raw: aioredis.Redis, channel: str) -> None:
        self.pubsub = raw.pubsub()
        self.channel = channel

    async def __aenter__(self) -> Events:
        await self.pubsub.subscribe(self.channel)
        confirmed = await self.pubsub.get_message(timeout=5.0)
        assert confirmed is not None and confirmed["type"] == "subscribe"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pubsub.aclose()

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next published document, parsed as JSON; fails after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
            if message is not None and message["type"] == "message":
                doc = json.loads(message["data"])
                doc["_raw"] = message["data"]
                return doc
        raise AssertionError(f"no event on {self.channel} within {timeout} s")


def events(raw: aioredis.Redis, ns: str) -> Events:
    return Events(raw, KeySpace(ns).events(POOL))


async def seq_of(raw: aioredis.Redis, ns: str) -> int:
    return int(await raw.get(KeySpace(ns).seq(POOL)) or 0)


async def log_len(raw: aioredis.Redis, ns: str) -> int:
    return int(await raw.xlen(KeySpace(ns).log(POOL)))


async def assert_one_mutation(
    raw: aioredis.Redis, ns: str, doc: dict[str, Any], *, op: str, node_id: str, version: int
) -> None:
    """Record, seq, log and the published document all reflect the same single mutation."""
    keys = KeySpace(ns)
    assert doc["op"] == op and doc["node"] == node_id and doc["pool"] == POOL
    assert doc["seq"] == doc["version"] == version == await seq_of(raw, ns)
    assert doc["epoch"] == await raw.get(keys.epoch(POOL)) and doc["epoch"]
    # Publication time in us, at or after the script's ms timestamp, and not in the future.
    seconds, micros = await raw.time()
    assert doc["ts"] * 1000 <= int(doc["ts_us"]) <= seconds * 1_000_000 + micros
    entries = await raw.xrange(keys.log(POOL), min=f"{version}-0", max=f"{version}-0")
    assert entries == [(f"{version}-0", {"e": doc["_raw"]})]  # the log holds the very same document
    last = await raw.xrevrange(keys.log(POOL), count=1)
    assert last[0][0] == f"{version}-0"  # and it is the newest entry
    record = await raw.hgetall(keys.node(POOL, node_id))
    if op in ("remove", "reap"):
        assert "rec" not in doc
        assert record == {}
    else:
        # The event carries the record as readers see it: the scripts' '_' fields left out.
        assert doc["rec"] == readable(record)
        assert int(record["version"]) == version
        if op in ("register", "heartbeat"):
            # Liveness is the alive score, written at the script's time, and the TTL was armed then.
            assert await raw.zscore(keys.alive(POOL), node_id) == doc["ts"] == int(record["_ttl_at"])
        assert parse_event(doc["_raw"]).record == parse_node_hash(POOL, node_id, record)


def readable(record: dict[str, str]) -> dict[str, str]:
    """A node hash without the scripts' bookkeeping fields (``_ttl_at``, ``_jobs``)."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


async def make_dead(raw: aioredis.Redis, ns: str, node_id: str) -> None:
    """Write the node's alive score into the distant past (its last heartbeat was long ago)."""
    await raw.zadd(KeySpace(ns).alive(POOL), {node_id: 1})


# ====================================================================== register
async def test_register_is_one_atomic_mutation(store: RedisStore, raw: aioredis.Redis, ns: str) -> None:
    keys = KeySpace(ns)
    async with events(raw, ns) as ev:
        version = await store.register(spec(load=0.25))
        doc = await ev.next()
    assert version == 1
    await assert_one_mutation(raw, ns, doc, op="register", node_id="n1", version=version)
    record = await raw.hgetall(keys.node(POOL, "n1"))
    assert record == {
        "version": "1",
        "status": "up",
        "max_jobs": "4",
        "current_jobs": "0",
        "load": "0.25",
        "resources": '{"cpu": 8.0}',
        "labels": '["m"]',
        "_ttl_at": str(doc["ts"]),
    }
    assert await raw.zscore(keys.alive(POOL), "n1") == doc["ts"]
    assert 0 < await raw.pttl(keys.node(POOL, "n1")) <= TTL_MS
    assert await raw.smembers(keys.pools()) == {POOL}


async def test_register_twice_makes_two_versions_and_keeps_admitted_jobs(
    store: RedisStore, raw: aioredis.Redis, ns: str
) -> None:
    keys = KeySpace(ns)
    await store.register(spec(max_jobs=2))
    admission = await store.job_start(POOL, "n1", "j1")
    assert admission.admitted
    async with events(raw, ns) as ev:
        version = await store.register(spec(max_jobs=5))
        doc = await ev.next()
    assert version == admission.version + 1
    await assert_one_mutation(raw, ns, doc, op="register", node_id="n1", version=version)
    assert doc["rec"]["current_jobs"] == "1" and doc["rec"]["max_jobs"] == "5"
    assert await raw.smembers(keys.jobs(POOL, "n1")) == {"j1"}
    assert 0 < await raw.pttl(keys.jobs(POOL, "n1")) <= TTL_MS


async def test_version_is_monotonic_across_remove_and_re_register(
    store: RedisStore, raw: aioredis.Redis, ns: str
) -> None:
    async with events(raw, ns) as ev:
        first = await store.register(spec())
        await ev.next()
        removed = await store.remove(POOL, "n1")
        doc = await ev.next()
        await assert_one_mutation(raw, ns, doc, op="remove", node_id="n1", version=removed)
        again = await store.register(spec())
        doc = await ev.next()
    await assert_one_mutation(raw, ns, doc, op="register", node_id="n1", version=again)
    assert first < removed < again
    assert (first, removed, again) == (1, 2, 3)


async def test_the_epoch_is_made_once_per_pool_life(store: RedisStore, raw: aioredis.Redis, ns: str) -> None:
    keys = KeySpace(ns)
    await store.register(spec("a"))
    epoch = await raw.get(keys.epoch(POOL))
    assert epoch
    other = make_store(store.config.url, ns)
    try:
        await other.register(spec("b"))
    finally:
        await other.close()
    assert await raw.get(keys.epoch(POOL)) == epoch  # another writer does not replace it


# ===================================================================== heartbeat
async def test_quiet_heartbeat_refreshes_liveness_only(
    store: RedisStore, raw: aioredis.Redis, ns: str
) -> None:
    keys = KeySpace(ns)
    version = await store.register(spec(load=0.2))
    # Push liveness and the TTL's arming into the past so a refresh is visible whatever the
    # clock resolution; an arming that old is due, so the first beat re-arms the TTL.
    await raw.zadd(keys.alive(POOL), {"n1": 1})
    await raw.hset(keys.node(POOL, "n1"), "_ttl_at", "1")
    await raw.pexpire(keys.node(POOL, "n1"), 1000)
    before = readable(await raw.hgetall(keys.node(POOL, "n1")))
    seq_before, log_before = await seq_of(raw, ns), await log_len(raw, ns)
    async with events(raw, ns) as ev:
        # Within the default tolerance of 0.1 (0.2 -> 0.29 and exactly 0.1 away are both quiet).
        for load in (0.29, 0.3, 0.2):
            result = await store.heartbeat(Heartbeat(pool=POOL, node_id="n1", load=load))
            assert (result.version, result.changed, result.recreated) == (version, False, False)
        assert await seq_of(raw, ns) == seq_before
        assert await log_len(raw, ns) == log_before
        record = await raw.hgetall(keys.node(POOL, "n1"))
        assert readable(record) == before  # what readers see did not change at all
        beat = await raw.zscore(keys.alive(POOL), "n1")
        assert beat > 1 and 1 < int(record["_ttl_at"]) <= beat
        assert await raw.pttl(keys.node(POOL, "n1")) > 30_000
        # No event was published: the next message is the marker mutation, with the next seq.
        marker = await store.register(spec("marker"))
        doc = await ev.next()
    assert (doc["node"], doc["seq"]) == ("marker", marker)
    assert marker == seq_before + 1


async def test_changing_heartbeat_is_a_new_version(store: RedisStore, raw: aioredis.Redis, ns: str) -> None:
    version = await store.register(spec(load=0.1))
    async with events(raw, ns) as ev:
        result = await store.heartbeat(Heartbeat(pool=POOL, node_id="n1", load=0.75))
        doc = await ev.next()
    assert (result.changed, result.recreated) == (True, False)
    assert result.version == version + 1
    await assert_one_mutation(raw, ns, doc, op="heartbeat", node_id="n1", version=result.version)
    assert doc["rec"]["load"] == "0.75"


async def test_heartbeat_with_running_jobs_replaces_the_job_set(
    store: RedisStore, raw: aioredis.Redis, ns: str
) -> None:
    keys = KeySpace(ns)
    await store.register(spec())
    for job in ("j1", "j2"):
        assert (await store.job_start(POOL, "n1", job)).admitted
    async with events(raw, ns) as ev:
        result = await store.heartbeat(Heartbeat(pool=POOL, node_id="n1", running_jobs=["j2", "j3", "j4"]))
        doc = await ev.next()
        assert result.changed
        await assert_one_mutation(raw, ns, doc, op="heartbeat", node_id="n1", version=result.version)
        assert await raw.smembers(keys.jobs(POOL, "n1")) == {"j2", "j3", "j4"}
        assert doc["rec"]["current_jobs"] == "3"
        # The same set again, in another order, is quiet.
        seq_before = await seq_of(raw, ns)
        same = await store.heartbeat(Heartbeat(pool=POOL, node_id="n1", running_jobs=["j4", "j2", "j3"]))
        assert (same.changed, same.version) == (False, result.version)
        assert await seq_of(raw, ns) == seq_before
        # An empty report clears the set (what a crashed scheduler leaked is repaired).
        cleared = await store.heartbeat(Heartbeat(pool=POOL, node_id="n1", running_jobs=[]))
        doc = await ev.next()
    assert cleared.changed and cleared.version == seq_before + 1
    await assert_one_mutation(raw, ns, doc, op="heartbeat", node_id="n1", version=cleared.version)
    assert doc["rec"]["current_jobs"] == "0"
    assert await raw.exists(keys.jobs(POOL, "n1")) == 0
    again = await store.heartbeat(Heartbeat(pool=POOL, node_id="n1", running_jobs=[]))
    assert not again.changed


async def test_heartbeat_without_running_jobs_leaves_the_job_set(
    store: RedisStore, raw: aioredis.Redis, ns: str
) -> None:
    await store.register(spec())
    await store.job_start(POOL, "n1", "j1")
    result = await store.heartbeat(Heartbeat(pool=POOL, node_id="n1"))
    assert not result.changed
    assert await raw.smembers(KeySpace(ns).jobs(POOL, "n1")) == {"j1"}


async def test_repeating_a_report_with_a_duplicate_job_id_is_quiet(
    store: RedisStore, raw: aioredis.Redis, ns: str
) -> None:
    # A job set is a set: reporting ["j1", "j1"] twice describes the same state both times,
    # so the second beat must not invalidate every cache with a new version.
    await store.register(spec())
    first = await store.heartbeat(Heartbeat(pool=POOL, node_id="n1", running_jobs=["j1", "j1"]))
    assert first.changed
    assert await raw.smembers(KeySpace(ns).jobs(POOL, "n1")) == {"j1"}
    second = await store.heartbeat(Heartbeat(pool=POOL, node_id="n1", running_jobs=["j1", "j1"]))
    assert (second.changed, second.version) == (False, first.version)


async def test_heartbeat_recreates_an_unknown_node_from_its_spec(
    store: RedisStore, raw: aioredis.Redis, ns: str
) -> None:
    keys = KeySpace(ns)
    await store.register(spec("other"))
    beat = Heartbeat(pool=POOL, node_id="n1", load=0.5, running_jobs=["j1", "j2"], spec=spec(max_jobs=3))
    async with events(raw, ns) as ev:
        result = await store.heartbeat(beat)
        doc = await ev.next()
    assert (result.changed, result.recreated, result.version) == (True, True, 2)
    await assert_one_mutation(raw, ns, doc, op="register", node_id="n1", version=2)
    rec = doc["rec"]
    assert (rec["max_jobs"], rec["current_jobs"], rec["load"], rec["status"]) == ("3", "2", "0.5", "up")
    assert await raw.smembers(keys.jobs(POOL, "n1")) == {"j1", "j2"}
    assert await raw.zscore(keys.alive(POOL), "n1") == doc["ts"]
    assert 0 < await raw.pttl(keys.node(POOL, "n1")) <= TTL_MS
    # The re-created job set is stamped at the new version: the same report next time is quiet.
    assert await raw.hget(keys.node(POOL, "n1"), "_jobs") == f"2:{jobs_digest(['j2', 'j1'])}"
    assert not (await store.heartbeat(Heartbeat(pool=POOL, node_id="n1", load=0.5))).changed
    again = await store.heartbeat(Heartbeat(pool=POOL, node_id="n1", load=0.5, running_jobs=["j2", "j1"]))
    assert (again.changed, again.version) == (False, 2)


async def test_heartbeat_of_an_unknown_node_without_spec_changes_nothing(
    store: RedisStore, raw: aioredis.Redis, ns: str
) -> None:
    keys = KeySpace(ns)
    await store.register(spec("other"))
    seq_before, log_before = await seq_of(raw, ns), await log_len(raw, ns)
    result = await store.heartbeat(Heartbeat(pool=POOL, node_id="ghost", load=0.9, running_jobs=["j"]))
    assert (result.version, result.changed, result.recreated) == (0, False, False)
    assert await raw.exists(keys.node(POOL, "ghost"), keys.jobs(POOL, "ghost")) == 0
    assert await raw.zscore(keys.alive(POOL), "ghost") is None
    assert (await seq_of(raw, ns), await log_len(raw, ns)) == (seq_before, log_before)


async def test_publish_every_heartbeat_makes_every_beat_a_version(redis_url: str, ns: str, raw) -> None:
    seed = make_store(redis_url, ns, publish_every_heartbeat=True)
    try:
        version = await seed.register(spec(load=0.3))
        async with events(raw, ns) as ev:
            for i in range(1, 4):
                result = await seed.heartbeat(Heartbeat(pool=POOL, node_id="n1", load=0.3))
                doc = await ev.next()
                assert (result.changed, result.version) == (True, version + i)
                await assert_one_mutation(raw, ns, doc, op="heartbeat", node_id="n1", version=result.version)
    finally:
        await seed.close()


async def test_heartbeat_many_is_per_node_and_in_order(
    store: RedisStore, raw: aioredis.Redis, ns: str
) -> None:
    for i in range(3):
        await store.register(spec(f"n{i}"))
    beats = [
        Heartbeat(pool=POOL, node_id="n0"),  # quiet
        Heartbeat(pool=POOL, node_id="n1", load=0.9),  # changed: version 4
        Heartbeat(pool=POOL, node_id="ghost"),  # unknown, no spec
        Heartbeat(pool=POOL, node_id="n2", load=0.8),  # changed: version 5
    ]
    results = await store.heartbeat_many(beats)
    assert [(r.node_id, r.version, r.changed) for r in results] == [
        ("n0", 1, False),
        ("n1", 4, True),
        ("ghost", 0, False),
        ("n2", 5, True),
    ]
    assert await store.heartbeat_many([]) == []


# ============================================== the lean quiet heartbeat (issue 12)
async def inner_commands(server: RedisServer, run: Any) -> dict[str, int]:
    """Commands the server executed (script-internal ones included) while ``run()`` ran."""
    await asyncio.to_thread(server.reset_stats)
    await run()
    stats = await asyncio.to_thread(server.command_stats)
    return {k: v for k, v in stats.items() if not k.startswith(("config", "info", "client", "hello"))}


def broken(store: RedisStore, old: str, new: str) -> RedisStore:
    """``store`` running a deliberately broken HEARTBEAT (``old`` replaced by ``new``):
    shows that a test can fail."""
    assert scripts.HEARTBEAT.count(old) == 1, old
    store.scripts.use({**scripts.ALL, "heartbeat": scripts.HEARTBEAT.replace(old, new)})
    return store


async def test_quiet_heartbeats_cost_one_hmget_each_and_share_time_and_zadd(
    fault_server: RedisServer, ns: str
) -> None:
    s = make_store(fault_server.url, ns)
    try:
        await s.register_many([spec(f"n{i}") for i in range(10)])
        jobs = ["j1", "j2"]
        await s.heartbeat(Heartbeat(pool=POOL, node_id="n1", running_jobs=jobs))  # writes and stamps the set
        quiet = [Heartbeat(pool=POOL, node_id=f"n{i}") for i in range(10)]
        quiet[1] = Heartbeat(pool=POOL, node_id="n1", running_jobs=jobs)  # the stamp answers for the set

        async def ten() -> None:
            results = await s.heartbeat_many(quiet)
            assert not any(r.changed for r in results)

        commands = await inner_commands(fault_server, ten)
        assert commands == {"evalsha": 1, "time": 1, "hmget": 10, "zadd": 1}
        # More beats than one call carries: several calls, one pipeline, each its own TIME and ZADD.
        many = [quiet[i % 10] for i in range(2 * scripts.HEARTBEATS_PER_CALL + 1)]

        async def more() -> None:
            assert [r.node_id for r in await s.heartbeat_many(many)] == [b.node_id for b in many]

        commands = await inner_commands(fault_server, more)
        assert commands == {"evalsha": 3, "time": 3, "hmget": len(many), "zadd": 3}
    finally:
        await s.close()


async def test_a_batch_across_pools_answers_each_beat_in_order(
    store: RedisStore, raw: aioredis.Redis, ns: str
) -> None:
    other = NodeSpec(node_id="o1", pool="q", max_jobs=2)
    await store.register_many([spec("n1"), spec("n2"), other])
    beats = [
        Heartbeat(pool=POOL, node_id="n1"),
        Heartbeat(pool="q", node_id="o1", load=0.9),  # changed, in pool q: q's first version after 1
        Heartbeat(pool=POOL, node_id="ghost", spec=spec("ghost")),  # re-created in pool p
        Heartbeat(pool="q", node_id="ghost"),  # unknown, no spec
        Heartbeat(pool=POOL, node_id="n2"),
    ]
    results = await store.heartbeat_many(beats)
    assert [(r.node_id, r.version, r.changed, r.recreated) for r in results] == [
        ("n1", 1, False, False),
        ("o1", 2, True, False),
        ("ghost", 3, True, True),
        ("ghost", 0, False, False),
        ("n2", 2, False, False),
    ]
    keys = KeySpace(ns)
    assert await raw.zscore(keys.alive("q"), "o1") and await raw.zscore(keys.alive(POOL), "ghost")
    assert await raw.zscore(keys.alive("q"), "ghost") is None


@pytest.mark.parametrize("age", ["fresh", "just_before_due", "just_after_due", "clock_went_back"])
async def test_a_quiet_heartbeat_rearms_the_ttl_only_when_due_and_the_key_outlives_liveness(
    store: RedisStore, raw: aioredis.Redis, ns: str, age: str
) -> None:
    keys = KeySpace(ns)
    ttl, dead = store.args.ttl_ms, store.args.dead_ms
    rearm = store.args.ttl_rearm_ms
    assert rearm == ttl - dead > 0
    await store.register(spec())
    await store.job_start(POOL, "n1", "j1")  # a job set, whose TTL is armed with the record's
    seconds, micros = await raw.time()
    now = seconds * 1000 + micros // 1000
    ages = {"fresh": 0, "just_before_due": rearm - 1000, "just_after_due": rearm + 1000}
    armed = now - ages.get(age, -5000)
    # As if the last arming had been at `armed`: the field and both keys' expiry agree with it.
    await raw.hset(keys.node(POOL, "n1"), "_ttl_at", armed)
    for key in (keys.node(POOL, "n1"), keys.jobs(POOL, "n1")):
        await raw.pexpireat(key, armed + ttl)
    result = await store.heartbeat(Heartbeat(pool=POOL, node_id="n1"))
    assert not result.changed
    beat = int(await raw.zscore(keys.alive(POOL), "n1"))
    stamp = int(await raw.hget(keys.node(POOL, "n1"), "_ttl_at"))
    ttls = [await raw.pttl(keys.node(POOL, "n1")), await raw.pttl(keys.jobs(POOL, "n1"))]
    if age in ("just_after_due", "clock_went_back"):
        assert stamp == beat  # re-armed at this beat, both keys
        assert all(ttl - 2000 < t <= ttl for t in ttls), ttls
    else:
        assert stamp == armed  # left alone: no write at all besides the alive score
        assert all(t <= armed + ttl - now for t in ttls), ttls
    # Whatever the case, both keys outlive the node's liveness (alive until beat + dead_after).
    assert all(t >= beat + dead - now - 2000 for t in ttls), (ttls, beat, now)


async def test_a_heartbeat_that_never_rearms_would_be_caught(
    store: RedisStore, raw: aioredis.Redis, ns: str
) -> None:
    # The check above, against a broken script whose quiet path never re-arms: a node beating
    # every few seconds would lose its key dead_after after the last arming, while alive.
    broken(store, "if ts - armed > rearm or ts < armed then", "if false then")
    keys = KeySpace(ns)
    await store.register(spec())
    seconds, micros = await raw.time()
    armed = seconds * 1000 + micros // 1000 - store.args.ttl_rearm_ms - 1000
    await raw.hset(keys.node(POOL, "n1"), "_ttl_at", armed)
    await raw.pexpireat(keys.node(POOL, "n1"), armed + store.args.ttl_ms)
    await store.heartbeat(Heartbeat(pool=POOL, node_id="n1"))
    assert await raw.pttl(keys.node(POOL, "n1")) < store.args.dead_ms  # the key would die first


async def test_the_ttl_backstop_still_removes_a_silent_node(
    redis_url: str, raw: aioredis.Redis, ns: str
) -> None:
    # Short lifetimes, no reaper: a beating node keeps its keys (re-armed every few beats,
    # not every beat), a silent one loses them by ttl after its last beat.
    keys = KeySpace(ns)
    s = make_store(redis_url, ns, dead_after_s=0.4, ttl_s=0.8)
    try:
        await s.register(spec())
        await s.job_start(POOL, "n1", "j1")
        loop = asyncio.get_running_loop()
        stamps, beats = set(), 0
        until = loop.time() + 2.0  # 2.5 TTLs
        while loop.time() < until:
            result = await s.heartbeat(Heartbeat(pool=POOL, node_id="n1"))
            beats += 1
            assert result.version > 0, "a beating node's key expired"
            stamps.add(await raw.hget(keys.node(POOL, "n1"), "_ttl_at"))
            await asyncio.sleep(0.05)  # the node's heartbeat interval (pacing, not synchronisation)
        assert 2 <= len(stamps) < beats / 2, (len(stamps), beats)  # re-armed, but not on every beat
        last = loop.time()

        async def gone() -> bool:
            return await raw.exists(keys.node(POOL, "n1"), keys.jobs(POOL, "n1")) == 0

        await eventually_async(gone, 5.0, "the silent node's keys to expire")
        assert loop.time() - last < 0.8 + 1.0  # within its TTL (+ the server's expiry cycle)
        assert (await s.heartbeat(Heartbeat(pool=POOL, node_id="n1"))).version == 0  # unknown now
        assert (await s.job_start(POOL, "n1", "j2")).reason == "not_alive"
    finally:
        await s.close()


async def test_the_job_digest_is_trusted_only_at_the_version_it_was_stamped(
    store: RedisStore, raw: aioredis.Redis, ns: str
) -> None:
    keys = KeySpace(ns)
    await store.register(spec(max_jobs=8))

    async def beat(*jobs: str) -> Any:
        return await store.heartbeat(Heartbeat(pool=POOL, node_id="n1", running_jobs=list(jobs)))

    first = await beat("a", "b")
    assert first.changed
    assert await raw.hget(keys.node(POOL, "n1"), "_jobs") == f"{first.version}:{jobs_digest(['a', 'b'])}"
    assert not (await beat("b", "a")).changed
    # An admission changes the set and makes a version: the stamp no longer vouches for the set.
    assert (await store.job_start(POOL, "n1", "c")).admitted
    async with events(raw, ns) as ev:
        # The node reports the old set (c never started there, say): same digest as the stamp,
        # but stamped at an older version, so the script compares the set and repairs it.
        repaired = await beat("a", "b")
        doc = await ev.next()
    assert repaired.changed
    await assert_one_mutation(raw, ns, doc, op="heartbeat", node_id="n1", version=repaired.version)
    assert await raw.smembers(keys.jobs(POOL, "n1")) == {"a", "b"} and doc["rec"]["current_jobs"] == "2"
    # An admission the node does report: compared once, found equal, stamped, quiet.
    admitted = await store.job_start(POOL, "n1", "d")
    seq_before = await seq_of(raw, ns)
    same = await beat("a", "b", "d")
    assert (same.changed, same.version) == (False, admitted.version)
    assert await raw.hget(keys.node(POOL, "n1"), "_jobs") == f"{admitted.version}:{jobs_digest('abd')}"
    # A release too; and a report that differs from a fresh stamp is a change.
    released, version, _ = await store.job_finish(POOL, "n1", "a")
    assert released and not (await beat("b", "d")).changed
    assert await seq_of(raw, ns) == seq_before + 1  # only the release made a version
    assert (await beat("b", "d", "e")).changed
    assert await raw.smembers(keys.jobs(POOL, "n1")) == {"b", "d", "e"}
    assert version < await seq_of(raw, ns)


async def test_a_digest_without_its_version_would_miss_a_leak(
    store: RedisStore, raw: aioredis.Redis, ns: str
) -> None:
    # The test above, against a broken script that trusts the digest at any version: the
    # node's report of the old set after an admission is taken as quiet, and the set keeps
    # a job the node does not run.
    broken(store, "h[4] == h[1] .. ':' .. digest", "string.sub(h[4] or '', -40) == digest")
    await store.register(spec(max_jobs=8))
    assert (await store.heartbeat(Heartbeat(pool=POOL, node_id="n1", running_jobs=["a", "b"]))).changed
    assert (await store.job_start(POOL, "n1", "c")).admitted
    missed = await store.heartbeat(Heartbeat(pool=POOL, node_id="n1", running_jobs=["a", "b"]))
    assert not missed.changed
    assert await raw.smembers(KeySpace(ns).jobs(POOL, "n1")) == {"a", "b", "c"}


async def test_a_quiet_result_is_shared_while_it_holds(store: RedisStore) -> None:
    await store.register(spec())
    beat = Heartbeat(pool=POOL, node_id="n1")
    first, second = await store.heartbeat(beat), await store.heartbeat(beat)
    assert first is second and (first.version, first.changed) == (1, False)
    admitted = await store.job_start(POOL, "n1", "j1")  # a new version: a new result
    third = await store.heartbeat(beat)
    assert third is not first and (third.version, third.changed) == (admitted.version, False)
    loud = await store.heartbeat(Heartbeat(pool=POOL, node_id="n1", load=0.9))
    assert loud.changed and loud.version == admitted.version + 1


def test_the_job_digest_is_a_function_of_the_set() -> None:
    assert jobs_digest(["a", "b"]) == jobs_digest(["b", "a", "a"]) == jobs_digest(iter("ba"))
    assert jobs_digest([]) and jobs_digest([]) != jobs_digest([""])
    # Length prefixes: no two different sets encode alike, whatever their ids contain.
    assert jobs_digest(["a:b"]) != jobs_digest(["a", "b"])
    assert jobs_digest(["1:a"]) != jobs_digest(["a"]) != jobs_digest(["1:a", "a"])
    assert len({jobs_digest(x) for x in (["ab"], ["a", "b"], ["a b"], ["2:ab"])}) == 4


async def test_publish_every_heartbeat_publishes_a_beat_whose_jobs_are_unchanged(
    redis_url: str, ns: str, raw: aioredis.Redis
) -> None:
    seed = make_store(redis_url, ns, publish_every_heartbeat=True)
    try:
        await seed.register(spec())
        beat = Heartbeat(pool=POOL, node_id="n1", running_jobs=["a"])
        first = await seed.heartbeat(beat)
        async with events(raw, ns) as ev:
            second = await seed.heartbeat(beat)
            doc = await ev.next()
        assert second.changed and second.version == first.version + 1
        await assert_one_mutation(raw, ns, doc, op="heartbeat", node_id="n1", version=second.version)
        assert "_jobs" not in doc["rec"] and "_ttl_at" not in doc["rec"]
    finally:
        await seed.close()


# ======================================================================== remove
async def test_remove_deletes_every_key_of_the_node_once(
    store: RedisStore, raw: aioredis.Redis, ns: str
) -> None:
    keys = KeySpace(ns)
    await store.register(spec())
    await store.job_start(POOL, "n1", "j1")
    async with events(raw, ns) as ev:
        removed = await store.remove(POOL, "n1")
        doc = await ev.next()
        await assert_one_mutation(raw, ns, doc, op="remove", node_id="n1", version=removed)
        assert await raw.exists(keys.node(POOL, "n1"), keys.jobs(POOL, "n1")) == 0
        assert await raw.zscore(keys.alive(POOL), "n1") is None
        seq_before, log_before = await seq_of(raw, ns), await log_len(raw, ns)
        assert await store.remove(POOL, "n1") == 0  # removing twice changes nothing
        assert await store.remove(POOL, "never") == 0
        assert (await seq_of(raw, ns), await log_len(raw, ns)) == (seq_before, log_before)
        marker = await store.register(spec("marker"))
        assert (await ev.next())["seq"] == marker == seq_before + 1


# ============================================================== job_start / finish
async def test_job_start_admits_atomically(store: RedisStore, raw: aioredis.Redis, ns: str) -> None:
    keys = KeySpace(ns)
    await store.register(spec(max_jobs=2))
    await raw.pexpire(keys.node(POOL, "n1"), 1000)
    async with events(raw, ns) as ev:
        admission = await store.job_start(POOL, "n1", "j1")
        doc = await ev.next()
    assert admission.admitted and admission.reason == "admitted"
    assert (admission.current_jobs, admission.max_jobs, admission.version) == (1, 2, 2)
    await assert_one_mutation(raw, ns, doc, op="job_start", node_id="n1", version=2)
    assert doc["rec"]["current_jobs"] == "1"
    assert await raw.smembers(keys.jobs(POOL, "n1")) == {"j1"}
    assert await raw.pttl(keys.node(POOL, "n1")) > 30_000  # TTL refreshed
    assert 0 < await raw.pttl(keys.jobs(POOL, "n1")) <= TTL_MS


async def test_concurrent_job_starts_from_two_stores_never_exceed_capacity(
    redis_url: str, ns: str, raw: aioredis.Redis
) -> None:
    keys = KeySpace(ns)
    a, b = make_store(redis_url, ns), make_store(redis_url, ns)
    try:
        registered = await a.register(spec(max_jobs=3))
        calls = [(a if i % 2 else b).job_start(POOL, "n1", f"job-{i}") for i in range(50)]
        admissions = await asyncio.gather(*calls)
    finally:
        await a.close()
        await b.close()
    admitted = [x for x in admissions if x.admitted]
    assert len(admitted) == 3
    assert all(x.reason == "admitted" for x in admitted)
    assert sorted(x.version for x in admitted) == [registered + 1, registered + 2, registered + 3]
    rejected = [x for x in admissions if not x.admitted]
    assert {x.reason for x in rejected} == {"full"}
    assert all(x.current_jobs == 3 and x.max_jobs == 3 for x in rejected)
    record = await raw.hgetall(keys.node(POOL, "n1"))
    assert record["current_jobs"] == "3"
    assert await raw.scard(keys.jobs(POOL, "n1")) == 3
    assert await raw.smembers(keys.jobs(POOL, "n1")) == {x.job_id for x in admitted}
    assert await seq_of(raw, ns) == registered + 3  # rejections made no version
    assert await log_len(raw, ns) == 4


async def test_job_start_twice_changes_nothing_the_second_time(
    store: RedisStore, raw: aioredis.Redis, ns: str
) -> None:
    await store.register(spec(max_jobs=1))
    first = await store.job_start(POOL, "n1", "j1")
    state = (await seq_of(raw, ns), await log_len(raw, ns), await raw.hgetall(KeySpace(ns).node(POOL, "n1")))
    second = await store.job_start(POOL, "n1", "j1")
    assert first.admitted and second.admitted
    assert second.reason == "already_admitted"
    assert (second.version, second.current_jobs) == (first.version, 1)
    state_after = (
        await seq_of(raw, ns),
        await log_len(raw, ns),
        await raw.hgetall(KeySpace(ns).node(POOL, "n1")),
    )
    assert state_after == state


async def test_job_finish_releases_once(store: RedisStore, raw: aioredis.Redis, ns: str) -> None:
    keys = KeySpace(ns)
    await store.register(spec())
    await store.job_start(POOL, "n1", "j1")
    await store.job_start(POOL, "n1", "j2")
    async with events(raw, ns) as ev:
        released, version, current = await store.job_finish(POOL, "n1", "j1")
        doc = await ev.next()
    assert (released, version, current) == (True, 4, 1)
    await assert_one_mutation(raw, ns, doc, op="job_finish", node_id="n1", version=4)
    assert doc["rec"]["current_jobs"] == "1"
    assert await raw.smembers(keys.jobs(POOL, "n1")) == {"j2"}
    state = (await seq_of(raw, ns), await log_len(raw, ns), await raw.hgetall(keys.node(POOL, "n1")))
    assert await store.job_finish(POOL, "n1", "j1") == (False, 4, 1)  # a duplicate
    assert await store.job_finish(POOL, "n1", "never-started") == (False, 4, 1)
    assert (await seq_of(raw, ns), await log_len(raw, ns), await raw.hgetall(keys.node(POOL, "n1"))) == state


async def test_job_finish_never_goes_below_zero(store: RedisStore, raw: aioredis.Redis, ns: str) -> None:
    keys = KeySpace(ns)
    await store.register(spec())
    await store.job_start(POOL, "n1", "j1")
    await raw.hset(keys.node(POOL, "n1"), "current_jobs", "0")  # a count that lost track of j1
    released, _version, current = await store.job_finish(POOL, "n1", "j1")
    assert released and current == 0
    assert await raw.hget(keys.node(POOL, "n1"), "current_jobs") == "0"


async def test_job_finish_on_an_unknown_node_forgets_the_job(
    store: RedisStore, raw: aioredis.Redis, ns: str
) -> None:
    keys = KeySpace(ns)
    await store.register(spec("other"))
    await raw.sadd(keys.jobs(POOL, "gone"), "j1")  # a job set that outlived its node
    seq_before = await seq_of(raw, ns)
    assert await store.job_finish(POOL, "gone", "j1") == (False, 0, 0)
    assert await raw.exists(keys.jobs(POOL, "gone")) == 0
    assert await seq_of(raw, ns) == seq_before


@pytest.mark.parametrize(
    ("setup", "reason"),
    [("draining", "draining"), ("dead", "not_alive"), ("unknown", "not_alive"), ("full", "full")],
)
async def test_job_start_refuses_with_the_right_reason(
    store: RedisStore, raw: aioredis.Redis, ns: str, setup: str, reason: str
) -> None:
    keys = KeySpace(ns)
    await store.register(spec("other"))
    if setup == "draining":
        await store.register(spec(status="draining"))
    elif setup == "dead":
        await store.register(spec())
        await make_dead(raw, ns, "n1")
    elif setup == "full":
        await store.register(spec(max_jobs=1))
        await store.job_start(POOL, "n1", "first")
    seq_before, log_before = await seq_of(raw, ns), await log_len(raw, ns)
    members_before = await raw.smembers(keys.jobs(POOL, "n1"))
    admission = await store.job_start(POOL, "n1", "j1")
    assert (admission.admitted, admission.reason) == (False, reason)
    expected_version = 0 if setup == "unknown" else int(await raw.hget(keys.node(POOL, "n1"), "version"))
    assert admission.version == expected_version
    assert (await seq_of(raw, ns), await log_len(raw, ns)) == (seq_before, log_before)
    assert await raw.smembers(keys.jobs(POOL, "n1")) == members_before


async def test_job_start_on_a_node_revived_by_a_heartbeat(
    store: RedisStore, raw: aioredis.Redis, ns: str
) -> None:
    await store.register(spec())
    await make_dead(raw, ns, "n1")
    assert (await store.job_start(POOL, "n1", "j1")).reason == "not_alive"
    await store.heartbeat(Heartbeat(pool=POOL, node_id="n1"))
    assert (await store.job_start(POOL, "n1", "j1")).reason == "admitted"


# ========================================================================== reap
async def test_reap_removes_only_dead_nodes_and_announces_each(
    store: RedisStore, raw: aioredis.Redis, ns: str
) -> None:
    keys = KeySpace(ns)
    for i in range(4):
        await store.register(spec(f"n{i}"))
    await store.job_start(POOL, "n1", "j1")
    for node_id in ("n1", "n3"):
        await make_dead(raw, ns, node_id)
    async with events(raw, ns) as ev:
        reaped = await store.reap(POOL)
        docs = [await ev.next(), await ev.next()]
        marker = await store.register(spec("marker"))
        assert (await ev.next())["seq"] == marker  # exactly two reap events came before it
    assert sorted(reaped) == ["n1", "n3"]
    assert sorted(d["node"] for d in docs) == ["n1", "n3"]
    for doc in docs:
        assert doc["op"] == "reap" and doc["seq"] == doc["version"] and "rec" not in doc
        entries = await raw.xrange(keys.log(POOL), min=f"{doc['seq']}-0", max=f"{doc['seq']}-0")
        assert entries == [(f"{doc['seq']}-0", {"e": doc["_raw"]})]
        assert await raw.exists(keys.node(POOL, doc["node"]), keys.jobs(POOL, doc["node"])) == 0
    assert sorted(await raw.zrange(keys.alive(POOL), 0, -1)) == ["marker", "n0", "n2"]
    assert await raw.exists(keys.node(POOL, "n0"), keys.node(POOL, "n2")) == 2
    assert await store.reap(POOL) == []


async def test_reap_honours_its_limit(store: RedisStore, raw: aioredis.Redis, ns: str) -> None:
    for i in range(5):
        await store.register(spec(f"n{i}"))
        await make_dead(raw, ns, f"n{i}")
    assert len(await store.reap(POOL, limit=2)) == 2
    assert len(await store.reap(POOL, limit=10)) == 3


async def test_concurrent_reapers_remove_each_node_exactly_once(
    redis_url: str, ns: str, raw: aioredis.Redis
) -> None:
    a, b = make_store(redis_url, ns), make_store(redis_url, ns)
    try:
        for i in range(30):
            await a.register(spec(f"n{i}"))
            await make_dead(raw, ns, f"n{i}")
        seq_before = await seq_of(raw, ns)
        async with events(raw, ns) as ev:
            rounds = await asyncio.gather(*(s.reap(POOL, limit=7) for s in (a, b, a, b, a, b)))
            more = await asyncio.gather(a.reap(POOL), b.reap(POOL))
            reaped = [node for batch in (*rounds, *more) for node in batch]
            docs = [await ev.next() for _ in range(30)]
            marker = await a.register(spec("marker"))
            assert (await ev.next())["seq"] == marker  # and no 31st reap event
    finally:
        await a.close()
        await b.close()
    assert sorted(reaped) == sorted(f"n{i}" for i in range(30))  # each once, none twice
    assert sorted(d["node"] for d in docs) == sorted(reaped)
    assert {d["op"] for d in docs} == {"reap"}
    assert [d["seq"] for d in docs] == list(range(seq_before + 1, seq_before + 31))
    assert await seq_of(raw, ns) == marker == seq_before + 31


# ============================================================== lost data, NOSCRIPT
async def test_heartbeat_after_flushall_recreates_the_node(fault_server, ns: str) -> None:
    s = make_store(fault_server.url, ns)
    raw = aioredis.Redis.from_url(fault_server.url, decode_responses=True)
    try:
        await s.register(spec(max_jobs=3))
        await s.job_start(POOL, "n1", "j1")
        epoch_before = await raw.get(KeySpace(ns).epoch(POOL))
        await asyncio.to_thread(fault_server.flushall)
        lost = await s.heartbeat(Heartbeat(pool=POOL, node_id="n1"))
        assert (lost.version, lost.recreated) == (0, False)  # without a spec it cannot come back
        async with events(raw, ns) as ev:
            result = await s.heartbeat(
                Heartbeat(pool=POOL, node_id="n1", running_jobs=["j1"], spec=spec(max_jobs=3))
            )
            doc = await ev.next()
        assert (result.recreated, result.changed, result.version) == (True, True, 1)  # seq restarted
        await assert_one_mutation(raw, ns, doc, op="register", node_id="n1", version=1)
        assert doc["rec"]["current_jobs"] == "1"
        assert doc["epoch"] != epoch_before  # readers can tell the data was lost
        assert (await s.job_start(POOL, "n1", "j2")).admitted
    finally:
        await s.close()
        await raw.aclose()


@pytest.mark.parametrize("call", ["register", "heartbeat_many", "job_start"])
async def test_scripts_still_run_after_a_restart_empty(fault_server, ns: str, call: str) -> None:
    s = make_store(fault_server.url, ns)
    try:
        await s.register(spec())  # scripts loaded, a pooled connection in use
        await asyncio.to_thread(fault_server.restart)  # scripts and data gone, pooled socket dead
        raw = aioredis.Redis.from_url(fault_server.url, decode_responses=True)
        try:
            assert await raw.script_exists(*SHAS) == [False] * len(SHAS)
        finally:
            await raw.aclose()
        if call == "register":
            assert await s.register(spec("n2")) == 1
        elif call == "heartbeat_many":
            beat = Heartbeat(pool=POOL, node_id="n1", spec=spec())
            (result,) = await s.heartbeat_many([beat])
            assert (result.version, result.recreated) == (1, True)
        else:
            admission = await s.job_start(POOL, "n1", "j1")
            assert (admission.admitted, admission.reason) == (False, "not_alive")  # the script ran
    finally:
        await s.close()


async def test_scripts_still_run_after_script_flush(fault_server, ns: str) -> None:
    s = make_store(fault_server.url, ns)
    raw = aioredis.Redis.from_url(fault_server.url, decode_responses=True)
    shas = SHAS
    try:
        await s.load_scripts()
        assert await raw.script_exists(*shas) == [True] * len(shas)
        calls = [
            ("register", lambda: s.register(spec(max_jobs=2))),
            ("heartbeat_many", lambda: s.heartbeat_many([Heartbeat(pool=POOL, node_id="n1", load=0.9)])),
            ("job_start", lambda: s.job_start(POOL, "n1", "j1")),
            ("job_finish", lambda: s.job_finish(POOL, "n1", "j1")),
            ("heartbeat", lambda: s.heartbeat(Heartbeat(pool=POOL, node_id="n1", load=0.1))),
            ("reap", lambda: s.reap(POOL)),
            ("remove", lambda: s.remove(POOL, "n1")),
        ]
        results = {}
        for name, call in calls:
            await raw.script_flush()
            assert await raw.script_exists(*shas) == [False] * len(shas)
            results[name] = await call()
        assert results["register"] == 1
        assert results["heartbeat_many"][0].version == 2
        assert results["job_start"].admitted and results["job_start"].version == 3
        assert results["job_finish"] == (True, 4, 0)
        assert results["heartbeat"].version == 5
        assert results["reap"] == []
        assert results["remove"] == 6
    finally:
        await s.close()
        await raw.aclose()
