"""Minimal reproductions of library bugs the stateful suite ran into.

Each test is the smallest deterministic (or near-deterministic) scenario behind a
failure of ``test_consistency.py``; the docstring says what goes wrong and where. While
a bug stands its test is marked ``xfail(strict=True)``, so the suite stays green and
the bug stays visible: once fixed, the strict xfail fails and the marker must go.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import redis.asyncio as aioredis

from lockless.core.modes import Mode
from lockless.core.snapshot import NodeSpec
from lockless.errors import MalformedRecord
from lockless.registry import LocklessRegistry
from sim.redis_server import RedisServer
from tests.support import cache_view, eventually, fast_config, redis_view, store_for


def _blocking(work: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``work()`` on a fresh loop in another thread and wait for it, blocking the caller's loop.

    Nothing of the registry under test runs meanwhile, so it cannot react half-way.
    """
    failure: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(work())
        except BaseException as exc:  # handed to the caller
            failure.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


async def test_data_loss_is_noticed_after_a_log_catch_up(fault_server: RedisServer, ns: str) -> None:
    """An instance that learned a pool only through a log catch-up never learns its epoch.

    ``_catch_up`` (lockless/applier.py) applies log entries without looking at their
    ``epoch``, so a pool first listed empty keeps ``epoch = None`` while its L1 fills.
    If Redis then restarts empty and the pool's ``seq`` comes back to where the instance
    was, nothing notices: ``PoolSequencer.epoch_changed`` treats an unknown epoch as
    unchanged, ``_recover`` sees ``seq == last_seq``, and ``_judge`` / ``_probe`` adopt the
    new epoch as "the one that first write created". The old life's record then stays in
    L1 at the same version as the new one, for good.
    Fix: record the epoch of the entries ``_catch_up`` applies (an entry of another epoch
    means relist with reset); and adopt a first epoch only for a pool synced at seq 0,
    relisting (with reset) otherwise.
    """
    base = fast_config(fault_server.url, ns)
    # Rare probes: nothing learns the epoch behind the scenario's back.
    cfg = dataclasses.replace(base, subscriber=dataclasses.replace(base.subscriber, ping_interval_s=5.0))

    def write(spec: NodeSpec, *, restart_first: bool = False) -> None:
        async def work() -> None:
            if restart_first:
                fault_server.restart(keep_data=False)
            store = store_for(cfg)
            try:
                await store.register(spec)
            finally:
                await store.close()

        _blocking(work)

    async with LocklessRegistry(cfg, instance="a") as a:
        fault_server.kill_clients("pubsub")
        write(NodeSpec(node_id="n0", pool="p", max_jobs=1))  # published to nobody
        await eventually(lambda: a.cached("p", "n0") is not None, 5.0, "the catch-up from the log")
        # The catch-up learned the epoch from the log entries it applied.
        assert a.state().positions["p"][1] is not None

        # Redis loses everything; the node comes back with other fields, at version 1 again.
        write(NodeSpec(node_id="n0", pool="p", max_jobs=3, status="draining"), restart_first=True)
        writer = store_for(cfg)
        truth = await redis_view(writer, "p")
        await writer.close()
        assert truth == {"n0": (1, 0, "draining")}
        await eventually(lambda: a.mode is Mode.NORMAL and a.last_seq("p") == 1, 5.0, "recovery")
        await eventually(
            lambda: cache_view(a, "p") == truth, 3.0, f"L1 {cache_view(a, 'p')} to equal Redis {truth}"
        )


