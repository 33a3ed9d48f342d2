"""How a read is served, given the mode and the age of what the instance knows.

One rule, in one place (DESIGN.md sections 4 and 5): every read can say how old its
data may be (``age``: seconds since the instance last heard from Redis), a configured
bound decides what a read does past it, and the mode decides where the read goes.

=============  ==========================  ==================================
mode           within the bound            past the bound
=============  ==========================  ==================================
NORMAL         L1 (miss -> Redis)          ``refuse``: StaleRead; ``serve``: L1, marked stale
L2_ONLY        L1 checked against Redis    ``refuse``: StaleRead; ``serve``: checked, marked stale
LOCAL_ONLY     L1 last-known-good, stale   ``refuse``: StaleRead; ``serve``: L1, marked stale
=============  ==========================  ==================================

Pure: the caller passes the mode, the age and the policy, and carries out the plan.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from lockless.core.modes import Mode


class Source(enum.Enum):
    """Where a read is answered from."""

    #: L1; a miss or an expired entry is read from Redis (single flight).
    CACHE = "cache"
    #: L1 checked against Redis within the version-check budget (L2_ONLY).
    CHECKED = "checked"
    #: L1 as it is, last-known-good (LOCAL_ONLY: Redis is not answering).
    LAST_KNOWN_GOOD = "last_known_good"


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """How to serve one read: from where, and whether to mark the answer stale."""

    source: Source
    stale: bool


_PLANS = {
    (mode, stale): ReadPlan(source, stale)
    for mode, source in (
        (Mode.NORMAL, Source.CACHE),
        (Mode.L2_ONLY, Source.CHECKED),
        (Mode.LOCAL_ONLY, Source.LAST_KNOWN_GOOD),
    )
    for stale in (False, True)
}


def is_fresh(age_s: float, bound_s: float) -> bool:
    """Within the staleness bound: the data is at most ``bound_s`` seconds old."""
    return age_s <= bound_s


def plan_read(mode: Mode, age_s: float, bound_s: float, *, refuse_stale: bool) -> ReadPlan | None:
    """The plan for a read in ``mode`` with data ``age_s`` old; None means refuse (StaleRead).

    A LOCAL_ONLY answer is always marked stale: it is last-known-good, however recent.
    """
    fresh = is_fresh(age_s, bound_s)
    if not fresh and refuse_stale:
        return None
    return _PLANS[mode, (not fresh) or mode is Mode.LOCAL_ONLY]
