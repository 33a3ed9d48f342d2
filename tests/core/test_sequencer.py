"""PoolSequencer decisions, table-driven (DESIGN.md section 5; h11 test_state.py style)."""

from __future__ import annotations

import pytest

from lockless.core.sequencer import APPLY, IGNORE, RELIST, CatchUp, PoolSequencer


def synced_at(last: int, epoch: str | None = "e1", pool: str = "p") -> PoolSequencer:
    seq = PoolSequencer()
    seq.synced(pool, last, epoch)
    return seq


# (last_seq after relist, incoming seq) -> (decision, last_seq afterwards)
DECISIONS = {
    (10, 11): (APPLY, 10 + 1),
    (10, 10): (IGNORE, 10),
    (10, 3): (IGNORE, 10),
    (10, 0): (IGNORE, 10),
    (10, 12): (CatchUp(from_seq=11, to_seq=12), 10),
    (10, 500): (CatchUp(from_seq=11, to_seq=500), 10),
    (0, 1): (APPLY, 1),
    (0, 2): (CatchUp(from_seq=1, to_seq=2), 0),
}


@pytest.mark.parametrize(("last", "incoming"), sorted(DECISIONS))
def test_decision_table(last: int, incoming: int) -> None:
    seq = synced_at(last)
    decision, after = DECISIONS[(last, incoming)]
    assert seq.on_event("p", incoming) == decision
    assert seq.last_seq("p") == after


def test_a_pool_never_synced_asks_for_a_relist_and_stays_unpositioned() -> None:
    seq = PoolSequencer()
    assert seq.last_seq("p") is None
    assert seq.on_event("p", 1) == RELIST
    assert seq.on_event("p", 1) == RELIST
    assert seq.last_seq("p") is None
    assert seq.epoch("p") is None


def test_a_stream_applied_in_order_advances_one_by_one() -> None:
    seq = synced_at(0)
    assert [seq.on_event("p", s) for s in range(1, 6)] == [APPLY] * 5
    assert seq.last_seq("p") == 5
    assert seq.on_event("p", 5) == IGNORE  # a duplicate delivery


def test_catch_up_then_the_event_that_revealed_the_gap() -> None:
    seq = synced_at(4)
    decision = seq.on_event("p", 8)
    assert decision == CatchUp(from_seq=5, to_seq=8)
    # The applier applies 5..8 from the log and reports each.
    for s in range(decision.from_seq, decision.to_seq + 1):
        seq.advanced("p", s)
    assert seq.last_seq("p") == 8
    assert seq.on_event("p", 8) == IGNORE  # the live copy of 8, judged again, is now a duplicate
    assert seq.on_event("p", 9) == APPLY


def test_advanced_only_moves_forward_and_never_positions_an_unsynced_pool() -> None:
    seq = synced_at(10)
    seq.advanced("p", 7)
    assert seq.last_seq("p") == 10
    seq.advanced("p", 10)
    assert seq.last_seq("p") == 10
    seq.advanced("p", 12)
    assert seq.last_seq("p") == 12
    seq.advanced("other", 3)
    assert seq.last_seq("other") is None


def test_invalidate_forces_a_relist_and_synced_repositions() -> None:
    seq = synced_at(10)
    seq.invalidate("p")
    assert seq.last_seq("p") is None
    assert seq.on_event("p", 11) == RELIST
    seq.invalidate("p")  # forgetting twice is harmless
    seq.invalidate("never-seen")
    seq.synced("p", 20, "e2")
    assert seq.on_event("p", 21) == APPLY
    assert seq.epoch("p") == "e2"


def test_relist_may_move_last_seq_backwards_after_data_loss() -> None:
    seq = synced_at(1000, "old")
    seq.synced("p", 3, "new")  # Redis restarted empty: seq restarted
    assert seq.last_seq("p") == 3
    assert seq.on_event("p", 4) == APPLY


def test_pools_are_independent() -> None:
    seq = PoolSequencer()
    seq.synced("a", 5, "ea")
    seq.synced("b", 50, "eb")
    assert seq.on_event("a", 6) == APPLY
    assert seq.on_event("b", 6) == IGNORE
    assert seq.on_event("c", 1) == RELIST
    assert (seq.last_seq("a"), seq.last_seq("b"), seq.last_seq("c")) == (6, 50, None)
    assert (seq.epoch("a"), seq.epoch("b")) == ("ea", "eb")


# (redis seq, last_seq or None) -> behind?
BEHIND = {(10, 10): False, (9, 10): False, (11, 10): True, (0, None): True, (5, None): True}


@pytest.mark.parametrize(("redis_seq", "last"), sorted(BEHIND, key=str))
def test_behind(redis_seq: int, last: int | None) -> None:
    seq = PoolSequencer() if last is None else synced_at(last)
    assert seq.behind("p", redis_seq) is BEHIND[(redis_seq, last)]


# (epoch synced, epoch seen now) -> changed?
EPOCHS = {
    ("e1", "e1"): False,
    ("e1", "e2"): True,
    ("e1", None): True,  # the epoch key vanished: Redis lost its data
    (None, "e1"): True,  # records applied past seq 0 of an unknown epoch cannot be vouched for
    (None, None): False,
}


@pytest.mark.parametrize(("known", "seen"), sorted(EPOCHS, key=str))
def test_epoch_changed(known: str | None, seen: str | None) -> None:
    seq = synced_at(3, known)
    assert seq.epoch_changed("p", seen) is EPOCHS[(known, seen)]


def test_epoch_of_an_unknown_pool_never_counts_as_changed() -> None:
    assert not PoolSequencer().epoch_changed("p", "anything")


def test_a_pool_listed_empty_adopts_the_epoch_its_first_write_made() -> None:
    seq = synced_at(0, None)
    assert not seq.epoch_changed("p", "e1")  # listed before the first write: not a loss
    assert seq.adopt_first_epoch("p", "e1") and seq.epoch("p") == "e1"
    assert not seq.adopt_first_epoch("p", "e2")  # only the first one
    assert seq.epoch_changed("p", "e2")


def test_a_first_epoch_is_not_adopted_past_seq_0() -> None:
    seq = synced_at(3, None)
    assert not seq.adopt_first_epoch("p", "e1") and seq.epoch("p") is None


def test_catch_up_is_a_frozen_value() -> None:
    c = CatchUp(from_seq=1, to_seq=2)
    assert c == CatchUp(1, 2) and hash(c) == hash(CatchUp(1, 2))
    with pytest.raises(AttributeError):
        c.from_seq = 5  # type: ignore[misc]


def test_foreign_epoch_adopts_a_first_epoch_at_seq_0_and_flags_any_other() -> None:
    seq = synced_at(0, None)
    assert not seq.foreign_epoch("p", None)  # old events carry no epoch: nothing to judge
    assert not seq.foreign_epoch("p", "e1") and seq.epoch("p") == "e1"  # adopted
    assert not seq.foreign_epoch("p", "e1")
    assert seq.foreign_epoch("p", "e2")
    assert synced_at(3, None).foreign_epoch("p", "e1")  # past seq 0, an unknown life
