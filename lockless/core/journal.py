"""The bounded LOCAL_ONLY write journal and its in-order replay plan (DESIGN.md section 4).

While the circuit is open (``Mode.LOCAL_ONLY``) an instance cannot run the write
scripts, yet nodes keep heartbeating and jobs keep starting and finishing. Rather than
fail those writes, the registry journals them here and replays them, oldest first,
once Redis answers again. The journal is pure bookkeeping: it never talks to Redis and
is told the time.

Three rules shape it:

* **Bounded, and loud when full.** Memory during an outage must not grow without
  limit, so the journal holds at most ``capacity`` entries. A write that does not fit
  raises :class:`~lockless.errors.JournalFull` and is counted in :attr:`rejected`;
  nothing already journaled is dropped to make room, because a silently lost
  ``job_finish`` would leave a slot occupied forever.
* **Order is kept.** Entries replay in the order they were journaled, so a node's
  ``register`` precedes its ``job_start``, and ``job_start`` precedes ``job_finish``.
* **Heartbeats coalesce.** A heartbeat only says "alive, with this load"; the latest
  one supersedes the earlier. When the newest entry for a node is a heartbeat, a new
  heartbeat replaces it in place (same index and position, new payload and time)
  instead of being appended. So heartbeats never fill the journal, not even a full
  one. The replacement only happens while no other entry for that node came after
  the heartbeat: a heartbeat after a ``job_start`` is appended, so it stays ordered
  after the job delta it may reflect.

Replay resumes where it stopped: the registry takes :meth:`WriteJournal.pending`, runs
each entry's command and :meth:`WriteJournal.ack`-s it only once Redis has applied it. A
new failure mid-replay leaves the unacknowledged rest in place for the next attempt.

Entries hold the write commands themselves (``lockless.core.commands``): what is
replayed is exactly what would have been sent live.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from lockless.core.commands import Heartbeat, WriteCommand
from lockless.errors import ConfigError, JournalFull


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalEntry:
    """One journaled write, waiting to be replayed against Redis."""

    #: Local order of the entry (increasing; kept when a heartbeat is coalesced into it).
    index: int
    #: The write itself, replayed as it is.
    command: WriteCommand
    #: The caller's ``now`` (monotonic seconds) when the write was journaled.
    at: float

    def __post_init__(self) -> None:
        if not isinstance(self.index, int) or isinstance(self.index, bool) or self.index < 0:
            raise ConfigError("index", self.index, "an integer >= 0")

    @property
    def op(self) -> str:
        """The write's op (``register`` | ``heartbeat`` | ``remove`` | ``job_start`` | ``job_finish``)."""
        return self.command.op

    @property
    def pool(self) -> str:
        return self.command.pool

    @property
    def node_id(self) -> str:
        return self.command.node_id


class WriteJournal:
    """A bounded, ordered journal of writes made while Redis was unreachable.

    Not thread-safe; one event loop owns it. ``len(journal)`` is its depth.
    """

    def __init__(self, capacity: int) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ConfigError("journal.capacity", capacity, "an integer >= 1")
        self._capacity = capacity
        # index -> entry. A dict keeps insertion order and replacing a value keeps its
        # place, which is exactly in-place coalescing; the deque names the head in O(1)
        # (popping the front of a dict repeatedly makes iteration slow).
        self._entries: dict[int, JournalEntry] = {}
        self._order: deque[int] = deque()
        # (pool, node_id) -> index of the newest entry for that node still journaled.
        self._newest: dict[tuple[str, str], int] = {}
        self._next_index = 0
        self._rejected = 0
        self._coalesced = 0

    @property
    def capacity(self) -> int:
        """The most entries the journal holds."""
        return self._capacity

    @property
    def rejected(self) -> int:
        """Writes refused with :class:`~lockless.errors.JournalFull`, ever."""
        return self._rejected

    @property
    def coalesced(self) -> int:
        """Heartbeats folded into an earlier heartbeat instead of appended, ever."""
        return self._coalesced

    def __len__(self) -> int:
        """The depth: entries waiting to be replayed."""
        return len(self._order)

    def append(self, command: WriteCommand, *, now: float) -> JournalEntry:
        """Journal one write and return its entry (for a coalesced heartbeat, the updated one).

        Raises :class:`~lockless.errors.ConfigError` (a ``ValueError``) for something that
        is not a write command, and :class:`~lockless.errors.JournalFull` when the journal
        is full; in both cases the journal is unchanged.
        """
        if not isinstance(command, WriteCommand):
            raise ConfigError("command", command, "a write command (Register | Heartbeat | Remove | ...)")
        key = (command.pool, command.node_id)
        newest = self._newest.get(key)
        if (
            isinstance(command, Heartbeat)
            and newest is not None
            and isinstance(self._entries[newest].command, Heartbeat)
        ):
            # Same index, so the entry keeps its place in the replay order.
            entry = JournalEntry(index=newest, command=command, at=now)
            self._entries[newest] = entry
            self._coalesced += 1
            return entry
        # The bound is checked only for entries that take a slot: a coalesced heartbeat
        # does not, so a full journal still accepts heartbeats of journaled nodes.
        if len(self._order) >= self._capacity:
            self._rejected += 1
            raise JournalFull(self._capacity)
        entry = JournalEntry(index=self._next_index, command=command, at=now)
        self._next_index += 1
        self._entries[entry.index] = entry
        self._order.append(entry.index)
        self._newest[key] = entry.index
        return entry

    def pending(self) -> tuple[JournalEntry, ...]:
        """The replay plan: every journaled entry, oldest first."""
        return tuple(self._entries.values())

    def head(self) -> JournalEntry | None:
        """The oldest pending entry (the next to replay), or None when the journal is empty."""
        return self._entries[self._order[0]] if self._order else None

    def ack(self, entry: JournalEntry) -> bool:
        """Mark ``entry``, the oldest pending one, as applied by Redis.

        Returns True when the entry was removed. Returns False, keeping the entry,
        when a newer heartbeat was coalesced into it after it was read from
        :meth:`pending`: what was replayed is then older than what is journaled, and
        the newer heartbeat still has to be replayed from the same place.

        Raises ``ValueError`` if ``entry`` is not the oldest pending entry: replay
        must go in order, or a ``job_finish`` could land before its ``job_start``.
        """
        if not self._order or self._order[0] != entry.index:
            head = self._order[0] if self._order else None
            raise ValueError(f"ack out of order: entry {entry.index} acked, oldest pending is {head}")
        # Compared by value, not identity: an entry rebuilt from the same fields is the
        # same write. A coalesced heartbeat differs in its command or time, hence is newer.
        current = self._entries[entry.index]
        if current != entry:
            return False
        # Removed only now, after Redis applied it: a crash or new failure before this
        # point replays the entry again, which is safe: every write script may be repeated (DESIGN 3).
        self._order.popleft()
        del self._entries[entry.index]
        key = (entry.pool, entry.node_id)
        # Forget the node's newest entry only if it is this one; a later one stays
        # the target for coalescing.
        if self._newest[key] == entry.index:
            del self._newest[key]
        return True