@pytest.mark.parametrize("redis_says", ["not_alive", "already_admitted"])
async def test_a_local_admission_redis_does_not_count_leaves_no_phantom_job(
    fault_server: RedisServer, ns: str, redis_says: str
) -> None:
    """A LOCAL_ONLY admission that replay does not count must not stay counted in L1.

    ``_admit_locally`` (lockless/registry.py) assumes ``current_jobs + 1`` at the node's
    *current* version. On replay Redis refuses the job (``not_alive``: the node's
    heartbeat had lapsed) or already holds it (``already_admitted``): no new version
    either way, so no event or catch-up ever retires the assumption, and L1 keeps one
    job more than Redis until the node happens to change.
    Fix: after ``_replay_journal``, re-read the nodes of the journaled ``job_start``
    entries (one pipelined ``get_nodes``) and apply them, which retires same-version
    assumptions (``L1Store.apply`` already replaces an assumed snapshot at equal version).
    """
    cfg = fast_config(fault_server.url, ns)
    writer = store_for(cfg)
    async with LocklessRegistry(cfg, instance="a") as a:
        await a.register_node(NodeSpec(node_id="n0", pool="p", max_jobs=2))
        if redis_says == "already_admitted":
            assert (await a.job_start("p", "n0", "j1")).admitted
        await eventually(
            lambda: a.last_seq("p") == (2 if redis_says == "already_admitted" else 1), 3.0, "events"
        )
        if redis_says == "not_alive":
            await writer.client.zadd(writer.keys.alive("p"), {"n0": 1}, xx=True)  # heartbeat in 1970
        await writer.client.save()
        await asyncio.to_thread(fault_server.stop)
        await eventually(lambda: a.mode is Mode.LOCAL_ONLY, 5.0, "LOCAL_ONLY")
        local = await a.job_start("p", "n0", "j1")
        assert local.admitted and local.reason == "journaled"
        await asyncio.to_thread(fault_server.start)
        await eventually(
            lambda: a.mode is Mode.NORMAL and not a.state().journal_depth, 8.0, "replay and recovery"
        )
        if redis_says == "not_alive":
            assert [(x.job_id, x.reason) for x in a.take_replay_rejections()] == [("j1", "not_alive")]
        truth = await redis_view(writer, "p")
        await eventually(
            lambda: cache_view(a, "p") == truth, 3.0, f"L1 {cache_view(a, 'p')} to equal Redis {truth}"
        )
    await writer.close()


async def test_a_local_rejection_leaves_the_cached_node_as_it_was(fault_server: RedisServer, ns: str) -> None:
    """A LOCAL_ONLY ``job_start`` on a full node must not rewrite the node's job count in L1.

    ``_admit_locally`` (lockless/writes.py) answers a local rejection with an ``Admission``
    whose ``current_jobs`` is left at its default, 0; ``WritePath.job_start`` then took it
    for Redis's answer and assumed ``current_jobs = 0`` at the node's version, so L1 held
    a full node as empty at the same version as Redis, for good (found by the stateful
    suite: an outage whose journaled ``job_start`` aimed at a full node). It also counted
    the rejection twice. Fix: only an answer from Redis is assumed and counted there; a
    local rejection reports the local view's counts.
    """
    cfg = fast_config(fault_server.url, ns)
    async with LocklessRegistry(cfg, instance="a") as a:
        await a.register_node(NodeSpec(node_id="n0", pool="p", max_jobs=1))
        assert (await a.job_start("p", "n0", "j1")).admitted
        await eventually(lambda: a.last_seq("p") == 2, 3.0, "the admission's event")
        before = cache_view(a, "p")
        assert before == {"n0": (2, 1, "up")}
        rejections = a.metrics()["rejections"]
        await asyncio.to_thread(fault_server.stop)
        await eventually(lambda: a.mode is Mode.LOCAL_ONLY, 5.0, "LOCAL_ONLY")
        local = await a.job_start("p", "n0", "j2")
        assert (local.admitted, local.reason, local.version) == (False, "full", 2)
        assert (local.current_jobs, local.max_jobs) == (1, 1)  # what the local view holds
        assert cache_view(a, "p") == before
        assert a.metrics()["rejections"] == rejections + 1


