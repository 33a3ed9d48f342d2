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
    sync                        DIVERGED               STREAM_LOST   NORMAL -> L2_ONLY
    sync (probe, write answer)  DATA_LOST              STREAM_LOST   NORMAL -> L2_ONLY
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

Modes per pool (DESIGN.md section 8a). Every fact names the pools it concerns (none
named: all of them), and each :class:`Domain` (a set of pools sharing one fate: one mode
machine, one ``last_heard``) takes the signal once. On a Redis Cluster each pool is a
domain of its own: a shard that fails is REDIS_FAILED for the pools on it, a shard's
subscription lost is SUBSCRIPTION_LOST for the pools it carried, and the pools of the
other shards stay NORMAL. On one server every fact concerns every pool (one server holds
them all, one subscription carries them all), so one domain holds every pool: exactly the
one mode machine an instance had before, with the same switches, counts and timers. The
instance's own ``mode`` is the worst mode of its domains.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
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
    DIVERGED = "diverged"
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
    Fact.DIVERGED: Route(
        Signal.STREAM_LOST, "sync: Redis holds another write at a seq L1 applied (writes lost in a failover)"
    ),
    Fact.DATA_LOST: Route(
        Signal.STREAM_LOST, "sync probe, or a write's answer: a pool's epoch changed or its seq went back"
    ),
    Fact.REPAIR_INTERRUPTED: Route(Signal.STREAM_LOST, "sync: Redis failed during a catch-up or relist"),
    Fact.CAUGHT_UP: Route(Signal.CAUGHT_UP, "sync: every pool repaired and the subscription live"),
}


class Domain:
    """Pools that share one fate: one mode machine and one ``last_heard`` (see the module docstring)."""

    __slots__ = ("last_heard", "mode", "modes", "pools")

    def __init__(self, pools: frozenset[str], thresholds: ModeThresholds, now: float) -> None:
        self.pools = pools
        self.modes = ModeController(thresholds, now=now, pools=tuple(sorted(pools)))
        #: ``modes.mode``, kept as a plain attribute: read on every L1 hit.
        self.mode = Mode.NORMAL
        #: Monotonic time these pools last heard from Redis.
        self.last_heard = now


#: Worse modes last: the instance's mode is the worst of its domains'.
_RANK = {Mode.NORMAL: 0, Mode.L2_ONLY: 1, Mode.LOCAL_ONLY: 2}


