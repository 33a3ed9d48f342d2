"""lockless: a scheduler's lock-free, event-invalidated cache of the Redis node registry.

Typical use (one instance per scheduler process)::

    from lockless import LocklessRegistry, RegistryConfig, NodeSpec, Requirements

    config = RegistryConfig.from_mapping({"pools": ["gpu"], "redis": {"url": "redis://127.0.0.1:6379/0"}})
    async with LocklessRegistry(config, instance="sched-1") as registry:
        await registry.register_node(NodeSpec(node_id="n1", pool="gpu", max_jobs=4))
        placement = await registry.place_job("gpu", "job-1", Requirements())

Modules are private; what is exported here is the public API. Besides the registry, the
library's building blocks are public so that other architectures (the harness's
baselines) can reuse exactly the same write path, selection and metrics: ``RedisStore``
(every Lua script and read), ``select`` (placement selection over a pool view),
``place`` (select-then-admit over any ``Registry``), ``Metrics``, ``parse_node_hash``
(the strict record codec) and ``SCRIPTS`` (name -> Lua body of every write script, for
a baseline that composes the library's admission into a script of its own).
"""

from lockless.aio import cancel_and_wait
from lockless.clock import Clock, ManualClock, SystemClock
from lockless.config import (
    CacheConfig,
    JournalConfig,
    NodeLifecycleConfig,
    RedisConfig,
    RegistryConfig,
    SubscriberConfig,
)
from lockless.core.modes import Mode, ModeSwitch, ModeThresholds
from lockless.core.selection import PoolView, Selection, is_placeable, placement_key, select
from lockless.core.snapshot import NodeSnapshot, NodeSpec, Requirements, parse_node_hash
from lockless.errors import (
    ConfigError,
    JournalFull,
    LocklessError,
    MalformedRecord,
    RedisUnavailable,
    StaleRead,
    TlsError,
    UnknownPool,
    WriteNotReplicated,
)
from lockless.metrics import (
    HistogramSummary,
    Metrics,
    MetricsSnapshot,
    PrometheusCollector,
    new_histogram,
    to_prometheus,
)
from lockless.protocol import (
    PLACEMENT_CANDIDATES,
    Admission,
    Heartbeat,
    HeartbeatResult,
    Placement,
    ReadResult,
    Registry,
    place,
)
from lockless.redis.keys import KeySpace
from lockless.redis.pool_reader import LogRead, PoolListing
from lockless.redis.scripts import ALL as SCRIPTS
from lockless.redis.store import RedisStore
from lockless.registry import LocklessRegistry, RegistryState

__all__ = [
    "PLACEMENT_CANDIDATES",
    "SCRIPTS",
    "Admission",
    "CacheConfig",
    "Clock",
    "ConfigError",
    "Heartbeat",
    "HeartbeatResult",
    "HistogramSummary",
    "JournalConfig",
    "JournalFull",
    "KeySpace",
    "LocklessError",
    "LocklessRegistry",
    "LogRead",
    "MalformedRecord",
    "ManualClock",
    "Metrics",
    "MetricsSnapshot",
    "Mode",
    "ModeSwitch",
    "ModeThresholds",
    "NodeLifecycleConfig",
    "NodeSnapshot",
    "NodeSpec",
    "Placement",
    "PoolListing",
    "PoolView",
    "PrometheusCollector",
    "ReadResult",
    "RedisConfig",
    "RedisStore",
    "RedisUnavailable",
    "Registry",
    "RegistryConfig",
    "RegistryState",
    "Requirements",
    "Selection",
    "StaleRead",
    "SubscriberConfig",
    "SystemClock",
    "TlsError",
    "UnknownPool",
    "WriteNotReplicated",
    "cancel_and_wait",
    "is_placeable",
    "new_histogram",
    "parse_node_hash",
    "place",
    "placement_key",
    "select",
    "to_prometheus",
]
