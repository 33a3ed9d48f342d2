"""L1Store: monotonic versions, tombstones, assumptions, relists, expiry (pure: no Redis, chosen ``now``)."""

from __future__ import annotations

import random

import pytest

from lockless.core.l1 import NEGATIVE, L1Store, PoolIndex
from lockless.core.selection import placement_key
from lockless.core.snapshot import NodeSnapshot


def snap(
    node_id: str = "n1",
    version: int = 1,
    *,
    pool: str = "p",
    current: int = 0,
    max_jobs: int = 4,
    status: str = "up",
    load: float = 0.0,
) -> NodeSnapshot:
    return NodeSnapshot(
        node_id=node_id,
        pool=pool,
        version=version,
        status=status,
        max_jobs=max_jobs,
        current_jobs=current,
        load=load,
    )


def store(**kwargs: float) -> L1Store:
    """A store with no jitter unless asked, so expiry times are exact."""
    kwargs.setdefault("ttl_jitter", 0.0)
    return L1Store(rng=random.Random(1), **kwargs)  # type: ignore[arg-type]


def index_consistent(index: PoolIndex) -> None:
    """The placeable list and draining count always agree with the snapshots."""
    expected = sorted(
        placement_key(n) for n in index.nodes.values() if n.status == "up" and n.current_jobs < n.max_jobs
    )
    assert list(index.placeable) == expected
    assert index.draining == sum(n.status == "draining" for n in index.nodes.values())
    assert set(index.expiry) == set(index.nodes)
    assert index.assumed <= set(index.nodes)


# ------------------------------------------------------------------------- reads
def test_unknown_pool_and_unknown_node_are_misses() -> None:
    l1 = store()
    assert l1.get("nope", "n1", 0.0) is None
    assert l1.peek("nope", "n1") is None
    assert l1.version_of("nope", "n1") == 0
    l1.apply(snap("n1"), 0.0)
    assert l1.get("p", "n2", 0.0) is None
    assert l1.peek("p", "n2") is None
    assert l1.version_of("p", "n2") == 0
    assert len(l1) == 1


def test_pool_is_created_once() -> None:
    l1 = store()
    assert l1.pool("p") is l1.pool("p")
    assert "p" in l1.pools


def test_entry_expires_after_its_ttl_but_peek_still_sees_it() -> None:
    l1 = store(entry_ttl_s=10.0)
    node = snap()
    assert l1.apply(node, 100.0)
    assert l1.get("p", "n1", 109.999) is node
    assert l1.get("p", "n1", 110.0) is None
    assert l1.peek("p", "n1") is node
    assert l1.version_of("p", "n1") == 1


# --------------------------------------------------------------- monotonic apply
def test_apply_keeps_versions_monotonic() -> None:
    l1 = store()
    assert l1.apply(snap(version=5, current=1), 0.0)
    assert not l1.apply(snap(version=4, current=3), 0.0)
    assert l1.peek("p", "n1").current_jobs == 1  # type: ignore[union-attr]
    assert l1.apply(snap(version=6, current=2), 0.0)
    assert l1.peek("p", "n1").version == 6  # type: ignore[union-attr]
    index_consistent(l1.pool("p"))


def test_same_version_reread_extends_expiry_without_replacing() -> None:
    l1 = store(entry_ttl_s=10.0)
    first = snap(version=3)
    l1.apply(first, 0.0)
    again = snap(version=3)
    assert not l1.apply(again, 8.0)
    assert l1.peek("p", "n1") is first
    assert l1.get("p", "n1", 15.0) is first  # would have expired at 10 without the refresh
    assert l1.get("p", "n1", 18.0) is None


def test_older_version_does_not_extend_expiry() -> None:
    l1 = store(entry_ttl_s=10.0)
    l1.apply(snap(version=3), 0.0)
    assert not l1.apply(snap(version=2), 8.0)
    assert l1.get("p", "n1", 10.0) is None


def test_reindexing_follows_status_and_capacity_changes() -> None:
    l1 = store()
    l1.apply(snap("a", 1, current=0, max_jobs=1), 0.0)
    l1.apply(snap("b", 2, status="draining"), 0.0)
    index = l1.pool("p")
    assert [k[2] for k in index.placeable] == ["a"] and index.draining == 1
    l1.apply(snap("a", 3, current=1, max_jobs=1), 0.0)  # now full
    l1.apply(snap("b", 4, status="up"), 0.0)  # back from draining
    assert [k[2] for k in index.placeable] == ["b"] and index.draining == 0
    l1.apply(snap("b", 5, status="draining", current=4), 0.0)  # draining and full
    assert list(index.placeable) == [] and index.draining == 1
    index_consistent(index)


