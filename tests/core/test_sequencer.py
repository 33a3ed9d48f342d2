"""PoolSequencer decisions, table-driven (DESIGN.md section 5; h11 test_state.py style)."""

from __future__ import annotations

import pytest

from lockless.core.sequencer import (
    APPLY,
    DIVERGED,
    HISTORY,
    IGNORE,
    NEW_EPOCH,
    RELIST,
    UP_TO_DATE,
    CatchUp,
    PoolSequencer,
    Verdict,
    answered_by_a_new_life,
)


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
    # The applier applies 5..8 from the log, judging each entry like a live event.
    assert [seq.on_event("p", s) for s in range(decision.from_seq, decision.to_seq + 1)] == [APPLY] * 4
    assert seq.last_seq("p") == 8
    assert seq.on_event("p", 8) == IGNORE  # the live copy of 8, judged again, is now a duplicate
    assert seq.on_event("p", 9) == APPLY


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


# (last_seq or None, redis seq, redis epoch, high water) -> plan
PLANS = {
    (None, 5, "e1", 0): RELIST,  # never positioned
    (10, 10, "e1", 10): UP_TO_DATE,
    (10, 14, "e1", 10): CatchUp(from_seq=11, to_seq=14),
    (10, 7, "e1", 7): RELIST,  # Redis behind us with the same epoch: cannot catch up backwards
    (10, 14, "e2", 10): RELIST,  # another life of the pool
    (10, 10, "e1", 12): RELIST,  # L1 saw version 12 of a pool whose seq is 10: data lost
}


@pytest.mark.parametrize("case", sorted(PLANS, key=str))
def test_plan_table(case: tuple[int | None, int, str, int]) -> None:
    last, redis_seq, epoch, high_water = case
    seq = PoolSequencer() if last is None else synced_at(last)
    assert seq.plan("p", redis_seq, epoch, high_water) == PLANS[case]
    assert seq.last_seq("p") == last  # planning changes nothing


def test_probe_sees_lost_data() -> None:
    assert synced_at(10).probe("p", 10, "e2", 10) is Verdict.LOST_DATA
    assert synced_at(10).probe("p", 10, "e1", 11) is Verdict.LOST_DATA


def test_probe_tells_events_in_flight_from_events_lost() -> None:
    seq = synced_at(10)
    assert seq.probe("p", 10, "e1", 10) is Verdict.OK  # up to date
    assert seq.probe("p", 12, "e1", 10) is Verdict.OK  # behind once: events may be in flight
    assert [seq.on_event("p", s) for s in (11, 12)] == [APPLY, APPLY]
    assert seq.probe("p", 14, "e1", 12) is Verdict.OK  # behind again, but it reached the last probe's 12
    assert seq.probe("p", 15, "e1", 12) is Verdict.STALLED  # still below 14 a probe later: events lost


def test_probe_forgets_being_behind_once_caught_up_or_relisted() -> None:
    seq = synced_at(10)
    assert seq.probe("p", 12, "e1", 10) is Verdict.OK
    assert [seq.on_event("p", s) for s in (11, 12)] == [APPLY, APPLY]
    assert seq.probe("p", 12, "e1", 12) is Verdict.OK  # caught up: the record of being behind goes
    assert seq.probe("p", 15, "e1", 12) is Verdict.OK  # behind again, but only once
    seq.synced("p", 15, "e1")
    assert seq.probe("p", 16, "e1", 15) is Verdict.OK  # the relist forgot the earlier probe


def test_probe_adopts_the_first_epoch_of_a_pool_listed_empty() -> None:
    seq = synced_at(0, None)
    assert seq.probe("p", 0, "e1", 0) is Verdict.OK
    assert seq.epoch("p") == "e1"


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
    assert seq.lost_data("p", 3, seen, 3) is EPOCHS[(known, seen)]


def test_a_seq_below_the_high_water_is_lost_data_whatever_the_epoch() -> None:
    assert synced_at(3, "e1").lost_data("p", 3, "e1", 4)
    assert not synced_at(3, "e1").lost_data("p", 4, "e1", 4)


def test_epoch_of_an_unknown_pool_never_counts_as_changed() -> None:
    assert not PoolSequencer().lost_data("p", 0, "anything", 0)


def test_a_pool_listed_empty_adopts_the_epoch_its_first_write_made() -> None:
    seq = synced_at(0, None)
    assert not seq.lost_data("p", 1, "e1", 0)  # listed before the first write: not a loss
    assert seq.adopt_first_epoch("p", "e1") and seq.epoch("p") == "e1"
    assert not seq.adopt_first_epoch("p", "e2")  # only the first one
    assert seq.lost_data("p", 1, "e2", 0)


def test_a_first_epoch_is_not_adopted_past_seq_0() -> None:
    seq = synced_at(3, None)
    assert not seq.adopt_first_epoch("p", "e1") and seq.epoch("p") is None


