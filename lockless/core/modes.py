"""The read-path mode machine: NORMAL, L2_ONLY and LOCAL_ONLY (DESIGN.md section 4).

An instance answers reads from its L1 only while it can trust two things: that Redis is
reachable, and that the change-event stream has delivered every mutation. This module
decides, from health signals alone, which of the three modes the instance is in. It
does no I/O and reads no clock: the caller reports what it saw together with ``now``
(monotonic seconds), and arms a timer at :meth:`ModeController.next_deadline`, in the
way ``aioquic`` asks for ``get_timer()`` / ``handle_timer(now)``.

Rule 1 (borrowed from h11's ``_state.py``): everything that affects mode transitions
lives in this file. The registry reports signals and obeys the answer; it never
decides a mode itself.
"""

# Theory of operation
# -------------------
#
# Three modes, ordered by how much the instance trusts what it holds:
#
#   NORMAL      Redis answers and the event stream is gap-free. Reads are served from
#               L1 alone; an L1 miss falls through to Redis.
#   L2_ONLY     Redis answers, but events may have been missed (subscription down, a
#               gap being repaired, a bad event, a changed pool epoch). Reads check L1
#               against Redis within a time budget.
#   LOCAL_ONLY  Redis does not answer (the circuit is open). Reads serve last-known-good
#               L1 marked stale; writes go to the local journal (journal.py); liveness
#               is frozen at the start of the outage.
#
# Four signals drive the machine (see :class:`Signal`). Every (mode, signal) pair has
# exactly one :class:`Rule` in TRANSITIONS below. Looking a pair up in a dict, rather
# than walking if-chains, keeps the whole machine on one screen and lets the tests
# enumerate it; a pair missing from the table raises IllegalTransition and changes
# nothing, so a future signal cannot be silently ignored.
#
# The path home after an outage is always
#
#   LOCAL_ONLY --(probes_to_recover x REDIS_OK)--> L2_ONLY --(CAUGHT_UP)--> NORMAL
#
# and never LOCAL_ONLY --> NORMAL directly: events published while Redis was out of
# reach (or lost with a restarted server) have to be caught up or relisted before L1 is
# trusted again. For the same reason CAUGHT_UP is ignored in LOCAL_ONLY: a catch-up that
# began before the outage finishing late must not let the instance skip recovery.
#
# Hysteresis, so that one slow command does not flip the instance into serving stale
# data and one lucky probe does not flip it back:
#   * NORMAL/L2_ONLY open the circuit only after ``failures_to_local`` consecutive
#     REDIS_FAILED; any REDIS_OK in between resets the count.
#   * LOCAL_ONLY closes it only after ``probes_to_recover`` consecutive REDIS_OK; any
#     REDIS_FAILED in between resets the count and doubles the probe interval (capped
#     at ``probe_backoff_max_s``) so a dead server is not hammered.
# Both counters reset on every switch: each mode counts its own evidence from zero.
#
# Probing. In LOCAL_ONLY nobody else talks to Redis, so the controller asks for probes.
# next_deadline() says when the next one is due; the caller arms a timer there and calls
# on_timer(now), which answers True when a probe is due and arms a fallback deadline one
# interval later (so probing goes on even if a probe result is never reported). The
# probe's result comes back as REDIS_OK or REDIS_FAILED and re-arms the deadline from
# the time of the result: the base interval after a success, the grown one after a
# failure. Outside LOCAL_ONLY there is no deadline: ordinary commands are the probes.
#
# Outage bookkeeping. ``outage_started_at`` is the ``now`` at which the current outage
# began (the entry into LOCAL_ONLY) and stays set until the instance is back in NORMAL:
# until then nodes could not heartbeat reliably and their liveness is frozen. A relapse
# into LOCAL_ONLY during catch-up continues the same outage rather than starting a new
# one, because nodes have not had a working Redis since the first entry. On reaching
# NORMAL, ``last_recovered_at`` records the time; the reaper grants a grace period from
# it before it may remove nodes that missed heartbeats during the outage.

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from lockless.core.validate import require_int, require_number
from lockless.errors import LocklessError


class Mode(enum.Enum):
    """How far an instance trusts its L1 (DESIGN.md section 4, table of modes)."""

    NORMAL = "normal"
    L2_ONLY = "l2_only"
    LOCAL_ONLY = "local_only"


