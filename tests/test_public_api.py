"""The package's public API: what ``lockless`` exports, used as its docstring shows."""

from __future__ import annotations

import lockless
from lockless import LocklessRegistry, NodeSpec, RegistryConfig, Requirements


def test_every_exported_name_exists() -> None:
    missing = [name for name in lockless.__all__ if not hasattr(lockless, name)]
    assert missing == []


async def test_the_docstring_example_places_a_job(redis_url: str, ns: str) -> None:
    config = RegistryConfig.from_mapping({"pools": ["gpu"], "redis": {"url": redis_url, "namespace": ns}})
    async with LocklessRegistry(config, instance="sched-1") as registry:
        await registry.register_node(NodeSpec(node_id="n1", pool="gpu", max_jobs=4))
        placement = await registry.place_job("gpu", "job-1", Requirements())
        assert placement.node_id == "n1"
        node = await registry.get_node("gpu", "n1")
        assert node is not None and node.current_jobs == 1
