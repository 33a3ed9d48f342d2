"""One behavioural suite for every architecture behind the ``Registry`` protocol.

The harness compares lockless and every baseline (locked, direct, ttl-cache,
redis-select) on the same workload; that comparison is only fair if they behave the same.
Every test here runs against all of them, on the real Redis. Reads go through
``eventually`` because a cache sees a write when its event arrives (lockless: milliseconds)
or at its next relist (ttl-cache: ``refresh_s``, 0.1 s here), while the others read Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from lockless.core.snapshot import NodeSpec, Requirements
from lockless.errors import UnknownPool
from lockless.metrics import MetricsSnapshot
from lockless.protocol import Heartbeat, Registry
from sim.architectures import ARCHITECTURES, BaselineOptions, build
from tests.support import eventually_async, fast_config, store_for

#: A quick relist, so the ttl-cache's view catches up well inside the tests' deadlines.
OPTIONS = BaselineOptions(refresh_s=0.1)


@pytest.fixture(params=ARCHITECTURES)
async def registry(request: pytest.FixtureRequest, redis_url: str, ns: str) -> AsyncIterator[Registry]:
    config = fast_config(redis_url, ns, pools=("p", "q"))
    reg = build(request.param, config, instance=f"{request.param}-0", options=OPTIONS)
    await reg.start()
    yield reg
    await reg.close()


def node(i: int, *, pool: str = "p", max_jobs: int = 2, labels: tuple[str, ...] = ()) -> NodeSpec:
    return NodeSpec(
        node_id=f"n{i}", pool=pool, max_jobs=max_jobs, resources={"cpu": 4.0 * (i + 1)}, labels=labels
    )


async def visible(registry: Registry, node_id: str, *, pool: str = "p", version: int = 0) -> None:
    async def check() -> bool:
        snap = await registry.get_node(pool, node_id)
        return snap is not None and snap.version >= version

    await eventually_async(check, 3.0, f"{node_id} at version >= {version}")


async def test_implements_the_protocol(registry: Registry) -> None:
    assert isinstance(registry, Registry)
    assert registry.name in ARCHITECTURES
    assert isinstance(registry.metrics(), MetricsSnapshot)


async def test_register_then_read(registry: Registry) -> None:
    version = await registry.register_node(node(1, labels=("gpu",)))
    assert version >= 1
    await visible(registry, "n1", version=version)
    snap = await registry.get_node("p", "n1")
    assert snap is not None
    assert (snap.max_jobs, snap.current_jobs, snap.labels, snap.resources["cpu"]) == (2, 0, {"gpu"}, 8.0)
    assert await registry.get_node("p", "absent") is None


async def test_unknown_pool_is_a_clear_error(registry: Registry) -> None:
    with pytest.raises(UnknownPool, match="unknown pool 'nope'"):
        await registry.get_node("nope", "n1")
    with pytest.raises(UnknownPool):
        await registry.select_nodes("nope")


async def test_selection_honours_requirements_and_explains_the_rest(registry: Registry) -> None:
    for i in range(4):
        await registry.register_node(node(i, labels=("gpu",) if i == 3 else ()))
    for i in range(4):
        await visible(registry, f"n{i}")
    picked = await registry.select_nodes("p", 1, Requirements(labels={"gpu"}))
    assert picked.node_ids == ("n3",)
    none = await registry.select_nodes("p", 1, Requirements(resources={"cpu": 1000.0}))
    assert none.picks == ()
    assert none.filtered == {"short of cpu": 4}
    assert "0 of 4" in none.explain()


async def test_capacity_is_never_exceeded_and_finishing_frees_a_slot(registry: Registry) -> None:
    version = await registry.register_node(node(1, max_jobs=2))
    await visible(registry, "n1", version=version)
    outcomes = [await registry.place_job("p", f"j{k}") for k in range(4)]
    assert [o.placed for o in outcomes] == [True, True, False, False]
    assert {o.node_id for o in outcomes if o.placed} == {"n1"}
    truth_store = store_for(fast_config(registry_url(registry), registry_ns(registry)))
    truth = await truth_store.get_node("p", "n1")
    await truth_store.close()
    assert truth is not None and truth.current_jobs == 2
    assert await registry.job_finish("p", "n1", "j0")
    assert not await registry.job_finish("p", "n1", "j0")  # idempotent
    assert (await registry.job_start("p", "n1", "j9")).admitted
    assert (await registry.job_start("p", "n1", "j9")).reason == "already_admitted"


async def test_heartbeats_quiet_and_changing(registry: Registry) -> None:
    await registry.register_node(node(1))
    quiet = await registry.heartbeat("p", "n1", load=0.01)
    assert not quiet.changed
    loud = await registry.heartbeat("p", "n1", load=0.9)
    assert loud.changed and loud.version > quiet.version
    results = await registry.heartbeat_many(
        [Heartbeat(pool="p", node_id="n1", load=0.9), Heartbeat(pool="p", node_id="n2", spec=node(2))]
    )
    assert [r.changed for r in results] == [False, True]
    assert results[1].recreated
    await visible(registry, "n2")


async def test_removed_nodes_disappear_and_are_not_selected(registry: Registry) -> None:
    await registry.register_node(node(1))
    await registry.register_node(node(2))
    await visible(registry, "n1")
    assert await registry.remove_node("p", "n1")
    assert not await registry.remove_node("p", "n1")

    async def gone() -> bool:
        return await registry.get_node("p", "n1") is None

    await eventually_async(gone, 3.0, "removal visible")
    for _ in range(20):
        assert "n1" not in (await registry.select_nodes("p", 2)).node_ids


def registry_url(registry: Registry) -> str:
    return registry.config.redis.url  # type: ignore[attr-defined]


def registry_ns(registry: Registry) -> str:
    return registry.config.redis.namespace  # type: ignore[attr-defined]


async def test_status_surface_is_uniform(registry: Registry) -> None:
    # What the harness reads of every architecture, without probing for optional methods.
    assert registry.mode_switches() == ()  # a healthy start switches nothing
    assert registry.last_sync_age() >= 0.0
    assert registry.take_replay_rejections() == []  # nothing was journaled
    version = await registry.register_node(node(1))
    view = await registry.cached_view("p")
    if view is None:  # an architecture without a cache says so
        assert registry.name not in ("lockless", "ttl-cache")
    else:

        async def cached() -> bool:
            got = await registry.cached_view("p")
            return got is not None and "n1" in got and got["n1"].version >= version

        await eventually_async(cached, 3.0, "n1 in the cached view")
    with pytest.raises(UnknownPool):
        await registry.cached_view("nope")


async def test_place_job_admits_until_full(registry: Registry) -> None:
    await registry.register_node(node(1, max_jobs=1))
    await visible(registry, "n1")
    first = await registry.place_job("p", "j1")
    assert first.placed and first.node_id == "n1" and first.rejected == ()
    await eventually_async(
        lambda: _full(registry, "n1"), 3.0, "n1 seen full"
    )
    second = await registry.place_job("p", "j2")
    assert not second.placed  # the only node is full: nothing to pick, nothing admitted
    assert second.reason


async def _full(registry: Registry, node_id: str) -> bool:
    snap = await registry.get_node("p", node_id)
    return snap is not None and snap.current_jobs == snap.max_jobs