class Signal(enum.Enum):
    """A health observation reported to :meth:`ModeController.on_signal`."""

    #: A command or liveness probe answered within its timeout.
    REDIS_OK = "redis_ok"
    #: A command or probe failed or timed out (the circuit breaker's input).
    REDIS_FAILED = "redis_failed"
    #: Subscription down, gap seen, bad event, or epoch changed: events are untrusted.
    STREAM_LOST = "stream_lost"
    #: Every served pool is caught up (or relisted) and the subscription is live.
    #: Report it only for a catch-up that began after the latest STREAM_LOST.
    CAUGHT_UP = "caught_up"


class IllegalTransition(LocklessError):
    """A (mode, signal) pair has no rule in :data:`TRANSITIONS`; the controller is unchanged."""

    def __init__(self, mode: Mode, signal: Signal) -> None:
        self.mode = mode
        self.signal = signal
        super().__init__(f"no transition rule for signal {signal.name} in mode {mode.name}")


class Effect(enum.Enum):
    """What a :class:`Rule` does to the controller's counters, and whether it may switch."""

    #: Nothing changes.
    STAY = "stay"
    #: Reset the consecutive-failure count (Redis answered, the circuit stays closed).
    RESET_FAILURES = "reset_failures"
    #: Count a failure; switch to ``Rule.to`` once ``failures_to_local`` are consecutive.
    COUNT_FAILURE = "count_failure"
    #: Count a successful probe; switch to ``Rule.to`` once ``probes_to_recover`` in a row.
    COUNT_PROBE_OK = "count_probe_ok"
    #: A probe failed: restart the success count and back the probe interval off.
    PROBE_FAILED = "probe_failed"
    #: Switch to ``Rule.to`` now.
    SWITCH = "switch"