# ------------------------------------------------------------------- tombstones
def test_removal_leaves_a_tombstone_that_stops_stale_resurrection() -> None:
    l1 = store()
    l1.apply(snap(version=3), 0.0)
    assert l1.remove("p", "n1", 5)
    assert l1.peek("p", "n1") is None
    assert l1.version_of("p", "n1") == 5
    assert not l1.apply(snap(version=3), 0.0)  # stale read of the record before removal
    assert not l1.apply(snap(version=5), 0.0)  # the removal's own version is not newer
    assert l1.peek("p", "n1") is None
    assert l1.apply(snap(version=6), 0.0)  # a re-registration after the removal
    assert l1.peek("p", "n1").version == 6  # type: ignore[union-attr]
    assert "n1" not in l1.pool("p").tombstones
    index_consistent(l1.pool("p"))


def test_an_old_removal_does_not_drop_a_newer_snapshot() -> None:
    l1 = store()
    l1.apply(snap(version=9), 0.0)
    assert not l1.remove("p", "n1", 5)
    assert l1.peek("p", "n1").version == 9  # type: ignore[union-attr]
    assert "n1" not in l1.pool("p").tombstones


def test_removing_an_uncached_node_records_the_tombstone_only() -> None:
    l1 = store()
    assert not l1.remove("p", "n1", 4)
    assert l1.version_of("p", "n1") == 4
    assert not l1.remove("p", "n1", 2)  # an older removal never lowers the tombstone
    assert l1.version_of("p", "n1") == 4
    assert not l1.apply(snap(version=4), 0.0)
    assert l1.apply(snap(version=5), 0.0)


def test_removal_at_equal_version_drops_and_clears_assumption() -> None:
    l1 = store()
    l1.apply(snap(version=2), 0.0)
    l1.assume(snap(version=3, current=1), 0.0)
    assert l1.remove("p", "n1", 3)
    index = l1.pool("p")
    assert "n1" not in index.assumed and "n1" not in index.expiry
    index_consistent(index)


# ---------------------------------------------------------------------- assume
def test_assumption_is_retired_only_by_a_snapshot_at_least_as_new() -> None:
    l1 = store()
    l1.apply(snap(version=5, current=0), 0.0)
    assert l1.assume(snap(version=8, current=1), 0.0)
    index = l1.pool("p")
    assert "n1" in index.assumed
    # An older event arriving later (another writer's version 6) must not erase it.
    assert not l1.apply(snap(version=6, current=0, load=0.5), 0.0)
    assert l1.peek("p", "n1").current_jobs == 1  # type: ignore[union-attr]
    assert "n1" in index.assumed
    # The real record at the assumed version replaces the assumption (it may differ in other fields).
    real = snap(version=8, current=1, load=0.5)
    assert l1.apply(real, 0.0)
    assert l1.peek("p", "n1") is real
    assert "n1" not in index.assumed
    # Once confirmed, a same-version copy is a plain re-read again.
    assert not l1.apply(snap(version=8, current=1, load=0.5), 0.0)
    assert l1.peek("p", "n1") is real
    index_consistent(index)


def test_a_newer_snapshot_also_retires_an_assumption() -> None:
    l1 = store()
    l1.apply(snap(version=1), 0.0)
    l1.assume(snap(version=2, current=1), 0.0)
    assert l1.apply(snap(version=4, current=0), 0.0)
    assert "n1" not in l1.pool("p").assumed
    assert l1.peek("p", "n1").current_jobs == 0  # type: ignore[union-attr]


def test_assume_never_goes_backwards() -> None:
    l1 = store()
    current = snap(version=5, current=2)
    l1.apply(current, 0.0)
    assert not l1.assume(snap(version=4, current=3), 0.0)
    assert l1.peek("p", "n1") is current
    assert "n1" not in l1.pool("p").assumed


