"""The lean heartbeat path of the harness (issue 12): the node model, the driver, the batch recording.

Each piece replaced something slower that was simply correct (a SimPy process per node, one
``Op`` and one ``record_value`` per beat), so each is held to what it replaced: the same
plan semantics, the same open-loop accounting, the same histogram counts.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import numpy as np
import pytest

from lockless import Heartbeat, HeartbeatResult, KeySpace, NodeLifecycleConfig, RedisConfig, RedisStore
from sim.bridge import Bridge
from sim.config import from_mapping
from sim.heartbeats import HeartbeatDriver, keep_alive
from sim.model.nodes import NodeLives, uniform, uniform1
from sim.model.ops import Cluster, Kind, Op
from sim.model.plan import Beats, Planner
from sim.recorder import Recorder, record_many
from sim.runner import bootstrap
from tests.support import eventually_async


def _config(count: int = 200, **nodes: object):
    return from_mapping(
        {
            "experiment": {"name": "hb", "seed": 3, "duration_s": 30.0, "warmup_s": 0.0},
            "nodes": {"count": count, "heartbeat_interval_s": 1.0, "heartbeat_jitter": 0.2, **nodes},
            "schedulers": {"instances": 2},
        }
    )


# ------------------------------------------------------------------ recording
@pytest.mark.parametrize("n", [3, 500])
def test_record_many_counts_exactly_what_record_value_counts(n: int) -> None:
    # (Values as numpy floats and as Python floats alike.)
    rng = np.random.default_rng(n)
    # Every magnitude the histogram covers, its edges, and values it clamps (<1, > 1 h).
    values = np.concatenate(
        [10 ** rng.uniform(0, 9.6, n), [0.0, -5.0, 0.4, 1.0, 2047.0, 2048.0, 1e10, 3_600_000_000.0]]
    )
    fast, slow = Recorder("a", t0=0.0).extra["lag"], Recorder("b", t0=0.0).extra["lag"]
    record_many(fast, values)
    for v in values:
        slow.record_value(max(1, min(int(v), 3_600_000_000)))
    assert list(fast.counts) == list(slow.counts)
    summary = [(h.total_count, h.min_value, h.max_value) for h in (fast, slow)]
    assert summary[0] == summary[1]
    assert fast.encode() == slow.encode()


def test_a_batch_records_what_one_op_per_member_records() -> None:
    intended = [0.5, 1.001, 1.002, 1.9995, 2.0005, 2.5] + [3.0 + i / 1000 for i in range(40)]
    batch, single = Recorder("x", t0=0.0, warmup_s=1.0), Recorder("x", t0=0.0, warmup_s=1.0)
    batch.batch("heartbeat", intended, sent=3.05, done=3.0625)
    for t in intended:
        single.op("heartbeat", t, 3.05, 3.0625)
    for group in ("latency", "service"):
        assert getattr(batch, group)["heartbeat"].encode() == getattr(single, group)["heartbeat"].encode()
    assert batch.extra["lag"].encode() == single.extra["lag"].encode()
    assert batch.series() == single.series()
    assert batch.latency["heartbeat"].get_total_count() == len(intended) - 1  # 0.5 s was warm-up
    error = ConnectionError("down")
    batch.batch("heartbeat", intended, sent=3.05, done=3.0625, error=error)
    for t in intended:
        single.op("heartbeat", t, 3.05, 3.0625, error)
    assert batch.errors == single.errors == {("heartbeat", "ConnectionError"): len(intended) - 1}
    assert batch.series() == single.series()
    assert batch.extra["lag"].encode() == single.extra["lag"].encode()


# ------------------------------------------------------------------ node model
def _beats_and_life(lives: NodeLives, until: float, step: float) -> tuple[list[tuple], list[Op]]:
    beats: Beats = Beats([], [], [])
    life: list[Op] = []
    t = 0.0
    while t < until:
        t = min(until, t + step)
        lives.advance(t, life.append, *beats)
    return list(zip(*beats, strict=True)), life


def test_node_lives_do_not_depend_on_how_the_run_is_cut() -> None:
    cfg = _config(crash_rate_per_hour=720.0, leave_rate_per_hour=720.0, rejoin_after_s=0.3)
    cluster = Cluster(cfg)
    # One window for the whole run (nodes beat several times in it), windows of the
    # dispatcher's size, and odd ones.
    runs = [_beats_and_life(NodeLives(cluster, "s1"), 20.0, step) for step in (20.0, 1.0, 0.02, 0.0037)]
    assert all(run == runs[0] for run in runs)
    beats, life = runs[0]
    assert {op.kind for op in life} == {Kind.CRASH, Kind.LEAVE, Kind.REGISTER}
    assert [b[0] for b in beats] == sorted(b[0] for b in beats)  # time order
    assert all(a.t <= b.t for a, b in itertools.pairwise(life))
    assert _beats_and_life(NodeLives(cluster, "s2"), 20.0, 1.0) != runs[0]


def test_a_nodes_life_does_not_depend_on_the_shards() -> None:
    cfg = _config(count=60, crash_rate_per_hour=720.0, leave_rate_per_hour=720.0, rejoin_after_s=0.3)
    whole_beats, whole_life = _beats_and_life(NodeLives(Cluster(cfg), "s"), 10.0, 0.5)
    shard_beats, shard_life = [], []
    for shard in range(2):
        beats, life = _beats_and_life(NodeLives(Cluster(cfg, shard=shard, shards=2), "s"), 10.0, 0.5)
        shard_beats += beats
        shard_life += [(op.t, op.kind, op.idx) for op in life]
    assert sorted(shard_beats) == sorted(whole_beats)
    assert sorted(shard_life) == sorted((op.t, op.kind, op.idx) for op in whole_life)


def test_one_draw_and_many_draws_agree() -> None:
    nodes, counts = np.arange(0, 5000, 7), np.arange(0, 5000, 7) // 3
    many = uniform(12345, 4, nodes, counts)
    assert [uniform1(12345, 4, int(n), int(c)) for n, c in zip(nodes, counts, strict=True)] == many.tolist()
    assert many.min() >= 0.0 and many.max() < 1.0 and abs(many.mean() - 0.5) < 0.02
    # Streams and counters are independent: different inputs, different draws.
    assert len({uniform1(1, s, 1, c) for s in range(8) for c in range(50)}) == 400


def test_node_lives_keep_the_heartbeat_rhythm() -> None:
    cfg = _config(count=300, load_change_probability=0.25)
    beats, life = _beats_and_life(NodeLives(Cluster(cfg), "s5"), 10.0, 0.05)
    assert life == []  # no churn configured
    by_node: dict[int, list[float]] = {}
    for t, idx, _load in beats:
        by_node.setdefault(idx, []).append(t)
    assert set(by_node) == set(range(300))
    # First beat within the first interval; then every 1 s +- 20 %.
    assert all(0 <= times[0] < 1.0 for times in by_node.values())
    gaps = [b - a for times in by_node.values() for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.8 and max(gaps) <= 1.2 and abs(np.mean(gaps) - 1.0) < 0.01
    loads = [load for _, _, load in beats]
    moved = [x for x in loads if x >= 0]
    assert all(x == -1.0 for x in loads if x < 0) and all(0.0 <= x <= 1.0 for x in moved)
    assert 0.2 < len(moved) / len(loads) < 0.3


def test_a_node_that_is_down_does_not_beat() -> None:
    cfg = _config(crash_rate_per_hour=1800.0, leave_rate_per_hour=1800.0, rejoin_after_s=2.0)
    planner = Planner(cfg, jobs=False)
    down: set[int] = set()
    seen = 0
    for op in planner.plan():
        if op.kind in (Kind.CRASH, Kind.LEAVE):
            assert op.idx not in down
            down.add(op.idx)
        elif op.kind is Kind.REGISTER:
            assert op.idx in down
            down.discard(op.idx)
        elif op.kind is Kind.HEARTBEAT:
            seen += 1
            assert op.idx not in down
            assert op.instance == planner.cluster.instance_of(op.idx)
    assert seen > 1000 and down  # churn happened, and some nodes were down at the end


# ------------------------------------------------------------------ the driver
class _Counting:
    """Passes calls to a real store, remembering which instance got which batch."""

    def __init__(self, store: RedisStore, instance: int, log: list[tuple[int, list[Heartbeat]]]) -> None:
        self.store, self.instance, self.log = store, instance, log

    async def heartbeat_many(self, beats: Sequence[Heartbeat]) -> list[HeartbeatResult]:
        self.log.append((self.instance, list(beats)))
        return await self.store.heartbeat_many(beats)


async def test_the_driver_sends_due_beats_through_the_production_call(redis_url: str, ns: str) -> None:
    cfg = _config(count=40)
    cluster = Cluster(cfg)
    store = RedisStore(RedisConfig(url=redis_url, namespace=ns), NodeLifecycleConfig())
    await bootstrap(store, cluster)
    keys = KeySpace(ns)
    gone = cluster.spec(7)
    await store.remove(gone.pool, gone.node_id)  # Redis forgot it: the driver re-creates it
    bridge = Bridge(scale=1.0)
    t0 = bridge.begin()
    rec = Recorder("lockless", t0=t0)
    log: list[tuple[int, list[Heartbeat]]] = []
    tasks: list[asyncio.Task[None]] = []
    recreated: list[tuple[str, str]] = []
    driver = HeartbeatDriver(
        cluster=cluster,
        bridge=bridge,
        recorder=rec,
        max_batch=8,
        sink_of=lambda instance: _Counting(store, instance, log),
        by_instance=True,
        spawn=lambda coro: tasks.append(asyncio.ensure_future(coro)),
        on_recreated=lambda pool, node_id: recreated.append((pool, node_id)),
    )
    try:
        nodes = list(range(40))
        driver.add(Beats([0.001 * i for i in range(40)], nodes, [-1.0] * 40))
        driver.add(Beats([0.5, 0.6], [3, 4], [0.75, -1.0]))
        assert (driver.pending, driver.first_due()) == (42, 0.0)
        driver.send_due(0.0395)  # the first 40 beats: intended at or before
        assert driver.pending == 2 and driver.first_due() == 0.5
        await asyncio.gather(*tasks)
        # Per instance, in batches of at most 8; node 7 sent twice (then with its spec).
        sent = [(inst, [b.node_id for b in batch]) for inst, batch in log]
        assert all(len(ids) <= 8 for _, ids in sent)
        for inst, ids in sent:
            assert {cluster.instance_of(int(i[1:])) for i in ids} == {inst}
        assert sorted(i for _, ids in sent for i in ids) == sorted(
            [cluster.spec(i).node_id for i in nodes] + [gone.node_id]
        )
        assert [b.spec for _, batch in log for b in batch if b.spec is not None] == [gone]
        assert recreated == [(gone.pool, gone.node_id)]
        assert rec.counters["reregistered_by_heartbeat"] == 1
        assert await store.client.zscore(keys.alive(gone.pool), gone.node_id)
        assert rec.latency["heartbeat"].get_total_count() == 40 == driver.sent
        # A quiet node's heartbeat is the same value every time; a new load makes a new one.
        quiet_before = driver._beats[4]
        driver.send_due(1.0)
        await asyncio.gather(*tasks)
        assert driver._beats[4] is quiet_before and driver._beats[3].load == 0.75
        assert (await store.get_node(cluster.spec(3).pool, cluster.spec(3).node_id)).load == 0.75
        assert driver.pending == 0 and rec.latency["heartbeat"].get_total_count() == 42
    finally:
        await store.close()


async def test_after_the_plan_the_nodes_that_are_up_keep_beating(redis_url: str, ns: str) -> None:
    cfg = _config(count=6)
    cluster = Cluster(cfg)
    store = RedisStore(RedisConfig(url=redis_url, namespace=ns), NodeLifecycleConfig())
    await bootstrap(store, cluster)
    keys, pool = KeySpace(ns), cluster.spec(0).pool
    await store.client.zadd(keys.alive(pool), {cluster.spec(i).node_id: 1 for i in range(6)})
    task = asyncio.ensure_future(keep_alive(store, cluster, [0, 1, 2, 4]))  # 3 and 5 are down
    try:

        async def refreshed() -> bool:
            ids = [cluster.spec(i).node_id for i in (0, 1, 2, 4)]
            scores = await store.client.zmscore(keys.alive(pool), ids)
            return all(score and score > 1 for score in scores)

        await eventually_async(refreshed, 5.0, "the up nodes' heartbeats")
        for down in (3, 5):
            assert await store.client.zscore(keys.alive(pool), cluster.spec(down).node_id) == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
