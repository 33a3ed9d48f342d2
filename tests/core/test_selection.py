"""Selection over a real L1 pool index: policies, breakdowns, explain(), sampling fallback (pure)."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest

from lockless.core.l1 import L1Store, PoolIndex
from lockless.core.selection import (
    POLICIES,
    Selection,
    is_placeable,
    placement_key,
    select,
    unmet,
)
from lockless.core.snapshot import NodeSnapshot, Requirements
from lockless.errors import ConfigError


def node(
    node_id: str,
    *,
    current: int = 0,
    max_jobs: int = 4,
    status: str = "up",
    load: float = 0.0,
    labels: Iterable[str] = (),
    resources: dict[str, float] | None = None,
    version: int = 1,
) -> NodeSnapshot:
    return NodeSnapshot(
        node_id=node_id,
        pool="p",
        version=version,
        status=status,
        max_jobs=max_jobs,
        current_jobs=current,
        load=load,
        labels=frozenset(labels),
        resources=resources or {},
    )


def index_of(nodes: Iterable[NodeSnapshot]) -> PoolIndex:
    l1 = L1Store(ttl_jitter=0.0)
    for n in nodes:
        l1.apply(n, 0.0)
    return l1.pool("p")


class ScriptedRandom(random.Random):
    """A Random whose ``randrange`` answers come from a script (to reach exact sampling paths)."""

    def __init__(self, draws: Iterable[int]) -> None:
        super().__init__(0)
        self.draws = list(draws)

    def randrange(self, *args: int, **kwargs: int) -> int:  # type: ignore[override]
        return self.draws.pop(0)


def mixed_pool() -> list[NodeSnapshot]:
    """3 full, 2 draining, 4 up without label x, 1 up with x (loaded), 1 up with x but short of cpu."""
    return [
        *(node(f"full{i}", current=2, max_jobs=2, labels={"x"}) for i in range(3)),
        node("drain0", status="draining", labels={"x"}),
        node("drain1", status="draining", current=4, labels={"x"}),  # draining and full: counts as draining
        *(node(f"plain{i}", labels={"y"}, resources={"cpu": 8}) for i in range(4)),
        node("fit", current=1, labels={"x", "y"}, resources={"cpu": 8}),
        node("small", labels={"x"}, resources={"cpu": 1}),
    ]


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("policy", ["random", "", "LEAST_LOADED"])
def test_an_unknown_policy_is_a_config_error_listing_the_policies(policy: str) -> None:
    with pytest.raises(ConfigError) as info:
        select(index_of([]), pool="p", policy=policy, rng=random.Random(0))
    assert info.value.field == "policy"
    assert info.value.allowed == "power_of_two | least_loaded"
    assert POLICIES == ("power_of_two", "least_loaded")


@pytest.mark.parametrize("count", [0, -1, "2", 1.5, None])
def test_a_bad_count_is_a_config_error(count: object) -> None:
    with pytest.raises(ConfigError) as info:
        select(index_of([node("a")]), pool="p", count=count, rng=random.Random(0))  # type: ignore[arg-type]
    assert info.value.field == "count"
    assert ">= 1" in info.value.allowed


# ------------------------------------------------------------------- helpers
def test_placeable_means_up_with_a_free_slot() -> None:
    assert is_placeable(node("a", current=3, max_jobs=4))
    assert not is_placeable(node("a", current=4, max_jobs=4))
    assert not is_placeable(node("a", status="draining"))
    assert not is_placeable(node("a", max_jobs=0))


def test_placement_key_orders_by_utilisation_then_load_then_id() -> None:
    keys = sorted(
        placement_key(n)
        for n in (node("b", current=1), node("a", current=1), node("c", load=0.9), node("d", load=0.1))
    )
    assert [k[2] for k in keys] == ["d", "c", "a", "b"]


def test_unmet_names_the_first_missing_label_and_short_resource() -> None:
    n = node("a", labels={"x"}, resources={"cpu": 4})
    assert unmet(n, Requirements()) is None
    assert unmet(n, Requirements(labels={"x"}, resources={"cpu": 4})) is None
    assert unmet(n, Requirements(labels={"z", "w", "x"})) == "missing label w"
    assert unmet(n, Requirements(resources={"cpu": 5})) == "short of cpu"
    assert unmet(n, Requirements(resources={"gpu": 1})) == "short of gpu"
    assert unmet(n, Requirements(resources={"gpu": 0})) is None


# ---------------------------------------------------------------- least_loaded
def test_least_loaded_unconstrained_takes_the_head_of_the_index() -> None:
    nodes = [node("a", current=2), node("b", current=1), node("c", current=0, load=0.5), node("d")]
    sel = select(index_of(nodes), pool="p", count=2, policy="least_loaded", rng=random.Random(0))
    assert sel.node_ids == ("d", "c")
    assert sel.exhaustive and sel.policy == "least_loaded" and sel.considered == 4
    assert dict(sel.filtered) == {}


def test_least_loaded_with_more_count_than_nodes_returns_what_there_is() -> None:
    sel = select(
        index_of([node("a"), node("b")]), pool="p", count=5, policy="least_loaded", rng=random.Random(0)
    )
    assert sel.node_ids == ("a", "b")


def test_least_loaded_constrained_stops_at_count_and_says_the_check_was_partial() -> None:
    nodes = [node("a", labels={"x"}), node("b"), node("c", labels={"x"}, current=1), node("d", current=2)]
    sel = select(
        index_of(nodes),
        pool="p",
        count=1,
        requirements=Requirements(labels={"x"}),
        policy="least_loaded",
        rng=random.Random(0),
    )
    assert sel.node_ids == ("a",)
    assert not sel.exhaustive
    sel = select(
        index_of(nodes),
        pool="p",
        count=2,
        requirements=Requirements(labels={"x"}),
        policy="least_loaded",
        rng=random.Random(0),
    )
    # b ("missing label x") sits between a and c in the index, so it was checked on the way.
    assert sel.node_ids == ("a", "c")
    assert dict(sel.filtered) == {"missing label x": 1}
    assert not sel.exhaustive
    assert sel.explain() == (
        "2 of 4 picked in pool 'p'; filtered: 1 missing label x (requirements checked on a sample)"
    )


@pytest.mark.parametrize("policy", POLICIES)
def test_breakdown_is_exact_when_nothing_fits(policy: str) -> None:
    sel = select(
        index_of(mixed_pool()),
        pool="p",
        count=1,
        requirements=Requirements(labels={"x", "y"}, resources={"cpu": 2}),
        policy=policy,
        rng=random.Random(3),
    )
    # "fit" is the only node with x, y and cpu 8; exclude it by asking for more than it has.
    assert sel.node_ids == ("fit",)
    sel = select(
        index_of(mixed_pool()),
        pool="p",
        count=1,
        requirements=Requirements(labels={"x"}, resources={"cpu": 16}),
        policy=policy,
        rng=random.Random(3),
    )
    assert sel.picks == ()
    assert sel.exhaustive
    assert dict(sel.filtered) == {"full": 3, "draining": 2, "missing label x": 4, "short of cpu": 2}
    assert sum(sel.filtered.values()) == sel.considered == 11
    assert sel.explain() == (
        "0 of 11 picked in pool 'p'; filtered: 4 missing label x, 3 full, 2 draining, 2 short of cpu"
    )


# ---------------------------------------------------------------- power_of_two
def test_power_of_two_is_the_default_and_picks_distinct_nodes() -> None:
    nodes = [node(f"n{i}", current=i % 4) for i in range(100)]
    sel = select(index_of(nodes), pool="p", count=10, rng=random.Random(5))
    assert sel.policy == "power_of_two"
    assert len(set(sel.node_ids)) == 10
    assert all(is_placeable(n) for n in sel.picks)
    assert sel.exhaustive  # unconstrained: the breakdown (nothing filtered) is exact


def test_power_of_two_is_deterministic_for_a_seed() -> None:
    nodes = [node(f"n{i}", current=i % 3, load=(i % 7) / 7) for i in range(200)]
    index = index_of(nodes)
    a = select(index, pool="p", count=3, rng=random.Random(11)).node_ids
    b = select(index, pool="p", count=3, rng=random.Random(11)).node_ids
    assert a == b


def test_power_of_two_prefers_the_less_loaded_but_spreads() -> None:
    # Half the nodes idle, half with 3 of 4 slots taken.
    index = index_of(node(f"n{i}", current=3 if i % 2 else 0) for i in range(1000))
    rng = random.Random(7)
    picks = [select(index, pool="p", rng=rng).picks[0] for _ in range(2000)]
    idle = sum(p.current_jobs == 0 for p in picks)
    assert idle / len(picks) > 0.70  # two choices: ~75% idle; a random pick would give ~50%
    assert len({p.node_id for p in picks}) > 300  # not everyone piling onto the single least-loaded node


def test_power_of_two_keeps_the_lower_key_of_the_pair() -> None:
    nodes = [node("a", current=3), node("b", current=0), node("c", current=2), node("d", current=1)]
    index = index_of(nodes)  # placeable order: b, d, c, a
    sel = select(index, pool="p", count=1, rng=ScriptedRandom([3, 2]))  # a vs c
    assert sel.node_ids == ("c",)
    sel = select(index, pool="p", count=1, rng=ScriptedRandom([0, 3]))  # b vs a
    assert sel.node_ids == ("b",)


def test_power_of_two_drawing_one_node_twice_takes_it_alone() -> None:
    index = index_of([node("a"), node("b", current=1), node("c", current=2)])
    sel = select(index, pool="p", count=1, rng=ScriptedRandom([2, 2]))
    assert sel.node_ids == ("c",)


def test_power_of_two_skips_nodes_already_chosen() -> None:
    index = index_of([node(f"n{i}", current=i % 4) for i in range(8)])
    # placeable order is by utilisation then id: n0 n4 n1 n5 n2 n6 n3 n7
    draws = [0, 1, 0, 0, 2, 3]  # pair 1: n0, n4 -> n0; pair 2: n0 (skip), n0 (skip), n1, n5 -> n1
    sel = select(index, pool="p", count=2, rng=ScriptedRandom(draws))
    assert sel.node_ids == ("n0", "n1")


def test_power_of_two_with_a_common_requirement_samples_and_says_so() -> None:
    nodes = [node(f"n{i}", labels={"x"} if i % 10 else set(), current=i % 3) for i in range(500)]
    nodes += [node(f"f{i}", current=4) for i in range(5)]
    sel = select(
        index_of(nodes), pool="p", count=2, requirements=Requirements(labels={"x"}), rng=random.Random(2)
    )
    assert len(sel.picks) == 2 and all("x" in n.labels for n in sel.picks)
    assert not sel.exhaustive
    assert dict(sel.filtered) == {"full": 5}
    assert sel.explain() == "2 of 505 picked in pool 'p'; filtered: 5 full (requirements checked on a sample)"


def test_power_of_two_falls_back_to_a_scan_when_sampling_finds_too_few() -> None:
    # 1 node of 1,000 has the label: sampling (2 * count + 16 draws) almost surely misses it.
    nodes = [node(f"n{i:04}") for i in range(999)] + [node("rare", labels={"gpu"})]
    sel = select(
        index_of(nodes), pool="p", count=1, requirements=Requirements(labels={"gpu"}), rng=random.Random(0)
    )
    assert sel.node_ids == ("rare",)
    assert sel.exhaustive
    assert dict(sel.filtered) == {"missing label gpu": 999}
    assert sel.explain() == "1 of 1,000 picked in pool 'p'; filtered: 999 missing label gpu"


def test_power_of_two_fallback_when_the_budget_runs_out_mid_pair() -> None:
    # Only n0 fits; the script draws misfits until the budget (2*1+16 = 18) is spent.
    nodes = [node("n0", labels={"x"})] + [node(f"m{i}") for i in range(5)]
    index = index_of(nodes)  # placeable order: m0..m4, n0
    sel = select(
        index, pool="p", count=1, requirements=Requirements(labels={"x"}), rng=ScriptedRandom([0] * 18)
    )
    assert sel.node_ids == ("n0",)
    assert sel.exhaustive and dict(sel.filtered) == {"missing label x": 5}


def test_power_of_two_single_fit_found_in_sampling_is_taken() -> None:
    nodes = [node("n0", labels={"x"})] + [node(f"m{i}") for i in range(5)]
    index = index_of(nodes)  # placeable order: m0..m4, n0 (index 5)
    sel = select(
        index, pool="p", count=1, requirements=Requirements(labels={"x"}), rng=ScriptedRandom([5] + [0] * 17)
    )
    assert sel.node_ids == ("n0",)
    assert not sel.exhaustive


def test_small_pools_are_scanned_and_two_choices_among_the_fits() -> None:
    index = index_of([node("a", current=1), node("b", current=0)])
    sel = select(index, pool="p", count=1, rng=random.Random(0))
    assert sel.node_ids == ("b",)  # the two fits compared: the less loaded wins
    sel = select(index, pool="p", count=2, rng=random.Random(0))
    assert set(sel.node_ids) == {"a", "b"}
    sel = select(index_of([node("a")]), pool="p", count=1, rng=random.Random(0))
    assert sel.node_ids == ("a",)


def test_an_empty_pool_selects_nothing_and_explains_briefly() -> None:
    for policy in POLICIES:
        sel = select(index_of([]), pool="p", policy=policy, rng=random.Random(0))
        assert sel.picks == () and sel.considered == 0
        assert sel.explain() == "0 of 0 picked in pool 'p'"


def test_only_full_and_draining_nodes() -> None:
    index = index_of([node("a", current=4), node("b", status="draining"), node("c", max_jobs=0)])
    for policy in POLICIES:
        sel = select(index, pool="p", count=3, policy=policy, rng=random.Random(0))
        assert sel.picks == ()
        assert dict(sel.filtered) == {"full": 2, "draining": 1}
        assert sel.explain() == "0 of 3 picked in pool 'p'; filtered: 2 full, 1 draining"


def test_selection_defaults() -> None:
    sel = Selection(pool="p", picks=(), considered=0)
    assert dict(sel.filtered) == {} and sel.policy == "power_of_two" and not sel.exhaustive
    assert sel.node_ids == ()