async def test_close_returns_even_if_a_command_swallowed_the_cancellation(
    fault_server: RedisServer, ns: str
) -> None:
    """``LocklessRegistry.close()`` must return; it can hang forever on Python 3.11.

    ``close()`` (lockless/registry.py) cancels each background task once, then awaits it.
    On Python < 3.12, ``asyncio.wait_for`` swallows a cancellation that arrives in the
    loop iteration where its inner awaitable completes (CPython gh-86296), and redis-py
    sends every command through ``wait_for`` (``Connection.send_packed_command``). When
    the cancel lands there, the health task's probe returns normally, ``_health_loop``
    (``while True``) goes on, and ``close()`` waits for it forever. The subscriber's
    ``wait_for(writer.wait_closed())`` can swallow it the same way.
    Fix: loops run ``while not self._closing``; ``close()`` sets the flag and waits with
    ``asyncio.wait(tasks, timeout=...)``, cancelling again until they are done.
    """
    base = fast_config(fault_server.url, ns)
    # A probe every millisecond keeps the health task inside redis-py nearly all the time.
    cfg = dataclasses.replace(base, subscriber=dataclasses.replace(base.subscriber, ping_interval_s=0.001))
    for attempt in range(200):
        registry = LocklessRegistry(cfg, instance=f"c{attempt}")
        await registry.start()
        await asyncio.sleep(0.005 + (attempt % 7) * 0.0013)
        closing = asyncio.ensure_future(registry.close())
        done, _ = await asyncio.wait({closing}, timeout=3.0)
        if not done:
            while not closing.done():  # release what is stuck before failing
                for task in registry._tasks:
                    task.cancel()
                await asyncio.wait({closing}, timeout=0.5)
            pytest.fail(f"close() still waiting after 3 s (attempt {attempt}): a task outlived its cancel")


async def test_a_record_that_is_not_utf8_is_skipped_not_fatal(redis_url: str, ns: str) -> None:
    """One node hash holding bytes that are not UTF-8 must not poison its pool.

    ``RedisStore`` reads with ``decode_responses=True`` (lockless/redis/store.py
    ``make_client``), so redis-py decodes the HGETALL reply itself and raises
    UnicodeDecodeError, which ``_call`` does not translate. ``relist`` therefore raises
    instead of listing the record under ``malformed``; ``LocklessRegistry.start()``
    fails, and a running instance can never relist that pool again (DESIGN.md section 10:
    a malformed record is counted, logged and skipped). ``get_node`` raises it raw too.
    Fix: read node hashes with a bytes client (``decode_responses=False``) and let
    ``parse_node_hash`` decode per field, mapping UnicodeDecodeError to MalformedRecord
    naming the field (see ``tests/core/test_properties_codec.py``).
    """
    cfg = fast_config(redis_url, ns)
    store = store_for(cfg)
    try:
        await store.register(NodeSpec(node_id="n0", pool="p", max_jobs=1))
        await store.register(NodeSpec(node_id="n1", pool="p", max_jobs=1))
        raw = aioredis.Redis.from_url(redis_url)
        await raw.hset(store.keys.node("p", "n1"), "labels", b'["\xff"]')
        await raw.aclose()
        listing = await store.relist("p")
        assert [n.node_id for n in listing.nodes] == ["n0"]
        assert [m.field for m in listing.malformed] == ["labels"]
        with pytest.raises(MalformedRecord, match="labels"):
            await store.get_node("p", "n1")
        async with LocklessRegistry(cfg, instance="a") as a:
            assert set(a.cached_nodes("p")) == {"n0"}
            assert a.metrics()["events_malformed"] >= 1
    finally:
        await store.close()


