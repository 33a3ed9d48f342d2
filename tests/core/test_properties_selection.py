"""Properties of selection (pure): over any pool, requirements, count, policy and seed.

DESIGN.md section 6: picks are distinct, placeable (``up`` with a free slot) and meet the
requirements; as many are picked as asked when that many fit (sampling falls back to a
scan rather than give up); least-loaded picks the least utilised fits; the breakdown of
what was filtered adds up when the selection was exhaustive; and the same seed gives
the same picks.
"""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from lockless.core.l1 import L1Store, PoolIndex
from lockless.core.selection import is_placeable, placement_key, select, unmet
from lockless.core.snapshot import NodeSnapshot, Requirements

LABELS = ("gpu", "x", "y")


@st.composite
def nodes(draw: st.DrawFn, node_id: str) -> NodeSnapshot:
    max_jobs = draw(st.integers(0, 4))
    return NodeSnapshot(
        node_id=node_id,
        pool="p",
        version=1,
        status=draw(st.sampled_from(["up", "up", "up", "draining"])),
        max_jobs=max_jobs,
        current_jobs=draw(st.integers(0, max_jobs)),
        load=draw(st.sampled_from([0.0, 0.25, 0.5, 1.0])),
        resources={"cpu": draw(st.sampled_from([1, 4, 8]))},
        labels=frozenset(draw(st.lists(st.sampled_from(LABELS), unique=True, max_size=3))),
    )


@st.composite
def pools(draw: st.DrawFn) -> PoolIndex:
    l1 = L1Store(ttl_jitter=0.0)
    for i in range(draw(st.integers(0, 40))):
        l1.apply(draw(nodes(f"n{i:02d}")), 0.0)
    return l1.pool("p")


requirements = st.builds(
    lambda labels, cpu: Requirements(labels=frozenset(labels), resources={"cpu": cpu} if cpu else {}),
    st.lists(st.sampled_from(LABELS), unique=True, max_size=2),
    st.sampled_from([0, 0, 2, 8, 16]),
)
policies = st.sampled_from(["power_of_two", "least_loaded"])


def fits(index: PoolIndex, req: Requirements) -> list[NodeSnapshot]:
    return [n for n in index.nodes.values() if is_placeable(n) and unmet(n, req) is None]


@given(pools(), requirements, st.integers(1, 12), policies, st.integers(0, 2**32))
def test_picks_are_distinct_placeable_fitting_and_as_many_as_fit(
    index: PoolIndex, req: Requirements, count: int, policy: str, seed: int
) -> None:
    chosen = select(index, pool="p", count=count, requirements=req, policy=policy, rng=random.Random(seed))
    ids = chosen.node_ids
    assert len(ids) == len(set(ids))
    for pick in chosen.picks:
        assert index.nodes[pick.node_id] is pick
        assert is_placeable(pick) and unmet(pick, req) is None
    assert len(ids) == min(count, len(fits(index, req)))
    assert chosen.considered == len(index.nodes)
    assert all(n > 0 for n in chosen.filtered.values())


@given(pools(), requirements, st.integers(1, 12), policies, st.integers(0, 2**32))
def test_an_exhaustive_breakdown_adds_up(
    index: PoolIndex, req: Requirements, count: int, policy: str, seed: int
) -> None:
    """Exhaustive: every node is a pick, a fit left over (more fit than asked), or filtered once."""
    chosen = select(index, pool="p", count=count, requirements=req, policy=policy, rng=random.Random(seed))
    if not chosen.exhaustive:
        return
    left_over = len(fits(index, req)) - len(chosen.picks)
    assert sum(chosen.filtered.values()) + len(chosen.picks) + left_over == len(index.nodes)
    unplaceable = [n for n in index.nodes.values() if not is_placeable(n)]
    draining = sum(n.status == "draining" for n in unplaceable)
    assert chosen.filtered.get("draining", 0) == draining
    assert chosen.filtered.get("full", 0) == len(unplaceable) - draining
    if req.labels or req.resources:
        # Requirement misfits are counted over the placeable nodes, each under its first unmet reason.
        reasons: dict[str, int] = {}
        for n in index.nodes.values():
            if is_placeable(n) and (reason := unmet(n, req)) is not None:
                reasons[reason] = reasons.get(reason, 0) + 1
        assert {k: v for k, v in chosen.filtered.items() if k not in ("full", "draining")} == reasons


@given(pools(), requirements, st.integers(1, 12))
def test_least_loaded_picks_the_least_utilised_fits_in_order(
    index: PoolIndex, req: Requirements, count: int
) -> None:
    chosen = select(
        index, pool="p", count=count, requirements=req, policy="least_loaded", rng=random.Random(0)
    )
    keys = [placement_key(n) for n in chosen.picks]
    assert keys == sorted(keys)
    rest = [placement_key(n) for n in fits(index, req) if n.node_id not in chosen.node_ids]
    if keys and rest:
        assert max(keys) <= min(rest)
    if chosen.picks:
        assert chosen.picks[0].utilisation == min(n.utilisation for n in fits(index, req))


@given(pools(), requirements, st.integers(1, 12), policies, st.integers(0, 2**32))
def test_the_same_seed_gives_the_same_picks(
    index: PoolIndex, req: Requirements, count: int, policy: str, seed: int
) -> None:
    first = select(index, pool="p", count=count, requirements=req, policy=policy, rng=random.Random(seed))
    again = select(index, pool="p", count=count, requirements=req, policy=policy, rng=random.Random(seed))
    assert first == again
