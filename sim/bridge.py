"""The clock bridge: SimPy's virtual time tied to the asyncio loop's clock (DESIGN.md section 8).

``simpy.rt.RealtimeEnvironment`` maps ``real = real_start + (t - env_start) * factor``
and then blocks in ``time.sleep``, which would freeze every registry task on the loop.
This bridge keeps the mapping and waits with ``await asyncio.sleep`` instead; where
SimPy's strict mode raises "Simulation too slow for real time", the bridge measures how
late it is and the recorder keeps that lag, so a run that could not keep up is marked
INVALID instead of crashing (or, worse, silently stretching its load).

Together with the dispatcher, this is the only code in ``sim`` that reads a clock, and it
reads the loop's (``loop.time()``, monotonic), the same clock the library stamps its
mode switches with, so both land on one timeline.

Every operation carries three times, all on that clock:

* ``intended`` - when the model wanted it (``real(t)``);
* ``sent`` - when the harness handed it to the registry;
* ``done`` - when the registry returned.

``latency = done - intended`` is what is reported (no coordinated omission: a harness
that falls behind does not hide the wait by starting the clock late);
``service = done - sent``; ``lag = sent - intended`` is the harness's own delay.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class OpTimes:
    """The three times of one operation (loop clock, seconds)."""

    intended: float
    sent: float
    done: float

    def __post_init__(self) -> None:
        if not self.intended <= self.sent + 1e-9 or not self.sent <= self.done + 1e-9:
            # A sent-before-intended op would be closed-loop cheating; done-before-sent is a bug.
            raise ValueError(
                f"times out of order: intended={self.intended} sent={self.sent} done={self.done}"
            )

    @property
    def latency(self) -> float:
        return self.done - self.intended

    @property
    def service(self) -> float:
        return self.done - self.sent

    @property
    def lag(self) -> float:
        return self.sent - self.intended


class Bridge:
    """Maps simulated seconds to loop time: ``real = start + sim_t * scale``.

    ``scale`` is real seconds per simulated second (1.0 for latency runs; 0.5 replays the
    model twice as fast). The library always runs in real time; only the model's
    think-times are scaled.
    """

    def __init__(
        self, *, scale: float = 1.0, spin_s: float = 0.001, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        if not scale > 0:
            raise ValueError(f"scale: got {scale!r}; allowed: a number > 0")
        if not spin_s >= 0:
            raise ValueError(f"spin_s: got {spin_s!r}; allowed: a number >= 0")
        self.scale = scale
        self.spin_s = spin_s
        self._loop = loop
        self.start: float | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        """The loop clock (monotonic seconds)."""
        return self.loop.time()

    def begin(self, at: float | None = None) -> float:
        """Pin simulated time 0 to loop time ``at`` (default: now). Returns it."""
        self.start = self.now() if at is None else at
        return self.start

    def begin_at_wall(self, wall_t: float) -> float:
        """Pin simulated time 0 to wall-clock time ``wall_t`` (``time.time()``): how worker
        processes, each with its own loop clock, agree on one start."""
        return self.begin(self.now() + (wall_t - time.time()))

    @staticmethod
    def wall() -> float:
        """Wall-clock seconds (only for agreeing on a start across processes)."""
        return time.time()

    def real(self, sim_t: float) -> float:
        """Loop time at which simulated time ``sim_t`` falls."""
        if self.start is None:
            raise RuntimeError("Bridge.begin() was not called")
        return self.start + sim_t * self.scale

    def sim(self, real_t: float) -> float:
        """Simulated time at loop time ``real_t``."""
        if self.start is None:
            raise RuntimeError("Bridge.begin() was not called")
        return (real_t - self.start) / self.scale

    def elapsed(self) -> float:
        """Real seconds since simulated time 0."""
        return self.now() - (self.start if self.start is not None else self.now())

    async def sleep_until(self, real_t: float) -> float:
        """Wait until loop time ``real_t``; return how late we woke (>= 0), the loop's own lag.

        The selector's timeout has millisecond resolution (epoll rounds up), so a plain
        sleep wakes up to 1 ms late. The last ``spin_s`` is spent yielding to the loop
        (``sleep(0)``: other tasks still run) instead, which buys sub-millisecond wake-ups
        for a little CPU.
        """
        delay = real_t - self.now()
        if delay > self.spin_s:
            await asyncio.sleep(delay - self.spin_s)
        while self.now() < real_t:
            await asyncio.sleep(0)
        return max(0.0, self.now() - real_t)
