"""One failover under two LocklessRegistry instances, and how long they took to follow it.

Shared by ``test_sentinel_registry.py`` (one failover, checked) and
``tests/bench/sentinel_follow_bench.py`` (many, timed).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import redis

from lockless import LocklessRegistry, Mode, NodeSpec, RegistryConfig
from sim.redis_server import RedisServer
from sim.sentinel_server import Failover, SentinelGroup
from tests.support import eventually

FAULTS = ("kill", "pause")


def keys_on(server: RedisServer, ns: str) -> set[str]:
    """The keys of namespace ``ns`` on one data node (read directly, not through the library)."""
    client = redis.Redis(host=server.host, port=server.port, socket_timeout=2.0, decode_responses=True)
    try:
        return set(client.keys(f"{ns}*"))
    finally:
        client.close()


@dataclass(frozen=True)
class Followed:
    """What one failover cost two instances."""

    failover: Failover
    #: Per instance: seconds from the fault until its last switch back to NORMAL, i.e. until
    #: its probes (commands) answered on the new primary, its event stream was subscribed
    #: there again, and its pools were repaired (NORMAL needs all three).
    follow_s: dict[str, float]
    #: Per instance: the ``reconnects`` and ``gaps`` counters after the failover.
    reconnects: dict[str, int]


async def fail_over_and_follow(
    group: SentinelGroup, config: RegistryConfig, *, fault: str = "kill", deadline_s: float = 20.0
) -> Followed:
    """Two instances on ``config``; fail the primary of ``group``; return once both are NORMAL again.

    Then checks that both paths really moved: an admission made after the failover is on
    the new primary, and the other instance sees it live through its subscriber. Leaves
    the group degraded (the caller restarts the old primary).
    """
    if fault not in FAULTS:
        raise ValueError(f"fault: got {fault!r}; allowed: {', '.join(FAULTS)}")
    ns = config.redis.namespace
    async with LocklessRegistry(config, instance="a") as a, LocklessRegistry(config, instance="b") as b:
        await a.register_node(NodeSpec(node_id="n1", pool="p", max_jobs=100))
        await eventually(lambda: b.cached("p", "n1") is not None, 5.0, "b to see n1")
        # Replication is asynchronous: the fault must not be what loses the registration.
        written = keys_on(group.primary, ns)
        await eventually(lambda: written <= keys_on(group.replica, ns), 5.0, "the replica to hold n1")

        faulted_at = time.monotonic()
        inject = group.kill_primary if fault == "kill" else group.pause_primary
        failover = await asyncio.to_thread(inject)
        await eventually(
            lambda: all(r.mode is Mode.NORMAL and r.caught_up() for r in (a, b)),
            deadline_s,
            f"both instances back to NORMAL after the {fault}",
        )
        follow_s = {}
        for registry in (a, b):
            switches = registry.mode_switches()
            left = [s for s in switches if s.at >= faulted_at and s.to_mode is not Mode.NORMAL]
            assert left, f"{registry.instance} never left NORMAL after the {fault}: {switches}"
            back = [s for s in switches if s.to_mode is Mode.NORMAL]
            follow_s[registry.instance] = back[-1].at - faulted_at

        # Commands: an admission made now lands on the new primary...
        seen_before = a.metrics().histograms["propagation_us"].count
        assert (await b.job_start("p", "n1", "after-failover")).admitted
        assert group.primary_address() == failover.new_primary
        assert written <= keys_on(group.primary, ns)
        # ...and events: a sees it live, through its subscriber on the new primary.
        await eventually(
            lambda: (n := a.cached("p", "n1")) is not None and n.current_jobs >= 1,
            5.0,
            "a to see the admission made after the failover",
        )
        assert a.metrics().histograms["propagation_us"].count > seen_before
        reconnects = {r.instance: r.metrics()["reconnects"] for r in (a, b)}
    return Followed(failover=failover, follow_s=follow_s, reconnects=reconnects)
