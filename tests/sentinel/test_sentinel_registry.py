"""The library through Sentinel: a LocklessRegistry on a ``redis+sentinel://`` URL or config fields.

On a live primary + replica + three sentinels (``sentinel_group``): the primary is found
through the sentinels for commands and for the event stream, and after the primary is
killed both paths move to the new one by themselves, the subscriber's move counting as a
gap to repair (a reconnect and a catch-up), within a deadline. The time from the kill
until both paths have followed is printed (``-s``), never asserted as a speed: the bench
``python -m tests.bench.sentinel_follow_bench`` measures it over many failovers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from lockless import LocklessRegistry, RedisConfig, RedisUnavailable, RegistryConfig
from lockless.redis.connection import ConnectionFactory
from sim.sentinel_server import SentinelGroup
from tests.sentinel.follow import FAULTS, fail_over_and_follow, keys_on
from tests.support import fast_config, two_instances_see_each_other

# Generous: a failover takes 2-3 s on this machine (sim/sentinel_server.py), then the
# instances reconnect with backoff (reconnect_max_s 0.2 in fast_config) and repair.
FOLLOW_DEADLINE_S = 20.0


@pytest.fixture
def restore(sentinel_group: SentinelGroup) -> Iterator[None]:
    """Leave the shared group with one primary and one replica, whatever the test did."""
    yield
    if sentinel_group.degraded:
        sentinel_group.restart_old_primary()


def sentinel_config(group: SentinelGroup, ns: str, *, fields: bool = False) -> RegistryConfig:
    """A fast config reaching ``group`` through its URL or, with ``fields``, the config fields."""
    if not fields:
        return fast_config(group.url, ns)
    config = fast_config("redis:///0", ns)
    sentinels = tuple(f"{host}:{port}" for host, port in group.sentinel_addresses)
    redis = dataclasses.replace(config.redis, sentinels=sentinels, sentinel_service=group.service_name)
    return dataclasses.replace(config, redis=redis)


@pytest.mark.parametrize("fields", [False, True], ids=["url", "fields"])
async def test_commands_and_events_reach_the_primary_through_the_sentinels(
    sentinel_group: SentinelGroup, ns: str, fields: bool
) -> None:
    config = sentinel_config(sentinel_group, ns, fields=fields)
    await two_instances_see_each_other(config)
    # What they wrote is on the primary the sentinels name.
    assert keys_on(sentinel_group.primary, ns)


async def test_a_wrong_service_name_is_a_clear_error_at_start(sentinel_group: SentinelGroup, ns: str) -> None:
    config = fast_config(sentinel_group.url.replace(f"/{sentinel_group.service_name}/", "/nosuch/"), ns)
    registry = LocklessRegistry(config, instance="a")
    with pytest.raises(RedisUnavailable) as caught:
        await registry.start(timeout=10.0)
    await registry.close()
    text = str(caught.value)
    assert "no sentinel of redis+sentinel://" in text and "named the primary of 'nosuch'" in text
    assert text.count("answered no primary by that name") == 3, text


async def test_a_dead_sentinel_is_skipped(sentinel_group: SentinelGroup) -> None:
    # The first sentinel listed is not listening at all; the others answer.
    hosts = ",".join(f"{h}:{p}" for h, p in sentinel_group.sentinel_addresses)
    dead = sentinel_group.sentinels[0].port + 10_000 if sentinel_group.sentinels[0].port < 55_000 else 1
    url = f"redis+sentinel://127.0.0.1:{dead},{hosts}/{sentinel_group.service_name}/0"
    factory = ConnectionFactory(RedisConfig(url=url, connect_timeout_s=0.5))
    assert await factory.primary_address() == sentinel_group.primary_address()


@pytest.mark.usefixtures("restore")
@pytest.mark.parametrize("fault", FAULTS)
async def test_a_failed_primary_is_followed_by_commands_and_events(
    sentinel_group: SentinelGroup, ns: str, fault: str
) -> None:
    # kill: connections break at once. pause (SIGSTOP): they stay open and go unanswered, so
    # only the timeouts (the subscriber's PONG deadline, the commands' socket timeout) end them.
    followed = await fail_over_and_follow(sentinel_group, sentinel_config(sentinel_group, ns), fault=fault)
    # The move is a gap to repair: each stream was lost, re-established on the new primary, caught up.
    assert all(n >= 1 for n in followed.reconnects.values()), followed.reconnects
    times = ", ".join(f"{name} {s:.2f} s" for name, s in followed.follow_s.items())
    print(
        f"\n[{sentinel_group.server}] {fault} -> promoted {followed.failover.first_sentinel_s:.2f} s; "
        f"back to NORMAL on the new primary: {times} (after the {fault})"
    )
