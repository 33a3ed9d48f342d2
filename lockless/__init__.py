"""lockless: a scheduler's lock-free, event-invalidated cache of the Redis node registry.

Typical use (one instance per scheduler process)::

    from lockless import LocklessRegistry, RegistryConfig, NodeSpec, Requirements

    config = RegistryConfig.from_mapping({"pools": ["gpu"], "redis": {"url": "redis://127.0.0.1:6379/0"}})
    async with LocklessRegistry(config, instance="sched-1") as registry:
        await registry.register_node(NodeSpec(node_id="n1", pool="gpu", max_jobs=4))
        placement = await registry.place_job("gpu", "job-1", Requirements())

Modules are private; what is exported here is the public API.
"""

from lockless.config import (
    CacheConfig,
    JournalConfig,
    NodeLifecycleConfig,
    RedisConfig,
    RegistryConfig,
    SubscriberConfig,
)
from lockless.core.modes import Mode, ModeSwitch, ModeThresholds
from lockless.core.selection import Selection
from lockless.core.snapshot import NodeSnapshot, NodeSpec, Requirements
from lockless.errors import (
    ConfigError,
    JournalFull,
    LocklessError,
    MalformedRecord,
    RedisUnavailable,
    StaleRead,
    UnknownPool,
)
from lockless.metrics import MetricsSnapshot
from lockless.protocol import Admission, Heartbeat, HeartbeatResult, Placement, ReadResult, Registry
from lockless.registry import LocklessRegistry

__all__ = [
    "Admission",
    "CacheConfig",
    "ConfigError",
    "Heartbeat",
    "HeartbeatResult",
    "JournalConfig",
    "JournalFull",
    "LocklessError",
    "LocklessRegistry",
    "MalformedRecord",
    "MetricsSnapshot",
    "Mode",
    "ModeSwitch",
    "ModeThresholds",
    "NodeLifecycleConfig",
    "NodeSnapshot",
    "NodeSpec",
    "Placement",
    "ReadResult",
    "RedisConfig",
    "RedisUnavailable",
    "Registry",
    "RegistryConfig",
    "Requirements",
    "Selection",
    "StaleRead",
    "SubscriberConfig",
    "UnknownPool",
]
