"""Degradation modes under real outages (DESIGN.md section 4): stop, restart empty, SIGSTOP.

The server is really stopped or frozen; the registry must notice within its detection
time, keep answering reads from L1 (marked stale), journal writes, and come back to
NORMAL only after replaying the journal and catching up, with its cache equal to Redis.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
import redis.asyncio as aioredis

from lockless.clock import ManualClock
from lockless.config import RedisConfig
from lockless.core.modes import Mode
from lockless.core.snapshot import NodeSpec
from lockless.errors import StaleRead
from lockless.registry import LocklessRegistry
from tests.support import cache_view, eventually, eventually_async, fast_config, redis_view, store_for


def spec(i: int) -> NodeSpec:
    return NodeSpec(node_id=f"n{i}", pool="p", max_jobs=2)


async def _fill(registry: LocklessRegistry, count: int) -> None:
    for i in range(count):
        await registry.register_node(spec(i))
    await eventually(lambda: len(registry.cached_nodes("p")) == count, 3.0, "nodes cached")


async def _save(url: str) -> None:
    raw = aioredis.Redis.from_url(url)
    await raw.save()
    await raw.aclose()


@pytest.mark.parametrize("data_survives", [True, False], ids=["restarted", "restarted-empty"])
async def test_stopped_server_local_only_then_replay_and_normal(
    fault_server, ns: str, data_survives: bool
) -> None:
    cfg = fast_config(fault_server.url, ns)
    async with LocklessRegistry(cfg, instance="outage") as registry:
        await _fill(registry, 5)
        assert (await registry.job_start("p", "n0", "before")).admitted
        if data_survives:
            await _save(fault_server.url)
        await asyncio.to_thread(fault_server.stop)
        stopped_at = time.monotonic()
        await eventually(lambda: registry.mode is Mode.LOCAL_ONLY, 5.0, "LOCAL_ONLY")
        assert time.monotonic() - stopped_at < 3.0
        assert registry.state().outage_started_at is not None

        read = await registry.read_node("p", "n1")
        assert read.node is not None and read.node.node_id == "n1"
        assert read.stale and read.mode is Mode.LOCAL_ONLY
        stale_before = registry.metrics()["stale_reads"]
        assert (await registry.get_node("p", "n2")) is not None
        assert registry.metrics()["stale_reads"] == stale_before + 1  # served last-known-good, counted
        assert (await registry.select_nodes("p", 2)).picks

        # Writes go to the journal: a new node, heartbeats (coalesced), a job in and out.
        assert await registry.register_node(spec(9)) == 0
        for load in (0.2, 0.9):
            beat = await registry.heartbeat("p", "n1", load=load, spec=spec(1))
            assert beat.journaled
        admitted = await registry.job_start("p", "n2", "during")
        assert admitted.admitted and admitted.reason == "journaled"
        assert await registry.job_finish("p", "n0", "before")
        assert registry.state().journal_depth == 4  # register, one coalesced heartbeat, job_start, job_finish

        await asyncio.to_thread(fault_server.start)
        await eventually(lambda: registry.mode is Mode.NORMAL, 8.0, "NORMAL after recovery")
        assert registry.state().journal_depth == 0
        store = store_for(cfg)
        truth = await redis_view(store, "p")
        await eventually(lambda: cache_view(registry, "p") == truth, 3.0, "cache equal to Redis")
        rejections = registry.take_replay_rejections()
        if data_survives:
            assert set(truth) == {f"n{i}" for i in (0, 1, 2, 3, 4, 9)}
            assert truth["n0"][1] == 0 and truth["n2"][1] == 1
            assert rejections == [] and registry.metrics()["replay_rejections"] == 0
        else:
            # Redis lost everything: what was journaled came back (the heartbeat re-created n1),
            # the rest returns by its next heartbeat; the admission on vanished n2 is reported.
            assert set(truth) == {"n1", "n9"}
            assert [(a.job_id, a.reason) for a in rejections] == [("during", "not_alive")]
            assert registry.metrics()["replay_rejections"] == 1
            assert registry.take_replay_rejections() == []  # told once
            assert registry.metrics()["epoch_changes"] >= 1
        m = registry.metrics()
        assert m["journal_replays"] == 4
        assert sum(n for (_, to), n in m.mode_switches.items() if to == "local_only") == 1
        assert m.mode_switches[("local_only", "l2_only")] == 1
        assert m.mode_switches[("l2_only", "normal")] >= 1
        await store.close()


async def test_paused_server_never_blocks_a_read_past_the_budget(fault_server, ns: str) -> None:
    base = fast_config(fault_server.url, ns)
    # A long socket timeout: a read that waited on the frozen server would take >= 2 s.
    cfg = dataclasses.replace(base, redis=dataclasses.replace(base.redis, socket_timeout_s=2.0))
    assert isinstance(cfg.redis, RedisConfig)
    async with LocklessRegistry(cfg, instance="paused") as registry:
        await _fill(registry, 20)
        fault_server.pause()
        try:
            slowest = 0.0
            deadline = time.monotonic() + 10.0
            reads = 0
            while registry.mode is not Mode.LOCAL_ONLY:
                assert time.monotonic() < deadline, "no LOCAL_ONLY within 10 s of SIGSTOP"
                started = time.monotonic()
                node = await registry.get_node("p", f"n{reads % 20}")
                slowest = max(slowest, time.monotonic() - started)
                assert node is not None
                reads += 1
                await asyncio.sleep(0.01)
            assert registry.metrics()["version_checks"] > 0  # L2_ONLY was passed through
            assert slowest < 1.0, f"a read blocked {slowest:.3f} s on the frozen server"
            for i in range(20):
                assert (await registry.read_node("p", f"n{i}")).stale
        finally:
            fault_server.resume()
        await eventually(lambda: registry.mode is Mode.NORMAL, 10.0, "NORMAL after SIGCONT")
        store = store_for(cfg)
        truth = await redis_view(store, "p")
        assert cache_view(registry, "p") == truth
        await store.close()


async def test_stale_reads_are_refused_past_the_bound_when_configured(fault_server, ns: str) -> None:
    cfg = fast_config(fault_server.url, ns, staleness_bound_s=0.3, stale_reads="refuse")
    async with LocklessRegistry(cfg, instance="strict") as registry:
        await _fill(registry, 2)
        await asyncio.to_thread(fault_server.stop)
        await eventually(lambda: registry.last_sync_age() > 0.3, 3.0, "the bound to pass")
        with pytest.raises(StaleRead, match="staleness bound"):
            await registry.get_node("p", "n0")
        with pytest.raises(StaleRead):
            await registry.select_nodes("p")
        assert registry.metrics()["stale_refusals"] == 2


def _short_liveness(url: str, ns: str, grace_s: float) -> object:
    base = fast_config(url, ns)
    nodes = dataclasses.replace(base.nodes, dead_after_s=0.3, ttl_s=30.0, reap_grace_s=grace_s)
    return dataclasses.replace(base, nodes=nodes)


async def test_reaper_removes_dead_nodes_and_every_cache_hears_it(redis_url: str, ns: str) -> None:
    cfg = _short_liveness(redis_url, ns, grace_s=0.0)
    async with (
        LocklessRegistry(cfg, instance="reaper") as reaper,
        LocklessRegistry(cfg, instance="other") as other,
    ):
        await reaper.register_node(spec(1))
        await reaper.register_node(spec(2))
        await eventually(lambda: len(other.cached_nodes("p")) == 2, 2.0, "nodes cached")
        reaped: list[str] = []

        async def reap_until_dead() -> None:
            while "n1" not in reaped:
                await reaper.heartbeat("p", "n2")  # n2 stays alive
                reaped.extend(await reaper.reap_once())
                await asyncio.sleep(0.05)

        await asyncio.wait_for(reap_until_dead(), 3.0)
        assert reaped == ["n1"]
        await eventually(lambda: set(other.cached_nodes("p")) == {"n2"}, 2.0, "the reap event to reach other")
        assert reaper.metrics()["reaped"] == 1


async def test_reaper_waits_out_the_grace_period_after_an_outage(fault_server, ns: str) -> None:
    cfg = _short_liveness(fault_server.url, ns, grace_s=60.0)
    # Real time for the outage and its probes; the 60 s grace is jumped over, not waited for.
    clock = ManualClock(rate=1.0)
    async with LocklessRegistry(cfg, instance="graceful", clock=clock) as registry:
        await registry.register_node(spec(1))
        await _save(fault_server.url)
        await asyncio.to_thread(fault_server.stop)
        await eventually(lambda: registry.mode is Mode.LOCAL_ONLY, 5.0, "LOCAL_ONLY")
        await asyncio.to_thread(fault_server.start)
        await eventually(lambda: registry.mode is Mode.NORMAL, 8.0, "NORMAL")
        recovered = registry.state().last_recovered_at
        assert recovered is not None
        # n1 missed its heartbeats during the outage (dead_after is 0.3 s, and the outage was
        # longer), but it gets the grace: nothing is reaped until 60 s after the recovery.
        assert await registry.reap_once() == []
        clock.advance(recovered + 59.5 - clock.monotonic())
        assert await registry.reap_once() == []
        clock.advance(1.0)
        # Past the grace: reaped as soon as Redis's own clock says n1 is dead (0.3 s after
        # its last heartbeat, server time, which no test clock moves).
        reaped: list[str] = []

        async def reap() -> bool:
            reaped.extend(await registry.reap_once())
            return bool(reaped)

        await eventually_async(reap, 3.0, "n1 reaped after the grace period")
        assert reaped == ["n1"]
