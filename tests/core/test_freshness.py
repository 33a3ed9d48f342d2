"""The read rule: where a read is served from, and whether it is stale or refused (table-driven)."""

from __future__ import annotations

import pytest

from lockless.core.freshness import ReadPlan, Source, is_fresh, plan_read
from lockless.core.modes import Mode

BOUND = 30.0

# (mode, age s, refuse past the bound?) -> plan (None = refuse with StaleRead)
PLANS = {
    (Mode.NORMAL, 0.0, False): ReadPlan(Source.CACHE, False),
    (Mode.NORMAL, 30.0, False): ReadPlan(Source.CACHE, False),  # the bound itself is still fresh
    (Mode.NORMAL, 30.001, False): ReadPlan(Source.CACHE, True),
    (Mode.NORMAL, 30.001, True): None,
    (Mode.NORMAL, 5.0, True): ReadPlan(Source.CACHE, False),
    (Mode.L2_ONLY, 5.0, False): ReadPlan(Source.CHECKED, False),
    (Mode.L2_ONLY, 60.0, False): ReadPlan(Source.CHECKED, True),
    (Mode.L2_ONLY, 60.0, True): None,
    (Mode.LOCAL_ONLY, 0.0, False): ReadPlan(Source.LAST_KNOWN_GOOD, True),  # always last-known-good
    (Mode.LOCAL_ONLY, 0.0, True): ReadPlan(Source.LAST_KNOWN_GOOD, True),
    (Mode.LOCAL_ONLY, 60.0, False): ReadPlan(Source.LAST_KNOWN_GOOD, True),
    (Mode.LOCAL_ONLY, 60.0, True): None,
}


@pytest.mark.parametrize("case", sorted(PLANS, key=str))
def test_read_plan_table(case: tuple[Mode, float, bool]) -> None:
    mode, age, refuse = case
    assert plan_read(mode, age, BOUND, refuse_stale=refuse) == PLANS[case]


def test_every_mode_has_a_plan() -> None:
    assert {mode for mode, _, _ in PLANS} == set(Mode)


def test_is_fresh_is_the_bound_inclusive() -> None:
    assert is_fresh(0.0, BOUND) and is_fresh(BOUND, BOUND)
    assert not is_fresh(BOUND + 1e-9, BOUND)