class HealthMonitor:
    """The instance's modes (one per :class:`Domain`), ``last_heard``, and the health loop."""

    def __init__(
        self,
        thresholds: ModeThresholds,
        *,
        clock: Clock,
        instance: str,
        on_recovery: Callable[[str, frozenset[str]], None],
        pools: Iterable[str] = (),
        per_pool: bool = False,
    ) -> None:
        """``per_pool``: a domain per pool (a cluster); else one domain of every pool (one server)."""
        self._clock = clock
        self._instance = instance
        self._on_recovery = on_recovery
        now = clock.monotonic()
        served = sorted(pools)
        groups = [frozenset({p}) for p in served] if per_pool else [frozenset(served)]
        self.domains: tuple[Domain, ...] = tuple(Domain(g, thresholds, now) for g in groups)
        #: pool -> its domain.
        self.of: dict[str, Domain] = {p: d for d in self.domains for p in d.pools}
        self._one = self.domains[0] if len(self.domains) == 1 else None

    # ------------------------------------------------------------- reading
    @property
    def mode(self) -> Mode:
        """The worst mode of any pool (the instance's mode)."""
        if self._one is not None:
            return self._one.mode
        return max((d.mode for d in self.domains), key=_RANK.__getitem__)

    def mode_of(self, pool: str) -> Mode:
        """The mode of ``pool``'s domain."""
        return self.of[pool].mode

    def domains_of(self, pools: Iterable[str] | None) -> list[Domain]:
        """The distinct domains of ``pools`` (every domain for None), in domain order."""
        if pools is None or self._one is not None:
            return list(self.domains)
        wanted = {id(self.of[p]) for p in pools if p in self.of}
        return [d for d in self.domains if id(d) in wanted]

    def heard(self, pools: Iterable[str] | None = None) -> None:
        """Redis said something (a reply, a message, a PONG) about ``pools`` (None: all)."""
        now = self._clock.monotonic()
        if self._one is not None:
            self._one.last_heard = now
            return
        for domain in self.domains_of(pools):
            domain.last_heard = now

    def heard_pool(self, pool: str) -> None:
        """:meth:`heard` for one pool (the event path: one dict lookup)."""
        domain = self._one or self.of.get(pool)
        if domain is not None:
            domain.last_heard = self._clock.monotonic()

    def last_sync_age(self, pool: str | None = None) -> float:
        """Seconds since ``pool`` (None: the pool heard from longest ago) last heard from Redis."""
        if pool is not None:
            return self._clock.monotonic() - self.of[pool].last_heard
        return self._clock.monotonic() - min(d.last_heard for d in self.domains)

    def switches(self) -> tuple[ModeSwitch, ...]:
        """Every domain's recent switches, oldest first."""
        if self._one is not None:
            return self._one.modes.switches
        return tuple(sorted((s for d in self.domains for s in d.modes.switches), key=lambda s: s.at))

    def switch_counts(self) -> dict[tuple[Mode, Mode], int]:
        """How often each ``(from, to)`` switch happened, summed over the domains."""
        counts: dict[tuple[Mode, Mode], int] = {}
        for domain in self.domains:
            for key, n in domain.modes.switch_counts.items():
                counts[key] = counts.get(key, 0) + n
        return counts

    @property
    def outage_started_at(self) -> float | None:
        """When the earliest outage still running began (None if none is)."""
        started = [d.modes.outage_started_at for d in self.domains if d.modes.outage_started_at is not None]
        return min(started) if started else None

    @property
    def last_recovered_at(self) -> float | None:
        """When a pool last got back to NORMAL after an outage (None if never)."""
        recovered = [d.modes.last_recovered_at for d in self.domains if d.modes.last_recovered_at is not None]
        return max(recovered) if recovered else None

    # ----------------------------------------------------------- reporting
    def report(self, fact: Fact, reason: str = "", pools: Iterable[str] | None = None) -> list[ModeSwitch]:
        """Feed one fact about ``pools`` (None: all) to their domains' mode machines, once per
        domain; returns the switches it caused."""
        signal = FACTS[fact].signal
        switches = []
        for domain in self.domains_of(pools):
            if fact is Fact.REDIS_ANSWERED:
                domain.last_heard = self._clock.monotonic()
            was = domain.mode
            switch = domain.modes.on_signal(signal, self._clock.monotonic(), reason)
            if switch is None:
                continue
            domain.mode = switch.to_mode
            switches.append(switch)
            log.warning(
                "%s mode %s -> %s%s: %s",
                self._instance,
                switch.from_mode.value,
                switch.to_mode.value,
                "" if self._one is not None else f" (pool {', '.join(switch.pools)})",
                switch.reason,
            )
            if was is Mode.LOCAL_ONLY and switch.to_mode is Mode.L2_ONLY:
                self._on_recovery("redis answered probes", domain.pools)
        return switches

    # ---------------------------------------------------------- the loop
    async def run(
        self,
        probe: Callable[[frozenset[str]], Awaitable[None]],
        interval_s: float,
        closing: Callable[[], bool],
    ) -> None:
        """Probe Redis until ``closing()``: every ``interval_s`` while it answers (at once after
        a failure, to count the next failure quickly), at the mode machine's (backed-off)
        deadlines while LOCAL_ONLY. ``probe(pools)`` reads those pools; with several domains
        each is probed on its own schedule (those answering every ``interval_s``, anchored
        on the loop's clock; those LOCAL_ONLY at their machine's deadlines)."""
        loop = asyncio.get_running_loop()
        healthy_at: float | None = None
        while not closing():
            now = self._clock.monotonic()
            local = [d for d in self.domains if d.mode is Mode.LOCAL_ONLY]
            healthy = [d for d in self.domains if d.mode is not Mode.LOCAL_ONLY]
            delay_local = min(
                (interval_s if (at := d.modes.next_deadline()) is None else at - now for d in local),
                default=math.inf,
            )
            delay_healthy = math.inf
            if healthy:
                if healthy_at is None:
                    failing = any(d.modes.consecutive_failures for d in healthy)
                    healthy_at = loop.time() + (0.0 if failing else interval_s)
                delay_healthy = healthy_at - loop.time()
            # Clamped: a manual clock in tests may put a deadline far off or far behind.
            await asyncio.sleep(min(max(0.0, min(delay_local, delay_healthy)), interval_s))
            now = self._clock.monotonic()
            due = [d for d in local if d.modes.on_timer(now)]
            if healthy and (delay_healthy <= delay_local or loop.time() >= healthy_at):  # type: ignore[operator]
                due += healthy  # (one that opened its circuit meanwhile is probed once more, as before)
                healthy_at = None
            if not due:
                continue
            with contextlib.suppress(Exception):  # a probe failure is reported by the probe itself
                await probe(frozenset().union(*(d.pools for d in due)))