def test_catch_up_is_a_frozen_value() -> None:
    c = CatchUp(from_seq=1, to_seq=2)
    assert c == CatchUp(1, 2) and hash(c) == hash(CatchUp(1, 2))
    with pytest.raises(AttributeError):
        c.from_seq = 5  # type: ignore[misc]


def test_an_event_of_another_epoch_is_new_unless_adopted_at_seq_0() -> None:
    seq = synced_at(0, None)
    assert seq.on_event("p", 1, None) == APPLY  # old events carry no epoch: nothing to judge
    seq = synced_at(0, None)
    assert seq.on_event("p", 1, "e1") == APPLY and seq.epoch("p") == "e1"  # adopted
    assert seq.on_event("p", 2, "e1") == APPLY
    assert seq.on_event("p", 3, "e2") == NEW_EPOCH
    assert seq.last_seq("p") == 2  # a new epoch moves nothing
    assert synced_at(3, None).on_event("p", 4, "e1") == NEW_EPOCH  # past seq 0, an unknown life
    assert PoolSequencer().on_event("p", 1, "e1") == NEW_EPOCH  # never listed: nothing to adopt into


# ------------------------------------------------ marks: writes lost in a failover
def marked(last: int, marks: list[int], pool: str = "p") -> PoolSequencer:
    """Synced at ``last`` (marked ``marks[0]``), then ``marks[1:]`` applied in order."""
    seq = PoolSequencer()
    seq.synced(pool, last, "e1", marks[0])
    for i, mark in enumerate(marks[1:], start=1):
        assert seq.on_event(pool, last + i, "e1", mark) == APPLY
    return seq


def test_marks_are_kept_for_the_seqs_applied_and_none_beyond() -> None:
    seq = marked(10, [100, 111, 112])
    assert [seq.mark("p", s) for s in (10, 11, 12)] == [100, 111, 112]
    assert seq.mark("p", 13) is None  # not applied yet
    assert seq.mark("p", 9) is None  # before the relist: unknown
    assert seq.mark("q", 10) is None  # a pool never listed


def test_marks_keep_only_the_last_history_seqs() -> None:
    seq = marked(0, [0, *range(1, HISTORY + 11)])
    assert seq.last_seq("p") == HISTORY + 10
    assert seq.mark("p", HISTORY + 10) == HISTORY + 10
    assert seq.mark("p", 11) == 11  # the oldest kept
    assert seq.mark("p", 10) is None


def test_an_event_at_an_applied_seq_of_another_write_is_a_diverged_history() -> None:
    seq = marked(10, [100, 111, 112])
    assert seq.on_event("p", 11, "e1", 111) == IGNORE  # the same write again: a duplicate
    assert seq.on_event("p", 11, "e1", None) == IGNORE  # no mark (an old writer): cannot tell
    assert seq.on_event("p", 11, "e1", 999) == DIVERGED  # seq 11 reused by another write
    # Lost data until relisted: a relist installs Redis as it is (versions may go back).
    assert seq.lost_data("p", 20, "e1", high_water=12)
    assert seq.plan("p", 20, "e1", high_water=12) == RELIST
    seq.synced("p", 13, "e1", 130)
    assert not seq.lost_data("p", 20, "e1", high_water=13)
    assert seq.mark("p", 13) == 130 and seq.mark("p", 12) is None


def test_an_event_below_the_kept_marks_is_ignored_without_a_verdict() -> None:
    seq = marked(10, [100, 111])
    assert seq.on_event("p", 9, "e1", 999) == IGNORE  # older than anything marked: unknown


@pytest.mark.parametrize(
    ("redis_seq", "mark_at_last", "diverged", "plan"),
    [
        (12, 112, False, UP_TO_DATE),  # Redis holds our last write at our last seq
        (15, 112, False, CatchUp(from_seq=13, to_seq=15)),  # ... and has moved on
        (15, 999, True, RELIST),  # another write at our last seq: ours was lost
        (12, 999, True, RELIST),
        (15, None, False, CatchUp(from_seq=13, to_seq=15)),  # the log no longer holds it: cannot tell
        (11, 999, False, RELIST),  # Redis behind us: the high-water test's case (seq went back)
    ],
)
def test_redis_holding_another_write_at_our_last_seq_is_a_diverged_history(
    redis_seq: int, mark_at_last: int | None, diverged: bool, plan: object
) -> None:
    seq = marked(10, [100, 111, 112])
    assert seq.diverged("p", redis_seq, mark_at_last, 12) is diverged
    assert seq.plan("p", redis_seq, "e1", high_water=12, mark=mark_at_last, at=12) == plan
    assert seq.lost_data("p", redis_seq, "e1", high_water=12) is (diverged or redis_seq < 12)


def test_the_probe_reports_a_diverged_history_as_lost_data() -> None:
    seq = marked(10, [100, 111, 112])
    assert seq.probe("p", 12, "e1", high_water=12, mark=112, at=12) is Verdict.OK
    assert seq.probe("p", 14, "e1", high_water=12, mark=999, at=12) is Verdict.LOST_DATA


