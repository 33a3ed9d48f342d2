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

Lost writes (a failover, DESIGN.md section 8a). A replica promoted before it received the
last writes of its primary has the same epoch and an older seq; new writes then reuse
the lost seqs, so soon Redis's seq is past ``high_water`` again and neither test above
sees the loss: the same seq now names another write. So the sequencer keeps a *mark* for
the last :data:`HISTORY` seqs it applied per pool, the identity of the write at that seq
(its server time in microseconds, ``ts_us``, unique to one write in practice; the
caller passes it). Two writes at one seq are two histories (Raft's log matching, with
the mark as the term):

* an event at a seq already applied whose mark differs -> :data:`DIVERGED`;
* Redis's log entry at our ``last_seq`` (read with the position, see :meth:`plan` and
  :meth:`probe`) whose mark differs -> the pool's history diverged.

A re-established event stream (a reconnect, maybe to a new primary after a failover) is a
gap of unknown size in *which history* the events continue: the writes that carried the
new primary's seq past ``last_seq`` before the subscription landed may be other writes than
the ones applied. So after :meth:`PoolSequencer.unverify` an event that would follow on
(APPLY, or a catch-up) is answered RELIST instead, which the caller carries out as a
repair: the position read with the mark at ``last_seq`` (:meth:`PoolSequencer.plan`)
checks the history first, and only then does the stream follow on by seq again.

A diverged pool counts as lost data until it is relisted: its records are installed as
they are (versions may go back), as after an epoch change.

Any loss, once judged, holds until the relist (:meth:`PoolSequencer.synced`): a seq below
``high_water`` is true only until new writes carry Redis's seq past it, which on a busy pool
takes milliseconds. A plan that saw the loss and the relist that carries it out read Redis
at two moments; if the relist judged afresh it could find nothing lost and keep, over the
relisted records, the higher versions of writes Redis no longer has (found by the
``sentinel-failover`` experiment: after a failover, the last of six pools an instance
relisted kept its own lost ``job_finish``).

Our own writes tell too (:func:`answered_by_a_new_life`): a write gets the next seq as its
version, above every version that existed when it was sent; an answer at a version not
above L1's ``high_water`` read before sending it comes from a Redis that lost data.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

#: Marks (write identities) kept per pool, for the last this-many seqs applied.
HISTORY = 256


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
    #: An event at a seq already applied, of another write: Redis lost writes L1 applied.
    DIVERGED = "diverged"


APPLY = Verdict.APPLY
IGNORE = Verdict.IGNORE
RELIST = Verdict.RELIST
NEW_EPOCH = Verdict.NEW_EPOCH
UP_TO_DATE = Verdict.UP_TO_DATE
DIVERGED = Verdict.DIVERGED


@dataclass(frozen=True, slots=True)
class CatchUp:
    """Read the pool log from ``from_seq`` (inclusive) up to at least ``to_seq``."""

    from_seq: int
    to_seq: int


Decision = Verdict | CatchUp


def answered_by_a_new_life(version: int, high_water: int) -> bool:
    """True if a write that made a new version answered ``version``, not above ``high_water``
    (L1's, read *before* the write was sent): Redis lost data since L1 saw that version.

    In one life of the pool's data a new write's version is the next seq, above every version
    that existed when it was sent; an answer at or below one L1 had already seen can only
    come from a Redis that restarted empty (or lost writes in a failover) and reused seqs.
    Its record belongs to another life than L1's: it must not be installed as is.
    """
    return 0 < version <= high_water


