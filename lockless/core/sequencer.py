"""Per-pool event ordering: apply, ignore, or repair a gap (DESIGN.md section 5).

Every mutation of a pool gets the next value of the pool's ``seq``. An instance that
has applied everything up to ``last_seq`` expects ``last_seq + 1`` next:

* ``seq == last_seq + 1``  -> :data:`APPLY` and advance;
* ``seq <= last_seq``      -> :data:`IGNORE` (a duplicate, or an event a relist or
  catch-up already covered; harmless because snapshots are versioned);
* ``seq >  last_seq + 1``  -> a gap: :class:`CatchUp` from ``last_seq + 1`` (read the
  pool log); if the log no longer holds it, the caller relists.
* A pool never synced (first start, epoch change, a bad event) needs a :data:`RELIST`
  before any event can be placed in order.

The sequencer only decides; the registry's applier task carries the decision out and
reports back with :meth:`PoolSequencer.synced` (after a relist at ``seq``) or
:meth:`PoolSequencer.advanced` (each event applied during a catch-up). Events that
arrive while a repair is in flight wait in the applier's queue and are then judged
against the repaired ``last_seq``, so nothing falls between the relist and the stream.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CatchUp:
    """Read the pool log from ``from_seq`` (inclusive) up to at least ``to_seq``."""

    from_seq: int
    to_seq: int


#: Decisions without parameters. Sentinel strings keep them readable in logs and tests.
APPLY = "apply"
IGNORE = "ignore"
RELIST = "relist"

Decision = str | CatchUp


class PoolSequencer:
    """``last_seq`` per pool, and what to do with the next event of each."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._epoch: dict[str, str | None] = {}

    def last_seq(self, pool: str) -> int | None:
        """The highest seq applied for ``pool``, or None if the pool needs a relist."""
        return self._last.get(pool)

    def epoch(self, pool: str) -> str | None:
        return self._epoch.get(pool)

    def on_event(self, pool: str, seq: int) -> Decision:
        """Judge an event of ``pool`` with sequence number ``seq``."""
        last = self._last.get(pool)
        if last is None:
            return RELIST
        if seq == last + 1:
            self._last[pool] = seq
            return APPLY
        if seq <= last:
            return IGNORE
        return CatchUp(from_seq=last + 1, to_seq=seq)

    def synced(self, pool: str, seq: int, epoch: str | None) -> None:
        """A relist of ``pool`` read ``seq`` (before its records) and ``epoch``."""
        self._last[pool] = seq
        self._epoch[pool] = epoch

    def advanced(self, pool: str, seq: int) -> None:
        """An event with ``seq`` was applied during a catch-up (only ever moves forward)."""
        last = self._last.get(pool)
        if last is not None and seq > last:
            self._last[pool] = seq

    def invalidate(self, pool: str) -> None:
        """Forget ``pool``'s position: its next event asks for a relist."""
        self._last.pop(pool, None)

    def behind(self, pool: str, redis_seq: int) -> bool:
        """True if Redis has mutations of ``pool`` this instance has not applied."""
        last = self._last.get(pool)
        return last is None or redis_seq > last

    def epoch_changed(self, pool: str, epoch: str | None) -> bool:
        """True if ``epoch`` differs from the one this instance synced (Redis lost its data).

        A pool first listed before any write (at seq 0) had no epoch yet; the first write
        creating one is not a loss of data. But records applied past seq 0 without knowing
        their epoch cannot be vouched for against a new one: that counts as changed.
        """
        known = self._epoch.get(pool)
        if known is None:
            return epoch is not None and (self._last.get(pool) or 0) > 0
        return known != epoch

    def foreign_epoch(self, pool: str, epoch: str | None) -> bool:
        """True if an event of ``epoch`` belongs to another life of the pool than L1's records.

        A pool listed before its first write (at seq 0) adopts the first epoch it meets
        instead: that write created it.
        """
        if epoch is None or epoch == self._epoch.get(pool):
            return False
        return not self.adopt_first_epoch(pool, epoch)

    def adopt_first_epoch(self, pool: str, epoch: str | None) -> bool:
        """Learn the epoch the pool's first write created; only for a pool listed at seq 0."""
        if epoch is None or self._epoch.get(pool) is not None or self._last.get(pool) != 0:
            return False
        self._epoch[pool] = epoch
        return True