def test_the_mark_is_compared_at_the_seq_it_was_read_at() -> None:
    # The log was read at our last seq 11; seq 12 was applied while the read was in flight.
    seq = marked(10, [100, 111, 112])
    assert not seq.diverged("p", 12, 111, at=11)
    assert seq.diverged("p", 12, 112, at=11)  # Redis holds at 11 the write we applied at 12
    assert not seq.diverged("p", 12, 111, at=None)  # no log entry asked about


def test_without_a_mark_of_our_own_nothing_can_be_told() -> None:
    seq = PoolSequencer()
    seq.synced("p", 10, "e1")  # relisted without reading the log's entry
    assert seq.mark("p", 10) is None
    assert not seq.diverged("p", 15, 999, 10)
    assert seq.on_event("p", 10, "e1", 999) == IGNORE
    assert not seq.diverged("q", 15, 999, 10)  # a pool never listed


def test_invalidate_forgets_the_marks() -> None:
    seq = marked(10, [100, 111])
    seq.invalidate("p")
    assert seq.mark("p", 11) is None
    seq.synced("p", 11, "e1", 211)
    assert seq.mark("p", 11) == 211


def test_applying_after_invalidate_and_resync_starts_a_fresh_history() -> None:
    seq = PoolSequencer()
    seq.synced("p", 0, None)
    assert seq.on_event("p", 1, "e1", 10) == APPLY  # adopts the first epoch
    assert seq.mark("p", 1) == 10


def test_a_loss_holds_until_the_relist_however_far_redis_moves_meanwhile() -> None:
    # Found by the sentinel-failover experiment: a plan saw the failover's loss (Redis's seq below
    # what L1 held), but by the time the relist read the pool, new writes had carried the seq
    # past high_water; judged afresh, the relist found nothing lost and kept a lost write.
    seq = synced_at(10, "e1")
    assert seq.plan("p", 8, "e1", 12) is RELIST
    assert seq.lost_data("p", 15, "e1", 12)  # the relist's own read: still lost
    assert seq.probe("p", 16, "e1", 12) is Verdict.LOST_DATA
    seq.synced("p", 15, "e1")  # relisted (with a reset): nothing is lost any more
    assert not seq.lost_data("p", 16, "e1", 15)
    # Every other way to judge a loss holds the same way: a new epoch...
    seq = synced_at(10, "e1")
    assert seq.probe("p", 10, "e2", 10) is Verdict.LOST_DATA and seq.lost_data("p", 11, "e1", 10)
    # ...and a diverged history.
    seq = synced_at(10, "e1")
    assert seq.on_event("p", 11, "e1", mark=111) is APPLY
    assert seq.on_event("p", 11, "e1", mark=999) is DIVERGED
    assert seq.lost_data("p", 12, "e1", 11)


def test_after_a_reconnect_events_follow_on_only_once_the_history_is_checked() -> None:
    # Found by the sentinel-failover experiment: after a failover the subscription landed on
    # the new primary once its writes had carried the pool's seq past last_seq; the next event
    # was last_seq + 1 and was applied, and the writes the new primary had lost stayed in L1.
    seq = synced_at(10, "e1")
    assert seq.on_event("p", 11, "e1", mark=111) is APPLY
    seq.unverify(["p"])
    assert seq.on_event("p", 12, "e1", mark=222) is RELIST  # perhaps another history's 12
    assert seq.on_event("p", 16, "e1", mark=666) is RELIST  # nor a catch-up
    # The repair's read: Redis holds another write at our last seq, 11: lost, relist.
    assert seq.plan("p", 16, "e1", 11, mark=999, at=11) is RELIST
    assert seq.lost_data("p", 16, "e1", 11)
    # The same history: the repair catches up, and events follow on again.
    seq = synced_at(10, "e1")
    assert seq.on_event("p", 11, "e1", mark=111) is APPLY
    seq.unverify(["p"])
    assert seq.plan("p", 12, "e1", 11, mark=111, at=11) == CatchUp(from_seq=12, to_seq=12)
    assert seq.on_event("p", 12, "e1", mark=222) is APPLY
    # A relist checks everything too.
    seq.unverify(["p"])
    seq.synced("p", 20, "e1", 2020)
    assert seq.on_event("p", 21, "e1", mark=2121) is APPLY


@pytest.mark.parametrize(
    ("version", "high_water", "lost"),
    [
        (8, 7, False),  # the next seq: same life
        (7, 7, True),  # a seq L1 had already seen was reused
        (1, 7, True),  # Redis restarted empty
        (1, 0, False),  # nothing seen before: nothing to tell
        (0, 7, False),  # no version (nothing written)
    ],
)
def test_a_write_answered_at_a_seen_version_is_lost_data(version: int, high_water: int, lost: bool) -> None:
    assert answered_by_a_new_life(version, high_water) is lost