async def test_data_loss_is_noticed_when_l1_learned_a_pool_by_reads_only(
    fault_server: RedisServer, ns: str
) -> None:
    """Records that reached L1 by reads, never by events, must not outlive a loss of data.

    Found by the soak run: an instance lists a pool empty (seq 0, no epoch), then gets a
    record by an L2 read (a fill, or its own write's answer) while no event of it is
    applied. Redis then restarts empty: its seq (0) and epoch (none) are exactly what the
    instance last synced, so neither the epoch nor ``seq < last_seq`` tells, and the
    record stayed in L1 for good. Fix: L1 keeps each pool's highest version seen
    (``L1Store.high_water``); a Redis seq below it means lost data (relist with reset).
    """
    base = fast_config(fault_server.url, ns)
    # Probes only when the test asks: nothing repairs the pool behind the scenario's back.
    cfg = dataclasses.replace(base, subscriber=dataclasses.replace(base.subscriber, ping_interval_s=30.0))
    writer = store_for(cfg)
    async with LocklessRegistry(cfg, instance="a") as a:
        assert a.last_seq("p") == 0 and a.state().positions["p"][1] is None  # listed empty
        await a._subscriber.stop()  # no events from here on: the record arrives by a read only
        await writer.register(NodeSpec(node_id="n0", pool="p", max_jobs=1))
        assert (await a.refresh_node("p", "n0")) is not None
        assert a.last_seq("p") == 0 and a.state().positions["p"][1] is None  # L1 ahead of the sequencer

        await writer.close()
        await asyncio.to_thread(fault_server.restart, keep_data=False)
        await a._sync.probe()  # what the health loop does every ping_interval_s
        await eventually(lambda: a.cached_nodes("p") == {}, 5.0, "L1 emptied like Redis")


async def test_own_write_after_a_data_loss_does_not_mix_lives(fault_server: RedisServer, ns: str) -> None:
    """An instance's own write answered by a Redis that lost its data must not land in L1 as is.

    Found by the stateful suite ("i0: q/n2 went back from version 4 to 1"): i0 had seen
    ``n0`` at version 2, then its removal; a relist dropped the tombstone. Redis restarted
    empty and, before i0 noticed (its subscription was being re-established, no probe
    yet), i0 registered ``n0`` again: ``WritePath.register`` applied Redis's answer, the
    new life's ``n0`` at version 1, into an L1 still holding the old life's records under
    the old epoch. The node's version went back with no epoch change, and L1 mixed two
    lives until a probe or a reconnect noticed.
    Fix: a write's answer at a version not above the pool's ``high_water`` read before the
    write was sent can only come from a Redis that lost data (versions are the pool's seq,
    and a new write's is above every version that existed when it was sent): the answer is
    not put into L1, and the pool is repaired as after a loss of data found by the probe.
    """
    base = fast_config(fault_server.url, ns)
    # Probes only every 30 s: nothing but the write itself can tell the instance in time.
    cfg = dataclasses.replace(base, subscriber=dataclasses.replace(base.subscriber, ping_interval_s=30.0))
    writer = store_for(cfg)
    async with LocklessRegistry(cfg, instance="a") as a:
        await a.register_node(NodeSpec(node_id="n0", pool="p", max_jobs=1))
        await a.register_node(NodeSpec(node_id="n0", pool="p", max_jobs=2))
        await a.register_node(NodeSpec(node_id="n1", pool="p", max_jobs=1))
        assert await a.remove_node("p", "n0")
        await eventually(lambda: a.last_seq("p") == 4, 3.0, "the events of the writes")
        # A relist drops the removal's tombstone: lose the events of one write and trim the log.
        relists = a.metrics()["relists"]
        fault_server.kill_clients("pubsub")
        await writer.register(NodeSpec(node_id="n1", pool="p", max_jobs=3))
        await writer.client.xtrim(writer.keys.log("p"), maxlen=0, approximate=False)
        await eventually(
            lambda: a.metrics()["relists"] > relists and a.last_seq("p") == 5 and a.mode is Mode.NORMAL,
            5.0,
            "the relist after the reconnect",
        )
        old_epoch = a.state().positions["p"][1]
        assert old_epoch is not None and cache_view(a, "p") == {"n1": (5, 0, "up")}

        await a._subscriber.stop()  # nothing but the write below may learn of the loss
        await writer.close()
        await asyncio.to_thread(fault_server.restart, keep_data=False)
        assert await a.register_node(NodeSpec(node_id="n0", pool="p", max_jobs=1, status="draining")) == 1
        node, epoch = a.cached("p", "n0"), a.state().positions["p"][1]
        assert node is None or epoch != old_epoch, (
            f"L1 holds n0 of the new life ({node}) under the old epoch: it had n0 at version 2"
        )
        writer = store_for(cfg)
        truth = await redis_view(writer, "p")
        new_epoch = (await writer.pool_state("p"))[1]
        await writer.close()
        assert truth == {"n0": (1, 0, "draining")} and new_epoch not in (None, old_epoch)
        await eventually(
            lambda: cache_view(a, "p") == truth and a.state().positions["p"][1] == new_epoch,
            5.0,
            f"L1 {cache_view(a, 'p')} at epoch {a.state().positions['p'][1]} to equal Redis {truth}",
        )