def test_assume_at_the_same_version_counts_a_local_admission() -> None:
    # LOCAL_ONLY admits with no new version from Redis: the local count must still go up,
    # or every later local admission sees the node free and admits past max_jobs.
    l1 = store()
    l1.apply(snap(version=5, current=0, max_jobs=1), 0.0)
    assert l1.assume(snap(version=5, current=1, max_jobs=1), 0.0)
    assert l1.peek("p", "n1").current_jobs == 1  # type: ignore[union-attr]
    assert "n1" in l1.pool("p").assumed
    assert list(l1.pool("p").placeable) == []  # full in the local view: selection skips it
    index_consistent(l1.pool("p"))
    # Redis confirms with a newer version after replay: the assumption is retired.
    assert l1.apply(snap(version=6, current=1, max_jobs=1), 0.0)
    assert "n1" not in l1.pool("p").assumed


def test_assume_on_an_uncached_node_stores_it() -> None:
    l1 = store()
    assert l1.assume(snap(version=3, current=1), 0.0)
    assert l1.peek("p", "n1").version == 3  # type: ignore[union-attr]
    assert "n1" in l1.pool("p").assumed


def test_assume_clears_a_negative_entry() -> None:
    l1 = store(negative_ttl_s=5.0)
    l1.remember_missing("p", "n1", 0.0)
    assert l1.get("p", "n1", 1.0) is NEGATIVE
    l1.assume(snap(version=2), 1.0)
    assert l1.get("p", "n1", 1.0) is not NEGATIVE


# -------------------------------------------------------------------- negatives
def test_negative_entries_expire() -> None:
    l1 = store(negative_ttl_s=2.0)
    l1.remember_missing("p", "ghost", 10.0)
    assert l1.get("p", "ghost", 11.999) is NEGATIVE
    assert l1.get("p", "ghost", 12.0) is None
    assert "ghost" not in l1.pool("p").negative  # dropped on expiry, not kept forever


def test_a_cached_node_is_never_negative_cached() -> None:
    l1 = store(negative_ttl_s=2.0)
    node = snap()
    l1.apply(node, 0.0)
    l1.remember_missing("p", "n1", 0.0)
    assert l1.get("p", "n1", 1.0) is node
    assert "n1" not in l1.pool("p").negative


def test_applying_a_node_clears_its_negative_entry() -> None:
    l1 = store(negative_ttl_s=100.0)
    l1.remember_missing("p", "n1", 0.0)
    l1.apply(snap(), 0.0)
    assert l1.get("p", "n1", 1.0) == snap()
    assert l1.pool("p").negative == {}


def test_clear_negative_forgets_every_negative_of_the_pool() -> None:
    l1 = store(negative_ttl_s=100.0)
    for i in range(3):
        l1.remember_missing("p", f"g{i}", 0.0)
    l1.remember_missing("q", "g0", 0.0)
    l1.clear_negative("p")
    assert all(l1.get("p", f"g{i}", 1.0) is None for i in range(3))
    assert l1.get("q", "g0", 1.0) is NEGATIVE


# ---------------------------------------------------------------------- jitter
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_jittered_expiry_stays_within_bounds_and_spreads(seed: int) -> None:
    l1 = L1Store(entry_ttl_s=100.0, ttl_jitter=0.2, negative_ttl_s=10.0, rng=random.Random(seed))
    for i in range(500):
        l1.apply(snap(f"n{i}"), 1000.0)
        l1.remember_missing("p", f"g{i}", 1000.0)
    index = l1.pool("p")
    expiries = list(index.expiry.values())
    assert all(1080.0 <= t <= 1120.0 for t in expiries)
    assert max(expiries) - min(expiries) > 20.0  # actually spread, not all at one instant
    negatives = list(index.negative.values())
    assert all(1008.0 <= t <= 1012.0 for t in negatives)
    assert max(negatives) - min(negatives) > 2.0


def test_same_seed_gives_the_same_expiries() -> None:
    def expiries(seed: int) -> list[float]:
        l1 = L1Store(ttl_jitter=0.3, rng=random.Random(seed))
        for i in range(20):
            l1.apply(snap(f"n{i}"), 0.0)
        return [l1.pool("p").expiry[f"n{i}"] for i in range(20)]

    assert expiries(42) == expiries(42)
    assert expiries(42) != expiries(43)


def test_default_rng_is_created_when_none_given() -> None:
    l1 = L1Store(entry_ttl_s=10.0, ttl_jitter=0.5)
    l1.apply(snap(), 0.0)
    assert 5.0 <= l1.pool("p").expiry["n1"] <= 15.0


