"""Invalidation protocol under real faults (DESIGN.md section 5): events, gaps, reconnects, relists.

Every test runs registries against a real redis-server and waits on conditions with
deadlines; faults are real (killed client connections, a trimmed log, a proxy that
stops forwarding, garbage published on the channel).
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from lockless.core.modes import Mode
from lockless.core.snapshot import NodeSnapshot, NodeSpec
from lockless.redis.keys import KeySpace
from lockless.redis.store import RedisStore
from lockless.registry import LocklessRegistry
from tests.support import cache_view, eventually, fast_config, redis_view, store_for, version_in


def spec(i: int, pool: str = "p", max_jobs: int = 4) -> NodeSpec:
    return NodeSpec(node_id=f"n{i}", pool=pool, max_jobs=max_jobs, resources={"cpu": 8}, labels={"m"})


async def test_a_write_on_one_instance_reaches_the_others(redis_url: str, ns: str) -> None:
    cfg = fast_config(redis_url, ns)
    async with (
        LocklessRegistry(cfg, instance="a") as a,
        LocklessRegistry(cfg, instance="b") as b,
        LocklessRegistry(cfg, instance="c") as c,
    ):
        version = await a.register_node(spec(1))
        await eventually(
            lambda: all(version_in(r, "p", "n1") == version for r in (b, c)),
            2.0,
            "register to reach b and c",
        )
        admission = await b.job_start("p", "n1", "job-1")
        assert admission.admitted
        await eventually(lambda: a.cached("p", "n1").current_jobs == 1, 2.0, "job_start to reach a")
        assert (await c.get_node("p", "n1")) is not None
        await eventually(lambda: c.cached("p", "n1").version == admission.version, 2.0, "c to apply")
        removed_at = await c.remove_node("p", "n1")
        assert removed_at
        await eventually(
            lambda: a.cached("p", "n1") is None and b.cached("p", "n1") is None,
            2.0,
            "removal to reach a and b",
        )
        assert await a.get_node("p", "n1") is None
        for r in (a, b, c):
            assert r.metrics()["events_applied"] >= 2
            assert r.metrics().histograms["propagation_us"].count >= 1


async def test_killed_subscription_reconnects_and_catches_up_without_losing_writes(
    fault_server, ns: str
) -> None:
    cfg = fast_config(fault_server.url, ns)
    writer = store_for(cfg)
    async with LocklessRegistry(cfg, instance="reader") as reader:
        for i in range(20):
            await writer.register(spec(i))
        stop = asyncio.Event()

        async def keep_writing() -> int:
            written = 0
            while not stop.is_set():
                await writer.job_start("p", f"n{written % 20}", f"job-{written}")
                written += 1
                await asyncio.sleep(0)
            return written

        task = asyncio.create_task(keep_writing())
        await eventually(lambda: reader.metrics()["events_applied"] > 20, 3.0, "writes flowing")
        killed = await asyncio.to_thread(fault_server.kill_clients, "pubsub")
        assert killed >= 1
        await eventually(lambda: reader.metrics()["reconnects"] >= 1, 3.0, "a reconnect")
        stop.set()
        written = await task
        assert written > 0
        truth = await redis_view(writer, "p")
        await eventually(
            lambda: cache_view(reader, "p") == truth and reader.caught_up(), 3.0, "the reader to equal Redis"
        )
        m = reader.metrics()
        assert m["catchups"] + m["relists"] >= 2  # the start relist plus at least one repair
        assert reader.mode is Mode.NORMAL
    await writer.close()


async def test_trimmed_log_forces_a_relist(fault_server, proxy, ns: str) -> None:
    direct = fast_config(fault_server.url, ns)
    writer = store_for(direct)
    async with LocklessRegistry(fast_config(proxy.url, ns), instance="behind") as reader:
        await writer.register(spec(0))
        await eventually(lambda: reader.cached("p", "n0") is not None, 2.0, "first event")
        relists_before = reader.metrics()["relists"]
        proxy.refuse(True)
        proxy.cut()
        await eventually(lambda: reader.mode is not Mode.NORMAL, 3.0, "the reader to notice the cut")
        for i in range(1, 30):
            await writer.register(spec(i))
        raw = aioredis.Redis.from_url(fault_server.url)
        await raw.xtrim(KeySpace(ns).log("p"), maxlen=0)
        await raw.aclose()
        proxy.refuse(False)
        truth = await redis_view(writer, "p")
        await eventually(
            lambda: cache_view(reader, "p") == truth and reader.mode is Mode.NORMAL,
            5.0,
            "relist after the trimmed log",
        )
        assert reader.metrics()["relists"] > relists_before
    await writer.close()


async def test_blackholed_subscription_is_detected_by_the_ping_deadline(fault_server, proxy, ns: str) -> None:
    cfg = fast_config(proxy.url, ns)
    writer = store_for(fast_config(fault_server.url, ns))
    async with LocklessRegistry(cfg, instance="blackholed") as reader:
        loop = asyncio.get_running_loop()
        proxy.blackhole(True)
        started = loop.time()
        await eventually(lambda: reader.mode is not Mode.NORMAL, 3.0, "the dead link to be noticed")
        detected_after = loop.time() - started
        # ping every 0.1 s + pong deadline 0.25 s: far from redis-py's silence of minutes.
        assert detected_after < 2.0
        await writer.register(spec(7))
        proxy.blackhole(False)
        proxy.cut()  # the held connections are dead; new ones go through
        await eventually(
            lambda: reader.cached("p", "n7") is not None and reader.mode is Mode.NORMAL,
            5.0,
            "catch-up after the link returns",
        )
        assert reader.metrics()["reconnects"] >= 1
    await writer.close()


async def test_garbage_on_the_channel_is_counted_and_relisted(redis_url: str, ns: str) -> None:
    cfg = fast_config(redis_url, ns)
    writer = store_for(cfg)
    async with LocklessRegistry(cfg, instance="robust") as reader:
        await writer.register(spec(1))
        await eventually(lambda: reader.cached("p", "n1") is not None, 2.0, "first event")
        relists = reader.metrics()["relists"]
        raw = aioredis.Redis.from_url(redis_url)
        channel = KeySpace(ns).events("p")
        for garbage in (b"not json", b"[1,2]", b'{"node": "n1", "pool": "p", "op": "explode"}', b"\xff\xfe"):
            await raw.publish(channel, garbage)
        await raw.aclose()
        await eventually(lambda: reader.metrics()["events_malformed"] >= 4, 2.0, "garbage counted")
        await eventually(lambda: reader.metrics()["relists"] > relists, 2.0, "a relist")
        # The loop is alive: later writes still arrive.
        version = await writer.register(spec(2))
        await eventually(lambda: version_in(reader, "p", "n2") == version, 2.0, "events after garbage")
    await writer.close()


async def test_versions_never_go_backwards_when_a_stale_read_races_an_event(
    redis_url: str, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = fast_config(redis_url, ns)
    writer = store_for(cfg)
    async with LocklessRegistry(cfg, instance="mono") as reader:
        await writer.register(spec(1))
        await eventually(lambda: reader.cached("p", "n1") is not None, 2.0, "first event")
        old = reader.cached("p", "n1")
        admission = await writer.job_start("p", "n1", "j")
        await eventually(lambda: version_in(reader, "p", "n1") == admission.version, 2.0, "new version")

        # A read of the record that left Redis before the event and arrives after it.
        epoch = reader.state().positions["p"][1]

        async def stale_read(
            self: RedisStore, pool: str, node_ids: list[str]
        ) -> tuple[str | None, dict[str, NodeSnapshot | None]]:
            return epoch, {"n1": old}

        monkeypatch.setattr(RedisStore, "get_nodes_and_epoch", stale_read)
        assert (await reader.refresh_node("p", "n1")).version == admission.version  # refused: older
        assert reader.cached("p", "n1").version == admission.version
    await writer.close()
