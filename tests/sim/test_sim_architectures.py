"""The baselines (locked, direct) behave as Registries against a real Redis."""

from __future__ import annotations

import asyncio

import pytest

from lockless.config import RedisConfig, RegistryConfig
from lockless.core.snapshot import NodeSpec, Requirements
from lockless.errors import ConfigError, UnknownPool
from lockless.protocol import Heartbeat, Registry
from sim.architectures import ARCHITECTURES, LockedRegistry, build


@pytest.fixture(params=["locked", "direct"])
async def registry(request, redis_url: str, ns: str):
    config = RegistryConfig(pools=("p",), redis=RedisConfig(url=redis_url, namespace=ns))
    reg = build(request.param, config, instance="t")
    await reg.start()
    yield reg
    await reg.close()


def _spec(i: int, **kw) -> NodeSpec:
    return NodeSpec(node_id=f"n{i}", pool="p", max_jobs=kw.pop("max_jobs", 2), **kw)


async def test_is_a_registry(registry: Registry) -> None:
    assert isinstance(registry, Registry)
    assert registry.name in ("locked", "direct")


async def test_register_get_select_remove(registry: Registry) -> None:
    v = await registry.register_node(_spec(1, labels=frozenset({"gpu"})))
    await registry.register_node(_spec(2))
    assert v > 0
    node = await registry.get_node("p", "n1")
    assert node is not None and node.version == v and "gpu" in node.labels
    sel = await registry.select_nodes("p", 2)
    assert set(sel.node_ids) == {"n1", "n2"}
    only_gpu = await registry.select_nodes("p", 2, Requirements(labels=frozenset({"gpu"})))
    assert only_gpu.node_ids == ("n1",)
    assert await registry.remove_node("p", "n1") is True
    assert await registry.get_node("p", "n1") is None
    assert (await registry.select_nodes("p", 2)).node_ids == ("n2",)


async def test_admission_control_and_idempotent_finish(registry: Registry) -> None:
    await registry.register_node(_spec(1, max_jobs=1))
    assert (await registry.job_start("p", "n1", "j1")).admitted
    refused = await registry.job_start("p", "n1", "j2")
    assert not refused.admitted and refused.reason == "full"
    assert await registry.job_finish("p", "n1", "j1") is True
    assert await registry.job_finish("p", "n1", "j1") is False
    placement = await registry.place_job("p", "j3")
    assert placement.node_id == "n1"


async def test_heartbeat_many_recreates_unknown_nodes(registry: Registry) -> None:
    beats = [Heartbeat(pool="p", node_id=f"n{i}", spec=_spec(i)) for i in range(5)]
    results = await registry.heartbeat_many(beats)
    assert all(r.recreated for r in results)
    assert len((await registry.select_nodes("p", 5)).picks) == 5


async def test_unknown_pool_is_refused(registry: Registry) -> None:
    with pytest.raises(UnknownPool, match="unknown pool 'other'"):
        await registry.get_node("other", "n1")


async def test_locked_serialises_reads_and_writes(redis_url: str, ns: str) -> None:
    reg = LockedRegistry(RegistryConfig(pools=("p",), redis=RedisConfig(url=redis_url, namespace=ns)))
    await reg.start()
    try:
        await reg.register_node(_spec(1))
        async with reg._lock:  # hold the one lock: a read must wait for it
            read = asyncio.ensure_future(reg.get_node("p", "n1"))
            await asyncio.sleep(0)
            assert not read.done()
        assert (await read) is not None
    finally:
        await reg.close()


def test_unknown_architecture() -> None:
    with pytest.raises(ConfigError) as info:
        build("cached", RegistryConfig())
    assert info.value.allowed == " | ".join(ARCHITECTURES)
    assert {"lockless", "locked", "direct", "ttl-cache", "redis-select"} <= set(ARCHITECTURES)