#: Effects that end in a switch (immediately or at a threshold) and so need a target.
_SWITCHING = frozenset({Effect.COUNT_FAILURE, Effect.COUNT_PROBE_OK, Effect.SWITCH})


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One row of :data:`TRANSITIONS`: the effect of a signal in a mode."""

    effect: Effect
    #: The mode switched to; ``None`` for rules that never switch.
    to: Mode | None = None
    #: Why the switch happens, logged in :attr:`ModeSwitch.reason`. May use
    #: ``{failures}`` and ``{probes}``, the counts at the moment of the switch.
    says: str = ""

    def __post_init__(self) -> None:
        # A half-specified rule would only show up when its signal arrives, perhaps in an
        # outage; checking here makes a bad table fail at import time instead.
        if (self.effect in _SWITCHING) != (self.to is not None):
            raise ValueError(f"rule {self.effect.name}: a target mode is required exactly when it switches")
        if (self.to is not None) != bool(self.says):
            raise ValueError(f"rule {self.effect.name}: a switching rule says why, and only it")


_OPEN_CIRCUIT = Rule(
    effect=Effect.COUNT_FAILURE,
    to=Mode.LOCAL_ONLY,
    says="redis failed {failures} times in a row; circuit open, serving last-known-good",
)

#: The whole machine: the rule for every (mode, signal) pair. See the theory of operation.
TRANSITIONS: dict[tuple[Mode, Signal], Rule] = {
    (Mode.NORMAL, Signal.REDIS_OK): Rule(effect=Effect.RESET_FAILURES),
    (Mode.NORMAL, Signal.REDIS_FAILED): _OPEN_CIRCUIT,
    (Mode.NORMAL, Signal.STREAM_LOST): Rule(
        effect=Effect.SWITCH, to=Mode.L2_ONLY, says="event stream untrusted; checking reads against redis"
    ),
    (Mode.NORMAL, Signal.CAUGHT_UP): Rule(effect=Effect.STAY),
    (Mode.L2_ONLY, Signal.REDIS_OK): Rule(effect=Effect.RESET_FAILURES),
    (Mode.L2_ONLY, Signal.REDIS_FAILED): _OPEN_CIRCUIT,
    # Already distrusting events; the caller restarts its catch-up.
    (Mode.L2_ONLY, Signal.STREAM_LOST): Rule(effect=Effect.STAY),
    (Mode.L2_ONLY, Signal.CAUGHT_UP): Rule(
        effect=Effect.SWITCH, to=Mode.NORMAL, says="caught up; events trusted again"
    ),
    (Mode.LOCAL_ONLY, Signal.REDIS_OK): Rule(
        effect=Effect.COUNT_PROBE_OK, to=Mode.L2_ONLY, says="redis answered {probes} probes; catching up"
    ),
    (Mode.LOCAL_ONLY, Signal.REDIS_FAILED): Rule(effect=Effect.PROBE_FAILED),
    # The stream is moot while Redis is unreachable; recovery goes through L2_ONLY anyway.
    (Mode.LOCAL_ONLY, Signal.STREAM_LOST): Rule(effect=Effect.STAY),
    # A late catch-up from before the outage must not skip recovery.
    (Mode.LOCAL_ONLY, Signal.CAUGHT_UP): Rule(effect=Effect.STAY),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ModeSwitch:
    """One mode change, as logged: when, from, to and why."""

    #: The caller's ``now`` (monotonic seconds) when the switch happened.
    at: float
    from_mode: Mode
    to_mode: Mode
    #: The rule's explanation with the counts that triggered it, plus the caller's reason.
    reason: str
    #: The pools whose mode switched: all of an instance's pools on one server, one pool on a
    #: cluster (each pool has its own machine there). Empty when the machine serves no pools.
    pools: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.from_mode, Mode) or not isinstance(self.to_mode, Mode):
            raise TypeError("from_mode and to_mode must be Mode members")
        if self.from_mode is self.to_mode:
            raise ValueError(f"a switch must change the mode (both are {self.from_mode.name})")


@dataclass(frozen=True, slots=True, kw_only=True)
class ModeThresholds:
    """Hysteresis and probe timing of the mode machine (the ``modes`` config section)."""

    #: Consecutive REDIS_FAILED that open the circuit (NORMAL or L2_ONLY -> LOCAL_ONLY).
    failures_to_local: int = 3
    #: Consecutive REDIS_OK while LOCAL_ONLY before recovery starts (-> L2_ONLY).
    probes_to_recover: int = 2
    #: Seconds between probes of Redis while LOCAL_ONLY, after a success or on entry.
    probe_interval_s: float = 0.1
    #: Cap of the probe interval, which doubles on each failed probe.
    probe_backoff_max_s: float = 1.0

    def __post_init__(self) -> None:
        require_int("modes.failures_to_local", self.failures_to_local, minimum=1)
        require_int("modes.probes_to_recover", self.probes_to_recover, minimum=1)
        require_number(
            "modes.probe_interval_s",
            self.probe_interval_s,
            strict=True,
            allowed="a finite number of seconds > 0",
        )
        # Checked second, so its bound can quote a probe interval known to be valid.
        require_number(
            "modes.probe_backoff_max_s",
            self.probe_backoff_max_s,
            minimum=self.probe_interval_s,
            allowed=f"a finite number of seconds >= modes.probe_interval_s ({self.probe_interval_s})",
        )


#: Used when no thresholds are given (a module constant, so no call sits in a default).
DEFAULT_THRESHOLDS = ModeThresholds()


class ModeController:
    """The mode machine of one registry instance. Pure: it is told the time.

    Feed it every health observation with :meth:`on_signal`; keep a timer armed at
    :meth:`next_deadline` and call :meth:`on_timer` when it fires, probing Redis
    whenever that returns True. Not thread-safe; one event loop owns it.
    """

    def __init__(
        self,
        thresholds: ModeThresholds = DEFAULT_THRESHOLDS,
        *,
        now: float,
        history: int = 1000,
        pools: tuple[str, ...] = (),
    ) -> None:
        require_int("history", history, minimum=1)
        self._thresholds = thresholds
        self._pools = tuple(pools)
        self._mode = Mode.NORMAL
        self._mode_since = now
        self._failures = 0
        self._probe_oks = 0
        self._probe_interval = thresholds.probe_interval_s
        self._deadline: float | None = None
        self._switches: deque[ModeSwitch] = deque(maxlen=history)
        self._counts: dict[tuple[Mode, Mode], int] = {}
        self._outage_started_at: float | None = None
        self._last_recovered_at: float | None = None

    @property
    def mode(self) -> Mode:
        """The current mode."""
        return self._mode

    @property
    def pools(self) -> tuple[str, ...]:
        """The pools this machine decides for (stamped on every switch)."""
        return self._pools

    @property
    def thresholds(self) -> ModeThresholds:
        """The thresholds this controller was built with."""
        return self._thresholds

    @property
    def mode_since(self) -> float:
        """The ``now`` at which the current mode began (construction time for the first)."""
        return self._mode_since

    @property
    def consecutive_failures(self) -> int:
        """REDIS_FAILED counted towards opening the circuit (0 in LOCAL_ONLY)."""
        return self._failures

    @property
    def consecutive_probe_oks(self) -> int:
        """REDIS_OK counted towards recovery (only ever non-zero in LOCAL_ONLY)."""
        return self._probe_oks

    @property
    def probe_interval(self) -> float:
        """The current probe interval in seconds, backed off after failed probes."""
        return self._probe_interval

    @property
    def switches(self) -> tuple[ModeSwitch, ...]:
        """The most recent switches, oldest first; at most ``history`` of them."""
        return tuple(self._switches)

    @property
    def switch_counts(self) -> dict[tuple[Mode, Mode], int]:
        """How often each ``(from, to)`` switch happened, ever (a copy; never truncated)."""
        return dict(self._counts)

    @property
    def outage_started_at(self) -> float | None:
        """When the current outage began (entry to LOCAL_ONLY); ``None`` once back in NORMAL."""
        return self._outage_started_at

    @property
    def last_recovered_at(self) -> float | None:
        """When the instance last got back to NORMAL after an outage; ``None`` if never."""
        return self._last_recovered_at

    def on_signal(self, signal: Signal, now: float, reason: str = "") -> ModeSwitch | None:
        """Apply one health observation; return the switch it caused, if any.

        ``reason`` (say ``"HGETALL timed out after 50 ms"``) is appended to the logged
        reason of a switch. Raises :class:`IllegalTransition`, changing nothing, if the
        table has no rule for the pair.
        """
        try:
            rule = TRANSITIONS[self._mode, signal]
        except KeyError:
            raise IllegalTransition(self._mode, signal) from None
        limits = self._thresholds
        match rule.effect:
            case Effect.STAY:
                return None
            case Effect.RESET_FAILURES:
                # Only *consecutive* failures open the circuit; one answer proves Redis alive.
                self._failures = 0
                return None
            case Effect.COUNT_FAILURE:
                # Below the threshold nothing is logged: a single slow command is noise.
                self._failures += 1
                if self._failures < limits.failures_to_local:
                    return None
            case Effect.COUNT_PROBE_OK:
                self._probe_oks += 1
                # Redis is back: probe again at the base rate to confirm it quickly.
                self._probe_interval = limits.probe_interval_s
                self._deadline = now + self._probe_interval
                if self._probe_oks < limits.probes_to_recover:
                    return None
            case Effect.PROBE_FAILED:
                # Recovery needs an unbroken run of answers; back off so a server that is
                # restarting or overloaded is not kept busy by every instance probing it.
                self._probe_oks = 0
                self._probe_interval = min(self._probe_interval * 2, limits.probe_backoff_max_s)
                self._deadline = now + self._probe_interval
                return None
            case _:  # Effect.SWITCH: unconditional
                pass
        return self._switch(rule, now, reason)

    def next_deadline(self) -> float | None:
        """When the next probe of Redis is due; ``None`` outside LOCAL_ONLY."""
        return self._deadline

    def on_timer(self, now: float) -> bool:
        """Tell the controller its timer fired; True means "probe Redis now".

        The caller reports the probe's outcome as REDIS_OK or REDIS_FAILED. A fallback
        deadline one interval from ``now`` is armed meanwhile, so that a probe whose
        result is lost does not stop probing. A call before the deadline (an early or
        stale timer) returns False and changes nothing.
        """
        if self._deadline is None or now < self._deadline:
            return False
        # Measured from now, not from the missed deadline: a late timer must not cause
        # a burst of catch-up probes.
        self._deadline = now + self._probe_interval
        return True

    def _switch(self, rule: Rule, now: float, reason: str) -> ModeSwitch:
        """Enter ``rule.to``: log the switch, reset the counters, re-arm or clear probing."""
        assert rule.to is not None  # guaranteed by Rule.__post_init__ for switching effects
        says = rule.says.format(failures=self._failures, probes=self._probe_oks)
        switch = ModeSwitch(
            at=now,
            from_mode=self._mode,
            to_mode=rule.to,
            reason=f"{says} ({reason})" if reason else says,
            pools=self._pools,
        )
        self._mode = rule.to
        self._mode_since = now
        # Each mode counts its own evidence from zero (see the theory of operation).
        self._failures = 0
        self._probe_oks = 0
        self._probe_interval = self._thresholds.probe_interval_s
        if rule.to is Mode.LOCAL_ONLY:
            # A relapse during catch-up continues the outage that is already running.
            if self._outage_started_at is None:
                self._outage_started_at = now
            self._deadline = now + self._probe_interval
        else:
            self._deadline = None
        if rule.to is Mode.NORMAL and self._outage_started_at is not None:
            self._outage_started_at = None
            self._last_recovered_at = now
        # The deque drops the oldest switch; the counts are kept whole for metrics.
        self._switches.append(switch)
        key = (switch.from_mode, switch.to_mode)
        self._counts[key] = self._counts.get(key, 0) + 1
        return switch
