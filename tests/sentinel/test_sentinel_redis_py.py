"""A real Sentinel deployment with plain redis-py: discovery, failover, and what a client sees.

These prove :class:`sim.sentinel_server.SentinelGroup` and pin down redis-py's own
behaviour on a failover, which the library builds on (issue 14):

- commands (``master_for``, a ``SentinelConnectionPool``): between the fault and the
  promotion a call raises ``ConnectionError`` ("Error 111 connecting", while the
  sentinels still name the dead primary) or its subclass ``MasterNotFoundError`` (once
  they flag it down); after the promotion the next call reconnects through the
  sentinels to the new primary by itself. A paused primary costs one ``TimeoutError``.
- pub/sub: after a kill, one ``get_message`` raises ``ConnectionError`` and, inside
  that same call, redis-py reconnects through the sentinels and re-subscribes; the
  next ``get_message`` returns a ``subscribe`` confirmation: the only sign of the gap.
  After a pause there is no error at all: the subscriber sits on the frozen primary,
  messages published on the new one reach nobody and are lost for good.

Failover times are printed (run with ``-s``), never asserted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio as aredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import NoBackoff

from lockless import RedisConfig
from lockless.redis.connection import ConnectionFactory
from sim.redis_server import ServerBinary
from sim.sentinel_server import Failover, SentinelError, SentinelGroup

SOCKET_TIMEOUT_S = 0.5


@pytest.fixture
async def sentinel(sentinel_group: SentinelGroup) -> AsyncIterator[Sentinel]:
    # No retries: the library sets its own (DESIGN §9), and retries would hide what surfaces.
    client = Sentinel(
        sentinel_group.sentinel_addresses,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )
    yield client
    await close_sentinel(client)


async def close_sentinel(client: Sentinel) -> None:
    # Sentinel.aclose() exists in redis-py 8.1, not in 6.0; closing its clients works on both.
    for sentinel_client in client.sentinels:
        await sentinel_client.aclose()


@pytest.fixture
def restore(sentinel_group: SentinelGroup) -> Iterator[None]:
    """Leave the shared group with one primary and one replica, whatever the test did."""
    yield
    if sentinel_group.degraded:
        sentinel_group.restart_old_primary()


async def subscribed(client: aredis.Redis, channel: str) -> PubSub:
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    confirmation = await pubsub.get_message(timeout=2.0)
    assert confirmation is not None and confirmation["type"] == "subscribe"
    return pubsub


async def next_message(pubsub: PubSub, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while (message := await pubsub.get_message(timeout=0.2)) is None:
        assert time.monotonic() < deadline, f"no pub/sub message within {timeout} s"
    return message


def report(failover: Failover, server: str) -> None:
    moved = f"{failover.old_primary[1]} -> {failover.new_primary[1]}"
    print(
        f"\n[{server}] {failover.fault} -> promoted: first sentinel {failover.first_sentinel_s:.2f} s, "
        f"all sentinels {failover.all_sentinels_s:.2f} s (port {moved})"
    )


async def test_discovers_the_primary_and_replicates(
    sentinel_group: SentinelGroup, sentinel: Sentinel
) -> None:
    primary = sentinel_group.primary_address()
    assert await sentinel.discover_master(sentinel_group.service_name) == primary
    assert await sentinel.discover_slaves(sentinel_group.service_name) == [
        (sentinel_group.replica.host, sentinel_group.replica.port)
    ]
    master = sentinel.master_for(sentinel_group.service_name)
    try:
        await master.set("sentinel:k", "v")
        assert await master.wait(1, 2000) == 1  # the replica acknowledged it
        replica = aredis.Redis(host=sentinel_group.replica.host, port=sentinel_group.replica.port)
        assert await replica.get("sentinel:k") == b"v"
        await replica.aclose()
    finally:
        await master.aclose()


async def test_url_form_reaches_the_same_primary(sentinel_group: SentinelGroup) -> None:
    # The group's URL, as the library reads it, names the same sentinels and finds the same primary.
    factory = ConnectionFactory(RedisConfig(url=sentinel_group.url))
    assert list(factory.endpoint.sentinels) == sentinel_group.sentinel_addresses
    assert factory.endpoint.service_name == sentinel_group.service_name
    assert await factory.primary_address() == sentinel_group.primary_address()


@pytest.mark.usefixtures("restore")
async def test_kill_commands_and_pubsub_follow_the_new_primary(
    sentinel_group: SentinelGroup, sentinel: Sentinel, server_binary: ServerBinary
) -> None:
    service = sentinel_group.service_name
    master = sentinel.master_for(service)
    subscriber_client = sentinel.master_for(service)
    subscriber = await subscribed(subscriber_client, "sentinel:events")
    try:
        await master.set("sentinel:acked", "1")
        assert await master.wait(1, 2000) == 1

        # Probe with commands through the whole failover: only the ConnectionError family may surface.
        failover_task = asyncio.ensure_future(asyncio.to_thread(sentinel_group.kill_primary))
        window_errors: list[BaseException] = []
        while not failover_task.done():
            try:
                await master.set("sentinel:probe", "x")
            except redis.RedisError as exc:
                window_errors.append(exc)
            await asyncio.sleep(0.05)
        failover = await failover_task
        report(failover, str(server_binary))
        assert window_errors, "the dead primary was never noticed"
        # ConnectionError ("Error 111 connecting") while a sentinel still names the dead primary,
        # its subclass MasterNotFoundError while every sentinel flags it down (usually ~1 s;
        # none at all if the last sentinel flags it just as the leader promotes the replica).
        assert all(isinstance(e, redis.ConnectionError) for e in window_errors), window_errors
        kinds = sorted({type(e).__name__ for e in window_errors})
        assert set(kinds) <= {"ConnectionError", MasterNotFoundError.__name__}, kinds
        print(f"  errors in the window: {kinds}")

        # Commands: the pool follows by itself; the acknowledged write survived.
        await master.set("sentinel:after", "1")
        role = await master.execute_command("ROLE")
        assert role[0] in (b"master", "master")
        assert await master.get("sentinel:acked") == b"1"
        assert (await master.info("server"))["tcp_port"] == failover.new_primary[1]

        # Pub/sub: one ConnectionError, then a silent re-subscribe on the new primary.
        with pytest.raises(redis.ConnectionError):
            await subscriber.get_message(timeout=2.0)
        assert (await next_message(subscriber))["type"] == "subscribe"
        assert (subscriber.connection.host, subscriber.connection.port) == failover.new_primary
        assert await master.publish("sentinel:events", "after-kill") == 1
        assert (await next_message(subscriber))["data"] == b"after-kill"

        # The old primary rejoins as a replica of the new one.
        await asyncio.to_thread(sentinel_group.restart_old_primary)
        assert sentinel_group.primary_address() == failover.new_primary
        assert (sentinel_group.replica.host, sentinel_group.replica.port) == failover.old_primary
        await master.set("sentinel:rejoined", "1")
        assert await master.wait(1, 2000) == 1
    finally:
        await subscriber.aclose()
        await subscriber_client.aclose()
        await master.aclose()


@pytest.mark.usefixtures("restore")
async def test_pause_leaves_the_subscriber_silent_on_the_frozen_primary(
    sentinel_group: SentinelGroup, sentinel: Sentinel, server_binary: ServerBinary
) -> None:
    service = sentinel_group.service_name
    master = sentinel.master_for(service)
    subscriber_client = sentinel.master_for(service)
    subscriber = await subscribed(subscriber_client, "sentinel:events")
    try:
        assert await master.ping()
        failover = await asyncio.to_thread(sentinel_group.pause_primary)
        report(failover, str(server_binary))

        # Commands: the pooled connection to the frozen primary times out once, then the pool follows.
        with pytest.raises(redis.TimeoutError):
            await master.set("sentinel:k", "1")
        await master.set("sentinel:k", "1")
        assert (await master.info("server"))["tcp_port"] == failover.new_primary[1]

        # Pub/sub: no error, no message; what the new primary publishes reaches nobody.
        assert await subscriber.get_message(timeout=2 * SOCKET_TIMEOUT_S) is None
        assert await master.publish("sentinel:events", "lost") == 0

        # The old primary returns and is converted as Sentinel does (its clients killed):
        # the subscriber reconnects to the new primary; the message of the window is gone.
        await asyncio.to_thread(sentinel_group.restart_old_primary)
        with pytest.raises(redis.ConnectionError):
            await subscriber.get_message(timeout=2.0)
        assert (await next_message(subscriber))["type"] == "subscribe"
        assert await master.publish("sentinel:events", "after-resume") == 1
        assert (await next_message(subscriber))["data"] == b"after-resume"  # not b"lost"
    finally:
        await subscriber.aclose()
        await subscriber_client.aclose()
        await master.aclose()


def test_errors_name_the_process_and_the_step(sentinel_group: SentinelGroup) -> None:
    with pytest.raises(SentinelError, match="no failover has happened"):
        sentinel_group.restart_old_primary()
    primary = sentinel_group.primary_address()
    try:
        with pytest.raises(SentinelError) as caught:
            sentinel_group.kill_primary(timeout=0.2)  # far too short for a failover
        message = str(caught.value)
        assert f"primary {primary[0]}:{primary[1]}" in message and "not completed within 0.2 s" in message
        assert "sentinel-1:" in message and "sentinel-1 log tail" in message
        with pytest.raises(SentinelError, match="no replica to promote; call restart_old_primary"):
            sentinel_group.pause_primary()
    finally:
        sentinel_group.restart_old_primary()  # waits out the failover, then rejoins the old primary
    assert sentinel_group.primary_address() != primary


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="quorum"):
        SentinelGroup(sentinels=3, quorum=4)
    with pytest.raises(ValueError, match="down_after_ms"):
        SentinelGroup(down_after_ms=10)


def test_a_failover_during_the_rejoin_leaves_one_primary_and_one_synced_replica(
    sentinel_group: SentinelGroup,
) -> None:
    # What CI met once: while the killed primary rejoined, the new one stalled for longer
    # than down_after_ms, and the sentinels promoted the rejoining node before it synced.
    # Paused here before the rejoin starts, so that this is what happens, every time.
    failover = sentinel_group.kill_primary()
    stalled = sentinel_group.primary
    assert (stalled.host, stalled.port) == failover.new_primary
    before = sentinel_group.unplanned_failovers
    stalled.pause()
    try:
        sentinel_group.restart_old_primary()
    finally:
        if stalled.paused:
            stalled.resume()
    assert sentinel_group.unplanned_failovers == before + 1
    assert not sentinel_group.degraded
    # The rejoining node was promoted; the stalled one is its replica now, in sync.
    assert sentinel_group.primary_address() == failover.old_primary
    replica = sentinel_group.replica
    assert replica is stalled and not replica.paused
    with redis.Redis(host=replica.host, port=replica.port, socket_timeout=2.0) as client:
        info = client.info("replication")
    assert info["role"] == "slave" and info["master_link_status"] == "up"
    assert info["master_port"] == failover.old_primary[1]