# ----------------------------------------------------------------- replace_pool
def test_replace_pool_installs_exactly_the_listing() -> None:
    l1 = store()
    l1.apply(snap("gone", 2), 0.0)
    l1.remove("p", "removed", 3)
    l1.remember_missing("p", "ghost", 0.0)
    l1.replace_pool("p", [snap("a", 5), snap("b", 6, status="draining")], 1.0)
    index = l1.pool("p")
    assert set(index.nodes) == {"a", "b"}
    assert index.tombstones == {} and index.negative == {}
    index_consistent(index)


def test_replace_pool_keeps_a_newer_cached_snapshot_and_its_assumption() -> None:
    l1 = store()
    l1.apply(snap("a", 5), 0.0)
    l1.assume(snap("a", 9, current=1), 0.0)
    l1.apply(snap("b", 7, current=2), 0.0)
    newer_b = l1.peek("p", "b")
    l1.replace_pool("p", [snap("a", 6), snap("b", 4), snap("c", 3)], 1.0)
    index = l1.pool("p")
    assert index.nodes["a"].version == 9 and index.assumed == {"a"}
    assert index.nodes["b"] is newer_b
    assert index.nodes["c"].version == 3
    index_consistent(index)


def test_replace_pool_takes_the_listing_when_it_is_newer_and_drops_the_assumption() -> None:
    l1 = store()
    l1.assume(snap("a", 5, current=1), 0.0)
    l1.replace_pool("p", [snap("a", 8, current=0)], 1.0)
    index = l1.pool("p")
    assert index.nodes["a"].version == 8 and index.assumed == set()


def test_replace_pool_with_reset_trusts_only_the_listing() -> None:
    # After an epoch change versions restart: the old, higher versions mean nothing.
    l1 = store()
    l1.apply(snap("a", 500, current=3), 0.0)
    l1.assume(snap("a", 501, current=4), 0.0)
    l1.replace_pool("p", [snap("a", 2, current=0)], 1.0, reset=True)
    index = l1.pool("p")
    assert index.nodes["a"].version == 2 and index.nodes["a"].current_jobs == 0
    assert index.assumed == set()
    index_consistent(index)


def test_replace_pool_of_a_new_pool_and_with_nothing() -> None:
    l1 = store()
    l1.replace_pool("fresh", [snap("a", 1, pool="fresh")], 0.0)
    assert set(l1.pool("fresh").nodes) == {"a"}
    l1.replace_pool("fresh", [], 0.0)
    assert l1.pool("fresh").nodes == {}
    assert len(l1) == 0


def test_replace_pool_leaves_other_pools_alone() -> None:
    l1 = store()
    l1.apply(snap("a", 1, pool="q"), 0.0)
    l1.replace_pool("p", [], 0.0)
    assert l1.peek("q", "a") is not None


def test_drop_of_an_unknown_node_is_harmless() -> None:
    index = PoolIndex()
    assert index.drop("nope") is None
    index_consistent(index)


def test_high_water_is_the_highest_version_ever_held_or_removed() -> None:
    l1 = store()
    assert l1.high_water("p") == 0
    l1.apply(snap("a", version=3), 0.0)
    l1.apply(snap("b", version=5), 0.0)
    l1.remove("p", "b", 7)
    assert l1.high_water("p") == 7  # the removal's version counts: Redis's seq reached it
    l1.replace_pool("p", [snap("a", version=3)], 1.0, seq=6)  # an older listing read in flight
    assert l1.high_water("p") == 7
    l1.replace_pool("p", [snap("a", version=1)], 2.0, reset=True)  # versions restarted
    assert l1.high_water("p") == 1


def test_a_relist_older_than_an_assumption_keeps_it_over_an_older_tombstone() -> None:
    # Found by the ordering property: removed at 2, our admission answered at 10, then a
    # listing read at seq 0 arrives; the node must stay at 10, and an event at 4 is stale.
    l1 = store()
    l1.remove("p", "b", 2)
    assert l1.assume(snap("b", version=10), 0.0)
    l1.replace_pool("p", [], 1.0, seq=0)
    node = l1.peek("p", "b")
    assert node is not None and node.version == 10
    assert not l1.apply(snap("b", version=4), 2.0)
    assert l1.peek("p", "b").version == 10
