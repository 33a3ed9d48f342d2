"""The SimPy model: the same seed gives the same plan, however it is cut into windows."""

from __future__ import annotations

import itertools

from sim.config import from_mapping
from sim.model.plan import Kind, Planner


def _config(seed: int = 7):
    return from_mapping(
        {
            "experiment": {"name": "plan", "seed": seed, "duration_s": 20.0, "warmup_s": 0.0},
            "nodes": {
                "count": 300,
                "heartbeat_interval_s": 1.0,
                "crash_rate_per_hour": 360.0,
                "leave_rate_per_hour": 360.0,
                "rejoin_after_s": 1.0,
                "load_change_probability": 0.1,
            },
            "jobs": {"arrival_rate_per_s": 20.0, "get_rate_per_s": 5.0},
            "faults": [{"kind": "pause", "at_s": 5.0, "duration_s": 2.0}],
        }
    )


def test_same_seed_same_plan() -> None:
    assert list(Planner(_config()).plan()) == list(Planner(_config()).plan())


def test_different_seed_different_plan() -> None:
    assert list(Planner(_config(1)).plan()) != list(Planner(_config(2)).plan())


def test_plan_does_not_depend_on_window_size() -> None:
    whole = list(Planner(_config()).plan())
    planner = Planner(_config())
    pieces = []
    t = 0.0
    while not planner.done:
        t += 0.013
        pieces.extend(planner.advance(t))
    assert pieces == whole


def test_plan_is_time_ordered_and_has_every_kind() -> None:
    plan = list(Planner(_config()).plan())
    assert all(a.t <= b.t for a, b in itertools.pairwise(plan))
    assert {op.kind for op in plan} == set(Kind)
    assert all(op.t < 20.0 for op in plan)
    starts = [op for op in plan if op.kind is Kind.FAULT_START]
    ends = [op for op in plan if op.kind is Kind.FAULT_END]
    assert [op.t for op in starts] == [5.0] and [op.t for op in ends] == [7.0]


def test_crashed_node_is_silent_until_it_rejoins() -> None:
    plan = list(Planner(_config()).plan())
    down: set[int] = set()
    for op in plan:
        if op.kind in (Kind.CRASH, Kind.LEAVE):
            down.add(op.idx)
        elif op.kind is Kind.REGISTER:
            down.discard(op.idx)
        elif op.kind is Kind.HEARTBEAT:
            assert op.idx not in down


def test_shards_partition_nodes_and_instances() -> None:
    config = from_mapping(
        {"experiment": {"name": "s"}, "nodes": {"count": 10}, "schedulers": {"instances": 4}}
    )
    a, b = Planner(config, shard=0, shards=2).cluster, Planner(config, shard=1, shards=2).cluster
    assert set(a.specs) | set(b.specs) == set(range(10)) and not set(a.specs) & set(b.specs)
    assert a.instances == [0, 2] and b.instances == [1, 3]
    assert all(a.instance_of(i) in a.instances for i in a.specs)
