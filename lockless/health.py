"""What fires each mode transition: facts reported by the registry's parts, in one table.

The mode machine itself (``lockless.core.modes``) is pure: it maps *signals* to modes
with hysteresis. This module is where the registry's parts report what they *saw*, as a
:class:`Fact`, and the one place a fact becomes a signal. Read :data:`FACTS` to learn
every reason an instance can change mode and which part reports it::

    part                        fact                   signal        typical switch
    --------------------------  ---------------------  ------------  ------------------------------
    reads, writes, sync, probe  REDIS_ANSWERED         REDIS_OK      LOCAL_ONLY -> L2_ONLY (x probes)
    reads, writes, sync, probe  REDIS_FAILED           REDIS_FAILED  NORMAL/L2_ONLY -> LOCAL_ONLY (x failures)
    subscriber (via sync)       SUBSCRIPTION_LOST      STREAM_LOST   NORMAL -> L2_ONLY
    sync                        GAP                    STREAM_LOST   NORMAL -> L2_ONLY
    sync                        NEW_EPOCH              STREAM_LOST   NORMAL -> L2_ONLY
    sync (probe)                DATA_LOST              STREAM_LOST   NORMAL -> L2_ONLY
    sync                        REPAIR_INTERRUPTED     STREAM_LOST   (stays; the repair is retried)
    sync                        CAUGHT_UP              CAUGHT_UP     L2_ONLY -> NORMAL

A malformed event is not a fact here: the applier relists that pool at once, before any
later event of it is applied, so the stream stays trusted.

A switch out of LOCAL_ONLY starts recovery: the monitor calls ``on_recovery`` (the pool
synchroniser replays the journal, repairs every pool, then reports CAUGHT_UP).

The monitor also keeps ``last_heard``, the time this instance last heard from Redis
(any reply, message or PONG): the age every read reports, and the staleness bound's
input. And it runs the health loop: a probe every ``ping_interval_s`` while Redis
answers, at the mode machine's deadlines (backed off) while it does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from lockless.clock import Clock
from lockless.core.modes import Mode, ModeController, ModeSwitch, ModeThresholds, Signal

log = logging.getLogger("lockless.registry")


class Fact(enum.Enum):
    """Something a part of the registry saw that bears on how far it may trust L1."""

    REDIS_ANSWERED = "redis_answered"
    REDIS_FAILED = "redis_failed"
    SUBSCRIPTION_LOST = "subscription_lost"
    GAP = "gap"
    NEW_EPOCH = "new_epoch"
    DATA_LOST = "data_lost"
    REPAIR_INTERRUPTED = "repair_interrupted"
    CAUGHT_UP = "caught_up"


class Route(NamedTuple):
    """Where a fact goes: the signal it feeds, and the parts that report it (documentation)."""

    signal: Signal
    reported_by: str


#: Every fact, the signal it feeds, and who reports it. The mode machine's own table
#: (``lockless.core.modes.TRANSITIONS``) says what each signal does in each mode.
FACTS: dict[Fact, Route] = {
    Fact.REDIS_ANSWERED: Route(Signal.REDIS_OK, "reads, writes, sync, probe: a command answered"),
    Fact.REDIS_FAILED: Route(
        Signal.REDIS_FAILED, "reads, writes, sync, probe: a command failed or timed out"
    ),
    Fact.SUBSCRIPTION_LOST: Route(Signal.STREAM_LOST, "subscriber: error, dead link, silent re-subscribe"),
    Fact.GAP: Route(Signal.STREAM_LOST, "sync: an event's seq skipped some"),
    Fact.NEW_EPOCH: Route(Signal.STREAM_LOST, "sync: an event of another life of the pool's data"),
    Fact.DATA_LOST: Route(Signal.STREAM_LOST, "sync probe: a pool's epoch changed or its seq went back"),
    Fact.REPAIR_INTERRUPTED: Route(Signal.STREAM_LOST, "sync: Redis failed during a catch-up or relist"),
    Fact.CAUGHT_UP: Route(Signal.CAUGHT_UP, "sync: every pool repaired and the subscription live"),
}


class HealthMonitor:
    """The instance's mode, ``last_heard``, and the health loop. See the module docstring."""

    def __init__(
        self,
        thresholds: ModeThresholds,
        *,
        clock: Clock,
        instance: str,
        on_recovery: Callable[[str], None],
    ) -> None:
        self._clock = clock
        self._instance = instance
        self._on_recovery = on_recovery
        self.modes = ModeController(thresholds, now=clock.monotonic())
        #: Monotonic time this instance last heard from Redis.
        self.last_heard = clock.monotonic()

    @property
    def mode(self) -> Mode:
        return self.modes.mode

    def heard(self) -> None:
        """Redis said something (a reply, a message, a PONG)."""
        self.last_heard = self._clock.monotonic()

    def last_sync_age(self) -> float:
        """Seconds since this instance last heard from Redis."""
        return self._clock.monotonic() - self.last_heard

    def report(self, fact: Fact, reason: str = "") -> ModeSwitch | None:
        """Feed one fact to the mode machine; returns the switch it caused, if any."""
        if fact is Fact.REDIS_ANSWERED:
            self.heard()
        was = self.modes.mode
        switch = self.modes.on_signal(FACTS[fact].signal, self._clock.monotonic(), reason)
        if switch is None:
            return None
        log.warning(
            "%s mode %s -> %s: %s",
            self._instance,
            switch.from_mode.value,
            switch.to_mode.value,
            switch.reason,
        )
        if was is Mode.LOCAL_ONLY and switch.to_mode is Mode.L2_ONLY:
            self._on_recovery("redis answered probes")
        return switch

    async def run(self, probe: Callable[[], Awaitable[None]], interval_s: float, closing: Callable[[], bool]):
        """Probe Redis until ``closing()``: every ``interval_s`` while it answers (at once after
        a failure, to count the next failure quickly), at the mode machine's (backed-off)
        deadlines while LOCAL_ONLY."""
        while not closing():
            if self.modes.mode is Mode.LOCAL_ONLY:
                deadline = self.modes.next_deadline()
                delay = interval_s if deadline is None else deadline - self._clock.monotonic()
                # Clamped: a manual clock in tests may put the deadline far off or far behind.
                await asyncio.sleep(min(max(0.0, delay), interval_s))
                if not self.modes.on_timer(self._clock.monotonic()):
                    continue
            else:
                await asyncio.sleep(interval_s if self.modes.consecutive_failures == 0 else 0.0)
            with contextlib.suppress(Exception):  # a probe failure is reported by the probe itself
                await probe()
