"""Time, given to the registry rather than read by it.

Everything in the library that depends on time (entry expiry, the staleness bound,
mode-machine hysteresis and probe deadlines, the reaper's grace period, journal
timestamps) takes its ``now`` from one :class:`Clock`. The default reads the system
clocks; tests give a :class:`ManualClock` and move time by hand, so an expiry or a
grace period is tested in microseconds instead of being waited for (trio's
``MockClock``, aioquic's ``now`` argument).

Two clocks, because they answer two questions:

* ``monotonic()`` - seconds on a clock that never jumps: every interval and deadline.
  It must be the event loop's clock (``time.monotonic`` for asyncio's default loop),
  because mode switches are put on the harness timeline beside loop times.
* ``wall()`` - Unix seconds: only to compare with Redis server time (``TIME``), as the
  propagation delay of an event does.

Waiting itself (``asyncio.sleep``) stays on the event loop: a manual clock changes what
the registry *decides*, not how long its background tasks sleep.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Where the registry reads the time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (the event loop's)."""

    def wall(self) -> float:
        """Unix time in seconds (compared with Redis ``TIME`` only)."""


class SystemClock:
    """The system's clocks: ``time.monotonic`` and ``time.time``."""

    __slots__ = ()

    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock for tests: frozen unless told to move, or running at ``rate`` times real time.

    ``advance(seconds)`` jumps it forward. With ``rate=0`` (the default) that is the only
    way it moves, which suits pure decisions (expiry, staleness); with ``rate=1`` it runs
    with real time, so background work that waits for deadlines (probes during an outage)
    goes on, and a test jumps over a long grace period instead of sleeping through it,
    as trio's ``MockClock(rate=..., jump=...)`` does. ``wall()`` keeps a fixed offset from
    ``monotonic()``, so both move together.
    """

    __slots__ = ("_base", "_rate", "_real0", "_wall_offset", "real_monotonic")

    def __init__(
        self, start: float = 1000.0, *, rate: float = 0.0, wall_start: float = 1_700_000_000.0
    ) -> None:
        if rate < 0:
            raise ValueError(f"a clock only moves forward; rate must be >= 0, got {rate}")
        #: The real clock behind ``rate`` (an attribute, so that a test can replace it).
        self.real_monotonic = time.monotonic
        self._base = float(start)
        self._rate = float(rate)
        self._real0 = self.real_monotonic()
        self._wall_offset = wall_start - self._base

    def monotonic(self) -> float:
        if not self._rate:
            return self._base
        return self._base + self._rate * (self.real_monotonic() - self._real0)

    def wall(self) -> float:
        return self.monotonic() + self._wall_offset

    def advance(self, seconds: float) -> float:
        """Jump forward by ``seconds`` (>= 0); returns the new ``monotonic()``."""
        if seconds < 0:
            raise ValueError(f"a clock only moves forward; got {seconds}")
        self._base += seconds
        return self.monotonic()

    def __repr__(self) -> str:
        return f"ManualClock(monotonic={self.monotonic():.6f}, rate={self._rate})"


SYSTEM_CLOCK = SystemClock()
