"""Per-pool event ordering and repair decisions (DESIGN.md section 5).

Every mutation of a pool gets the next value of the pool's ``seq``. An instance that
has applied everything up to ``last_seq`` expects ``last_seq + 1`` next. Three questions
are answered here, all without I/O:

1. **An event arrived** (:meth:`PoolSequencer.on_event`):

   * an event of another life of the pool (its ``epoch`` differs from the one L1's
     records belong to: Redis lost its data and seqs restarted) -> :data:`NEW_EPOCH`,
     relist; it cannot be placed by seq;
   * a pool never positioned (first start, after a bad event) -> :data:`RELIST`;
   * ``seq == last_seq + 1`` -> :data:`APPLY`, and ``last_seq`` advances;
   * ``seq <= last_seq`` -> :data:`IGNORE` (a duplicate, or an event a relist or
     catch-up already covered; harmless because snapshots are versioned);
   * ``seq >  last_seq + 1`` -> a gap: :class:`CatchUp` from ``last_seq + 1`` (read the
     pool log; if it no longer holds that entry, the caller relists).

2. **Redis says the pool is at seq S, epoch E** (after a reconnect, an outage, a bad
   event) (:meth:`PoolSequencer.plan`): relist, catch up to S, or nothing.

3. **The periodic probe read S and E** (:meth:`PoolSequencer.probe`): data lost, events
   lost silently (behind at two probes in a row), or fine.

The caller (the registry's pool synchroniser) carries decisions out and reports back
with :meth:`PoolSequencer.synced` after a relist. Events that arrive while a repair is
in flight wait in its queue and are then judged against the repaired ``last_seq``, so
nothing falls between the relist and the stream.

Lost data. Versions are pool seqs, so Redis losing data shows as a new ``epoch`` or as
a ``seq`` below the highest version L1 ever held (``high_water``, from L1): either means
the records L1 holds belong to a life of the pool that no longer exists.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Verdict(enum.Enum):
    """Decisions that need no parameters."""

    #: Apply the event; ``last_seq`` has advanced to its seq.
    APPLY = "apply"
    #: Already covered (duplicate, or older than a relist or catch-up).
    IGNORE = "ignore"
    #: The pool has no position: relist (or repair) it before placing events.
    RELIST = "relist"
    #: The event belongs to another life of the pool's data: relist from scratch.
    NEW_EPOCH = "new_epoch"
    #: ``plan``: the instance holds everything Redis has.
    UP_TO_DATE = "up_to_date"
    #: ``probe``: nothing to do (or events are merely in flight).
    OK = "ok"
    #: ``probe``: Redis lost the pool's data (epoch changed, or seq below what L1 saw).
    LOST_DATA = "lost_data"
    #: ``probe``: behind Redis at two probes in a row: events were lost, not in flight.
    STALLED = "stalled"


APPLY = Verdict.APPLY
IGNORE = Verdict.IGNORE
RELIST = Verdict.RELIST
NEW_EPOCH = Verdict.NEW_EPOCH
UP_TO_DATE = Verdict.UP_TO_DATE


@dataclass(frozen=True, slots=True)
class CatchUp:
    """Read the pool log from ``from_seq`` (inclusive) up to at least ``to_seq``."""

    from_seq: int
    to_seq: int


Decision = Verdict | CatchUp


class PoolSequencer:
    """``last_seq`` and ``epoch`` per pool, and what to do with the next event of each."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._epoch: dict[str, str | None] = {}
        # pool -> Redis seq seen behind at the previous probe (see probe()).
        self._behind: dict[str, int] = {}

    def last_seq(self, pool: str) -> int | None:
        """The highest seq applied for ``pool``, or None if the pool needs a relist."""
        return self._last.get(pool)

    def epoch(self, pool: str) -> str | None:
        """The epoch of the records L1 holds for ``pool`` (None if not known yet)."""
        return self._epoch.get(pool)

    # ------------------------------------------------------------ decisions
    def on_event(self, pool: str, seq: int, epoch: str | None = None) -> Decision:
        """Judge an event of ``pool``; an APPLY advances ``last_seq`` to ``seq``.

        A pool listed before its first write (at seq 0) adopts the epoch of the first
        event it meets (that write created the epoch) instead of treating it as new.
        """
        if epoch is not None and epoch != self._epoch.get(pool) and not self.adopt_first_epoch(pool, epoch):
            return NEW_EPOCH
        last = self._last.get(pool)
        if last is None:
            return RELIST
        if seq == last + 1:
            self._last[pool] = seq
            return APPLY
        if seq <= last:
            return IGNORE
        return CatchUp(from_seq=last + 1, to_seq=seq)

    def plan(self, pool: str, seq: int, epoch: str | None, high_water: int) -> Decision:
        """Given Redis's ``seq``/``epoch`` for ``pool``: RELIST, CatchUp or UP_TO_DATE.

        ``high_water`` must be read *before* the read that returned ``seq`` (see
        :meth:`lost_data`).
        """
        last = self._last.get(pool)
        if last is None or self.lost_data(pool, seq, epoch, high_water) or seq < last:
            return RELIST
        if seq > last:
            return CatchUp(from_seq=last + 1, to_seq=seq)
        return UP_TO_DATE

    def probe(self, pool: str, seq: int, epoch: str | None, high_water: int) -> Verdict:
        """Judge a periodic read of Redis's ``seq``/``epoch``: OK, LOST_DATA or STALLED.

        Being behind once is normal (events in flight); behind at two probes in a row,
        with ``last_seq`` still below what Redis had at the first, means events were
        lost silently (a half-open subscription, say): STALLED, repair the pool.
        """
        self.adopt_first_epoch(pool, epoch)
        if self.lost_data(pool, seq, epoch, high_water):
            return Verdict.LOST_DATA
        last = self._last.get(pool)
        if last is not None and seq <= last:
            self._behind.pop(pool, None)
            return Verdict.OK
        previous = self._behind.get(pool)
        self._behind[pool] = seq
        if previous is not None and (last or 0) < previous:
            return Verdict.STALLED
        return Verdict.OK

    def lost_data(self, pool: str, seq: int, epoch: str | None, high_water: int) -> bool:
        """True if Redis lost ``pool``'s data: a new epoch, or a seq below a version L1 has seen.

        A pool first listed before any write (at seq 0) had no epoch yet; the first write
        creating one is not a loss of data. But records applied past seq 0 without knowing
        their epoch cannot be vouched for against a new one: that counts as lost.
        ``high_water`` must be read *before* the read that returned ``seq``: the
        instance's own writes may put newer versions into L1 while that read is in flight.
        """
        if seq < high_water:
            return True
        known = self._epoch.get(pool)
        if known is None:
            return epoch is not None and (self._last.get(pool) or 0) > 0
        return known != epoch

    # --------------------------------------------------------------- reports
    def synced(self, pool: str, seq: int, epoch: str | None) -> None:
        """A relist of ``pool`` read ``seq`` (before its records) and ``epoch``."""
        self._last[pool] = seq
        self._epoch[pool] = epoch
        self._behind.pop(pool, None)

    def invalidate(self, pool: str) -> None:
        """Forget ``pool``'s position: its next event asks for a relist."""
        self._last.pop(pool, None)

    def adopt_first_epoch(self, pool: str, epoch: str | None) -> bool:
        """Learn the epoch the pool's first write created; only for a pool listed at seq 0.

        Returns True if it adopted ``epoch`` (this changes the sequencer's state).
        """
        if epoch is None or self._epoch.get(pool) is not None or self._last.get(pool) != 0:
            return False
        self._epoch[pool] = epoch
        return True
