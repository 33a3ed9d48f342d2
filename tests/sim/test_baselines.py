"""The baselines a team would build instead behave as designed, on a real Redis.

* redis-select places in one round trip, samples instead of scanning (power of two), picks
  the least utilised node (least_loaded), skips dead nodes and never over-commits;
* ttl-cache serves reads from its relisted view, assumes its own admissions at once, and
  does not see another writer's until it relists (the conflicts the harness counts);
* locked records where its time goes (lock wait, Redis, parse, select).
"""

from __future__ import annotations

import asyncio

from lockless import NodeSpec, RedisStore
from sim.architectures import BaselineOptions, build
from sim.architectures.pool_read import read_pool
from sim.probe import command_stats
from tests.support import fast_config


def _spec(i: int, max_jobs: int = 4, pool: str = "p") -> NodeSpec:
    return NodeSpec(node_id=f"n{i:03d}", pool=pool, max_jobs=max_jobs, resources={"cpu": 8.0})


async def _setup(redis_url: str, ns: str, n: int, max_jobs: int = 4) -> RedisStore:
    cfg = fast_config(redis_url, ns)
    store = RedisStore(cfg.redis, cfg.nodes)
    await store.load_scripts()
    await store.register_many([_spec(i, max_jobs) for i in range(n)])
    return store


async def _delta(store: RedisStore, coro) -> dict[str, int]:
    before = await command_stats(store.client)
    await coro
    after = await command_stats(store.client)
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


async def test_redis_select_places_in_one_script_call_and_samples_instead_of_scanning(
    redis_url: str, ns: str
) -> None:
    store = await _setup(redis_url, ns, 300)
    reg = build("redis-select", fast_config(redis_url, ns, policy="power_of_two"), instance="rs")
    await reg.start()
    try:

        async def place_many() -> None:
            for k in range(20):
                assert (await reg.place_job("p", f"j{k}")).placed

        delta = await _delta(store, place_many())
        delta.pop("info", None)
        assert delta["evalsha"] == 20  # one call per placement
        # Sampling: a few HMGETs per placement, never one per node of the 300.
        assert delta["hmget"] <= 20 * 20
        assert sum(delta.values()) / 20 < 60
    finally:
        await reg.close()
        await store.close()


async def test_redis_select_least_loaded_picks_the_least_utilised_live_node(redis_url: str, ns: str) -> None:
    store = await _setup(redis_url, ns, 4, max_jobs=4)
    for i, jobs in enumerate((3, 1, 2, 0)):
        for j in range(jobs):
            await store.job_start("p", f"n{i:03d}", f"pre-{i}-{j}")
    # n003 (0 jobs) looks best but its heartbeat is older than dead_after: never picked.
    await store.client.zadd(store.keys.alive("p"), {"n003": 1})
    reg = build("redis-select", fast_config(redis_url, ns, policy="least_loaded"), instance="rs")
    await reg.start()
    try:
        picked = await reg.select_nodes("p", 2)
        assert picked.node_ids == ("n001", "n002")
        assert picked.filtered.get("not alive") == 1 and picked.exhaustive
        placement = await reg.place_job("p", "new")
        assert placement.node_id == "n001" and placement.rejected == ()
        assert (await store.get_node("p", "n001")).current_jobs == 2
    finally:
        await reg.close()
        await store.close()


async def test_redis_select_never_overcommits_under_concurrent_instances(redis_url: str, ns: str) -> None:
    store = await _setup(redis_url, ns, 1, max_jobs=3)
    regs = [build("redis-select", fast_config(redis_url, ns), instance=f"rs{k}") for k in range(3)]
    await asyncio.gather(*(r.start() for r in regs))
    try:
        placements = await asyncio.gather(*(regs[k % 3].place_job("p", f"j{k}") for k in range(12)))
        assert sum(p.placed for p in placements) == 3
        assert (await store.get_node("p", "n000")).current_jobs == 3
        assert all(p.rejected == () for p in placements)  # selection saw the truth: no conflicts
    finally:
        await asyncio.gather(*(r.close() for r in regs))
        await store.close()


async def test_ttl_cache_assumes_its_own_admissions_but_not_other_writers(redis_url: str, ns: str) -> None:
    store = await _setup(redis_url, ns, 1, max_jobs=2)
    # Never relists after start: what it knows of other writers is what it read then.
    reg = build(
        "ttl-cache", fast_config(redis_url, ns), instance="ttl", options=BaselineOptions(refresh_s=3600)
    )
    await reg.start()
    try:
        assert (await reg.place_job("p", "mine")).placed
        assert (await reg.get_node("p", "n000")).current_jobs == 1  # assumed at once, no Redis read
        await store.job_start("p", "n000", "someone-else")  # another instance takes the last slot
        assert (await reg.get_node("p", "n000")).current_jobs == 1  # unseen: no events, no relist yet
        conflict = await reg.place_job("p", "late")
        assert not conflict.placed and conflict.rejected == ("n000",)  # admission refused: full
        # The refusal carried the truth, so the view is now right and nothing else is tried.
        assert (await reg.get_node("p", "n000")).current_jobs == 2
        assert reg.last_sync_age() > 0
    finally:
        await reg.close()
        await store.close()


async def test_ttl_cache_relists_within_refresh_and_keeps_newer_assumptions(redis_url: str, ns: str) -> None:
    store = await _setup(redis_url, ns, 2)
    reg = build(
        "ttl-cache", fast_config(redis_url, ns), instance="ttl", options=BaselineOptions(refresh_s=0.05)
    )
    await reg.start()
    try:
        await store.job_start("p", "n001", "other")
        deadline = asyncio.get_running_loop().time() + 3.0
        while (await reg.get_node("p", "n001")).current_jobs != 1:
            assert asyncio.get_running_loop().time() < deadline, "relist never showed another writer's job"
            await asyncio.sleep(0.01)
        assert reg.last_sync_age() < 3.0
        view = await reg.cached_view("p")
        assert set(view) == {"n000", "n001"}
    finally:
        await reg.close()
        await store.close()


async def test_locked_records_where_a_placement_spends_its_time(redis_url: str, ns: str) -> None:
    store = await _setup(redis_url, ns, 50)
    reg = build("locked", fast_config(redis_url, ns), instance="lk")
    await reg.start()
    try:
        delta = await _delta(store, reg.place_job("p", "j"))
        # One HMGET of the selection fields per node; the admission script does one HMGET and one
        # HGETALL (its event's record) of its own. No whole-record read of the pool.
        assert delta["hmget"] == 50 + 1 and delta["hgetall"] == 1
        hist = reg.metrics().histograms
        for name in ("lock_wait_us", "redis_read_us", "parse_us", "select_us"):
            assert hist[name].count >= 1, name
    finally:
        await reg.close()
        await store.close()


async def test_a_selection_read_builds_only_nodes_that_can_take_a_job(redis_url: str, ns: str) -> None:
    store = await _setup(redis_url, ns, 5, max_jobs=1)
    await store.job_start("p", "n000", "a")
    await store.job_start("p", "n001", "b")
    try:
        lean = await read_pool(store, "p", batch=2, full=False)
        assert sorted(n.node_id for n in lean.nodes) == ["n002", "n003", "n004"]
        assert len(lean.view.nodes) == 5 and len(lean.view.placeable) == 3  # full ones counted, not built
        full = await read_pool(store, "p", batch=2, full=True)
        assert len(full.nodes) == 5 and full.records == 5
    finally:
        await store.close()