async def test_a_fill_after_a_data_loss_does_not_mix_lives(fault_server: RedisServer, ns: str) -> None:
    """A read that fills L1 from a Redis that lost its data must not put the new life's record in L1.

    The sibling of ``test_own_write_after_a_data_loss_does_not_mix_lives`` on the read path:
    ``ReadPath._fill`` (lockless/reads.py) applies whatever ``HGETALL`` returns. After an
    empty restart that the instance has not noticed yet (no probe, subscription not yet
    re-established), a node another writer registered again comes back at version 1
    into an L1 that showed it at version 2 and still holds the old life's records under
    the old epoch. The fill had no way to tell: its record carries no epoch, and a low
    version is normal for a read. Fix: the fill reads the pool's epoch in the same
    pipeline; a record of another epoch than L1's is answered but kept out of L1, and
    the loss reported (the pool is relisted with reset, as after the probe found it).
    """
    base = fast_config(fault_server.url, ns)
    cfg = dataclasses.replace(base, subscriber=dataclasses.replace(base.subscriber, ping_interval_s=30.0))
    writer = store_for(cfg)
    async with LocklessRegistry(cfg, instance="a") as a:
        await a.register_node(NodeSpec(node_id="n0", pool="p", max_jobs=1))
        await a.register_node(NodeSpec(node_id="n0", pool="p", max_jobs=2))
        await a.register_node(NodeSpec(node_id="n1", pool="p", max_jobs=1))
        assert await a.remove_node("p", "n0")
        await eventually(lambda: a.last_seq("p") == 4, 3.0, "the events of the writes")
        relists = a.metrics()["relists"]
        fault_server.kill_clients("pubsub")
        await writer.register(NodeSpec(node_id="n1", pool="p", max_jobs=3))
        await writer.client.xtrim(writer.keys.log("p"), maxlen=0, approximate=False)
        await eventually(
            lambda: a.metrics()["relists"] > relists and a.last_seq("p") == 5 and a.mode is Mode.NORMAL,
            5.0,
            "the relist after the reconnect (it drops n0's tombstone)",
        )
        old_epoch = a.state().positions["p"][1]

        await a._subscriber.stop()  # nothing but the read below may learn of the loss
        await writer.close()
        await asyncio.to_thread(fault_server.restart, keep_data=False)
        writer = store_for(cfg)
        assert await writer.register(NodeSpec(node_id="n0", pool="p", max_jobs=1, status="draining")) == 1
        await writer.close()
        read = await a.get_node("p", "n0")
        assert read is not None and (read.version, read.status) == (1, "draining")  # Redis's answer
        node, epoch = a.cached("p", "n0"), a.state().positions["p"][1]
        assert node is None or epoch != old_epoch, (
            f"L1 holds n0 of the new life ({node}) under the old epoch: it had n0 at version 2"
        )
        writer = store_for(cfg)
        truth = await redis_view(writer, "p")
        new_epoch = (await writer.pool_state("p"))[1]
        await writer.close()
        await eventually(
            lambda: cache_view(a, "p") == truth and a.state().positions["p"][1] == new_epoch,
            5.0,
            f"L1 {cache_view(a, 'p')} at epoch {a.state().positions['p'][1]} to equal Redis {truth}",
        )