class PoolSequencer:
    """``last_seq`` and ``epoch`` per pool, and what to do with the next event of each."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._epoch: dict[str, str | None] = {}
        # pool -> Redis seq seen behind at the previous probe (see probe()).
        self._behind: dict[str, int] = {}
        # pool -> marks of the seqs up to last_seq, newest last (None: not known).
        self._marks: dict[str, deque[int | None]] = {}
        # Pools judged to have lost data (a diverged history, a seq back, a new epoch): lost
        # until relisted, whatever Redis's seq does meanwhile (module docstring).
        self._lost: set[str] = set()
        # Pools whose stream was re-established and whose history at last_seq is not checked
        # against Redis's yet (unverify()): their events do not follow on by seq alone.
        self._unverified: set[str] = set()

    def last_seq(self, pool: str) -> int | None:
        """The highest seq applied for ``pool``, or None if the pool needs a relist."""
        return self._last.get(pool)

    def epoch(self, pool: str) -> str | None:
        """The epoch of the records L1 holds for ``pool`` (None if not known yet)."""
        return self._epoch.get(pool)

    def mark(self, pool: str, seq: int) -> int | None:
        """The mark of the write applied at ``seq`` (None if unknown or out of the kept history)."""
        last, marks = self._last.get(pool), self._marks.get(pool)
        if last is None or marks is None or seq > last:
            return None
        index = len(marks) - 1 - (last - seq)
        return marks[index] if index >= 0 else None

    def diverged(self, pool: str, seq: int, mark: int | None, at: int | None) -> bool:
        """Redis, at ``seq`` now, holds at seq ``at`` a write (``mark``) other than the one we applied there.

        ``at`` is the seq the log was read at (our ``last_seq`` when the read was sent: events
        may have been applied since). Unknown marks (ours, or an entry the log no longer holds)
        cannot tell: False. A Redis seq below ours is the ``high_water`` test's case (:meth:`lost_data`)."""
        if at is None or mark is None or seq < at:
            return False
        mine = self.mark(pool, at)
        return mine is not None and mine != mark

    # ------------------------------------------------------------ decisions
    def on_event(self, pool: str, seq: int, epoch: str | None = None, mark: int | None = None) -> Decision:
        """Judge an event of ``pool`` (``mark``: its write's identity); an APPLY advances ``last_seq``.

        A pool listed before its first write (at seq 0) adopts the epoch of the first
        event it meets (that write created the epoch) instead of treating it as new.
        """
        if epoch is not None and epoch != self._epoch.get(pool) and not self.adopt_first_epoch(pool, epoch):
            return NEW_EPOCH
        last = self._last.get(pool)
        if last is None or (seq > last and pool in self._unverified):
            return RELIST
        if seq == last + 1:
            self._last[pool] = seq
            self._marks[pool].append(mark)  # (made by synced(), the only way to a position)
            return APPLY
        if seq <= last:
            if mark is not None and (mine := self.mark(pool, seq)) is not None and mine != mark:
                self._lost.add(pool)
                return DIVERGED
            return IGNORE
        return CatchUp(from_seq=last + 1, to_seq=seq)

    def plan(
        self,
        pool: str,
        seq: int,
        epoch: str | None,
        high_water: int,
        mark: int | None = None,
        at: int | None = None,
    ) -> Decision:
        """Given Redis's ``seq``/``epoch`` for ``pool`` (and ``mark``, that of its log entry at seq
        ``at``, our ``last_seq`` when read): RELIST, CatchUp or UP_TO_DATE.

        ``high_water`` must be read *before* the read that returned ``seq`` (see
        :meth:`lost_data`).
        """
        last = self._last.get(pool)
        self._unverified.discard(pool)  # this read checks the history at last_seq (``mark`` at ``at``)
        if self.diverged(pool, seq, mark, at):
            self._lost.add(pool)
        if self.lost_data(pool, seq, epoch, high_water):
            self._lost.add(pool)  # until the relist: see the module docstring
            return RELIST
        if last is None or seq < last:
            return RELIST
        if seq > last:
            return CatchUp(from_seq=last + 1, to_seq=seq)
        return UP_TO_DATE

    def probe(
        self,
        pool: str,
        seq: int,
        epoch: str | None,
        high_water: int,
        mark: int | None = None,
        at: int | None = None,
    ) -> Verdict:
        """Judge a periodic read of Redis's ``seq``/``epoch`` (and ``mark``, that of its log entry at
        seq ``at``, our ``last_seq`` when read): OK, LOST_DATA or STALLED.

        Being behind once is normal (events in flight); behind at two probes in a row,
        with ``last_seq`` still below what Redis had at the first, means events were
        lost silently (a half-open subscription, say): STALLED, repair the pool.
        """
        self.adopt_first_epoch(pool, epoch)
        if self.diverged(pool, seq, mark, at):
            self._lost.add(pool)
        if self.lost_data(pool, seq, epoch, high_water):
            self._lost.add(pool)  # until the relist: see the module docstring
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
        if seq < high_water or pool in self._lost:
            return True
        known = self._epoch.get(pool)
        if known is None:
            return epoch is not None and (self._last.get(pool) or 0) > 0
        return known != epoch

    # --------------------------------------------------------------- reports
    def synced(self, pool: str, seq: int, epoch: str | None, mark: int | None = None) -> None:
        """A relist of ``pool`` read ``seq`` (before its records), ``epoch``, and the mark of the
        log entry at ``seq``."""
        self._last[pool] = seq
        self._epoch[pool] = epoch
        self._behind.pop(pool, None)
        self._marks[pool] = deque([mark], maxlen=HISTORY)
        self._lost.discard(pool)
        self._unverified.discard(pool)

    def unverify(self, pools: Iterable[str]) -> None:
        """The event stream of ``pools`` was re-established: until :meth:`plan` (or a relist) checks
        each one's history against Redis, an event that would follow on asks for a repair."""
        self._unverified.update(pools)

    def invalidate(self, pool: str) -> None:
        """Forget ``pool``'s position: its next event asks for a relist."""
        self._last.pop(pool, None)
        self._marks.pop(pool, None)

    def adopt_first_epoch(self, pool: str, epoch: str | None) -> bool:
        """Learn the epoch the pool's first write created; only for a pool listed at seq 0.

        Returns True if it adopted ``epoch`` (this changes the sequencer's state).
        """
        if epoch is None or self._epoch.get(pool) is not None or self._last.get(pool) != 0:
            return False
        self._epoch[pool] = epoch
        return True
