"""The mode machine, driven directly with chosen ``now`` values (as h11's test_state.py does)."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest

from lockless.core.modes import (
    DEFAULT_THRESHOLDS,
    TRANSITIONS,
    Effect,
    IllegalTransition,
    Mode,
    ModeController,
    ModeSwitch,
    ModeThresholds,
    Rule,
    Signal,
)
from lockless.errors import ConfigError, LocklessError

N, L2, LOCAL = Mode.NORMAL, Mode.L2_ONLY, Mode.LOCAL_ONLY
OK, FAILED, LOST, CAUGHT_UP = Signal.REDIS_OK, Signal.REDIS_FAILED, Signal.STREAM_LOST, Signal.CAUGHT_UP

# Thresholds of 1 make every counting rule switch on its first signal; binary-exact
# intervals keep the deadline arithmetic exact.
HAIR_TRIGGER = ModeThresholds(failures_to_local=1, probes_to_recover=1)
EXACT = ModeThresholds(probe_interval_s=0.125, probe_backoff_max_s=0.5)


def controller_in(mode: Mode, thresholds: ModeThresholds = DEFAULT_THRESHOLDS, now: float = 0.0):
    """A controller brought to ``mode`` by the shortest legal signal sequence."""
    mc = ModeController(thresholds, now=now)
    if mode is L2:
        mc.on_signal(LOST, now)
    elif mode is LOCAL:
        for _ in range(thresholds.failures_to_local):
            mc.on_signal(FAILED, now)
    assert mc.mode is mode
    return mc


# (mode, signal) -> (mode after one signal with thresholds of 1, with the default thresholds)
EXPECTED = {
    (N, OK): (N, N),
    (N, FAILED): (LOCAL, N),
    (N, LOST): (L2, L2),
    (N, CAUGHT_UP): (N, N),
    (L2, OK): (L2, L2),
    (L2, FAILED): (LOCAL, L2),
    (L2, LOST): (L2, L2),
    (L2, CAUGHT_UP): (N, N),
    (LOCAL, OK): (L2, LOCAL),
    (LOCAL, FAILED): (LOCAL, LOCAL),
    (LOCAL, LOST): (LOCAL, LOCAL),
    (LOCAL, CAUGHT_UP): (LOCAL, LOCAL),
}


def test_table_covers_every_mode_signal_pair():
    assert set(TRANSITIONS) == set(itertools.product(Mode, Signal))
    assert set(EXPECTED) == set(TRANSITIONS)


def test_local_only_never_leads_straight_to_normal():
    assert all(rule.to is not N for (mode, _), rule in TRANSITIONS.items() if mode is LOCAL)


@pytest.mark.parametrize(("mode", "signal"), list(EXPECTED))
@pytest.mark.parametrize("hair_trigger", [True, False], ids=["thresholds-1", "default-thresholds"])
def test_one_signal_in_each_mode(mode, signal, hair_trigger):
    thresholds = HAIR_TRIGGER if hair_trigger else DEFAULT_THRESHOLDS
    expected = EXPECTED[mode, signal][0 if hair_trigger else 1]
    mc = controller_in(mode, thresholds, now=1.0)
    before = len(mc.switches)
    switch = mc.on_signal(signal, 2.0, reason="test")
    assert mc.mode is expected
    if expected is mode:
        assert switch is None
        assert len(mc.switches) == before
    else:
        assert switch == mc.switches[-1]
        assert (switch.at, switch.from_mode, switch.to_mode) == (2.0, mode, expected)
        assert switch.reason.endswith("(test)")
        assert mc.mode_since == 2.0
        assert mc.consecutive_failures == mc.consecutive_probe_oks == 0
    assert (mc.next_deadline() is not None) == (mc.mode is LOCAL)


def test_missing_rule_raises_and_changes_nothing(monkeypatch):
    mc = controller_in(L2)
    mc.on_signal(FAILED, 1.0)
    monkeypatch.delitem(TRANSITIONS, (L2, FAILED))
    with pytest.raises(IllegalTransition, match="REDIS_FAILED in mode L2_ONLY") as info:
        mc.on_signal(FAILED, 2.0)
    assert isinstance(info.value, LocklessError)
    assert (info.value.mode, info.value.signal) == (L2, FAILED)
    assert mc.mode is L2
    assert mc.consecutive_failures == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"effect": Effect.SWITCH},  # switches, but to nowhere
        {"effect": Effect.COUNT_FAILURE, "says": "why"},
        {"effect": Effect.STAY, "to": N, "says": "why"},  # never switches, yet has a target
        {"effect": Effect.SWITCH, "to": N},  # switches without saying why
        {"effect": Effect.STAY, "says": "why"},
    ],
)
def test_rule_is_validated_when_built(kwargs):
    with pytest.raises(ValueError, match="rule"):
        Rule(**kwargs)


def test_mode_switch_is_validated_frozen_and_keyword_only():
    with pytest.raises(ValueError, match="must change the mode"):
        ModeSwitch(at=0.0, from_mode=N, to_mode=N, reason="x")
    with pytest.raises(TypeError, match="Mode members"):
        ModeSwitch(at=0.0, from_mode="normal", to_mode=L2, reason="x")
    with pytest.raises(TypeError):
        ModeSwitch(0.0, N, L2, "x")  # type: ignore[misc]
    switch = ModeSwitch(at=0.0, from_mode=N, to_mode=L2, reason="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        switch.at = 1.0  # type: ignore[misc]


# --- hysteresis -------------------------------------------------------------------


@pytest.mark.parametrize("start", [N, L2])
def test_circuit_opens_on_the_nth_consecutive_failure_only(start):
    mc = controller_in(start)
    assert mc.on_signal(FAILED, 1.0) is None
    assert mc.on_signal(FAILED, 2.0) is None
    assert (mc.mode, mc.consecutive_failures) == (start, 2)
    switch = mc.on_signal(FAILED, 3.0, reason="HGETALL timed out")
    assert (switch.from_mode, switch.to_mode) == (start, LOCAL)
    assert switch.reason == (
        "redis failed 3 times in a row; circuit open, serving last-known-good (HGETALL timed out)"
    )


@pytest.mark.parametrize("start", [N, L2])
def test_a_success_between_failures_resets_the_count(start):
    mc = controller_in(start)
    mc.on_signal(FAILED, 1.0)
    mc.on_signal(FAILED, 2.0)
    mc.on_signal(OK, 3.0)
    assert mc.consecutive_failures == 0
    mc.on_signal(FAILED, 4.0)
    mc.on_signal(FAILED, 5.0)
    assert mc.mode is start
    assert mc.on_signal(FAILED, 6.0) is not None
    assert mc.mode is LOCAL


def test_signals_that_stay_do_not_reset_the_failure_count():
    mc = controller_in(N)
    mc.on_signal(FAILED, 1.0)
    mc.on_signal(FAILED, 2.0)
    mc.on_signal(CAUGHT_UP, 3.0)
    assert mc.consecutive_failures == 2
    mc.on_signal(FAILED, 4.0)
    assert mc.mode is LOCAL


def test_counters_reset_on_every_switch():
    mc = controller_in(N)
    mc.on_signal(FAILED, 1.0)
    mc.on_signal(FAILED, 2.0)
    mc.on_signal(LOST, 3.0)  # NORMAL -> L2_ONLY forgets the two failures
    assert (mc.mode, mc.consecutive_failures) == (L2, 0)
    mc.on_signal(FAILED, 4.0)
    mc.on_signal(FAILED, 5.0)
    assert mc.mode is L2


def test_recovery_needs_consecutive_probe_successes():
    mc = controller_in(LOCAL)
    assert mc.on_signal(OK, 1.0) is None
    assert mc.consecutive_probe_oks == 1
    assert mc.on_signal(FAILED, 2.0) is None  # restarts the count
    assert mc.consecutive_probe_oks == 0
    assert mc.on_signal(OK, 3.0) is None
    switch = mc.on_signal(OK, 4.0)
    assert (switch.from_mode, switch.to_mode, switch.at) == (LOCAL, L2, 4.0)
    assert switch.reason == "redis answered 2 probes; catching up"  # no caller reason, no parentheses


def test_caught_up_during_an_outage_does_not_skip_recovery():
    mc = controller_in(LOCAL)
    mc.on_signal(CAUGHT_UP, 1.0)
    mc.on_signal(OK, 2.0)
    mc.on_signal(OK, 3.0)
    assert mc.mode is L2  # still has to catch up again
    mc.on_signal(CAUGHT_UP, 4.0)
    assert mc.mode is N


# --- the outage path --------------------------------------------------------------


def test_full_outage_path_and_its_bookkeeping():
    mc = ModeController(now=0.0)
    assert (mc.mode, mc.mode_since, mc.thresholds) == (N, 0.0, DEFAULT_THRESHOLDS)
    assert mc.outage_started_at is None and mc.last_recovered_at is None
    for t in (10.0, 10.5, 11.0):
        mc.on_signal(FAILED, t)
    assert (mc.mode, mc.outage_started_at, mc.mode_since) == (LOCAL, 11.0, 11.0)
    mc.on_signal(OK, 20.0)
    mc.on_signal(OK, 20.5)
    assert mc.mode is L2
    assert mc.outage_started_at == 11.0  # liveness stays frozen until caught up
    assert mc.last_recovered_at is None
    mc.on_signal(CAUGHT_UP, 21.0)
    assert (mc.mode, mc.outage_started_at, mc.last_recovered_at) == (N, None, 21.0)
    assert [(s.from_mode, s.to_mode, s.at) for s in mc.switches] == [
        (N, LOCAL, 11.0),
        (LOCAL, L2, 20.5),
        (L2, N, 21.0),
    ]
    assert mc.switch_counts == {(N, LOCAL): 1, (LOCAL, L2): 1, (L2, N): 1}


def test_relapse_during_catch_up_continues_the_same_outage():
    mc = controller_in(LOCAL, HAIR_TRIGGER, now=5.0)
    mc.on_signal(OK, 6.0)  # -> L2_ONLY
    mc.on_signal(FAILED, 7.0)  # -> LOCAL_ONLY again, before catching up
    assert (mc.mode, mc.outage_started_at) == (LOCAL, 5.0)
    mc.on_signal(OK, 8.0)
    mc.on_signal(CAUGHT_UP, 9.0)
    assert (mc.outage_started_at, mc.last_recovered_at) == (None, 9.0)
    # A later outage is a new one.
    mc.on_signal(FAILED, 30.0)
    assert (mc.outage_started_at, mc.last_recovered_at) == (30.0, 9.0)


def test_catch_up_after_a_stream_loss_is_not_a_recovery():
    mc = controller_in(L2, now=1.0)
    mc.on_signal(CAUGHT_UP, 2.0)
    assert mc.mode is N
    assert mc.last_recovered_at is None


# --- probing ----------------------------------------------------------------------


def test_no_probe_deadline_outside_local_only():
    for mode in (N, L2):
        mc = controller_in(mode, EXACT)
        assert mc.next_deadline() is None
        assert mc.on_timer(1e9) is False


def test_probe_deadlines_and_backoff():
    mc = controller_in(LOCAL, EXACT, now=10.0)
    assert (mc.next_deadline(), mc.probe_interval) == (10.125, 0.125)
    assert mc.on_timer(10.0625) is False  # early timer: nothing changes
    assert mc.next_deadline() == 10.125
    assert mc.on_timer(10.125) is True
    assert mc.next_deadline() == 10.25  # fallback until the probe reports
    mc.on_signal(FAILED, 10.1875)
    assert (mc.probe_interval, mc.next_deadline()) == (0.25, 10.4375)
    assert mc.on_timer(10.4375) is True
    mc.on_signal(FAILED, 10.5)
    assert (mc.probe_interval, mc.next_deadline()) == (0.5, 11.0)
    assert mc.on_timer(11.0) is True
    mc.on_signal(FAILED, 11.0)
    assert (mc.probe_interval, mc.next_deadline()) == (0.5, 11.5)  # capped at probe_backoff_max_s
    assert mc.on_timer(11.5) is True
    mc.on_signal(OK, 11.5)  # success: back to the base interval to confirm quickly
    assert (mc.probe_interval, mc.next_deadline()) == (0.125, 11.625)
    assert mc.on_timer(11.625) is True
    assert mc.on_signal(OK, 11.75) is not None
    assert mc.mode is L2
    assert mc.next_deadline() is None
    assert mc.on_timer(12.0) is False


def test_a_late_timer_probes_once_and_rearms_from_now():
    mc = controller_in(LOCAL, EXACT, now=0.0)
    assert mc.on_timer(100.0) is True
    assert mc.next_deadline() == 100.125
    assert mc.on_timer(100.0) is False


def test_backoff_restarts_on_each_new_outage():
    mc = controller_in(LOCAL, ModeThresholds(failures_to_local=1, probes_to_recover=1, **_exact()), now=0.0)
    mc.on_signal(FAILED, 1.0)
    mc.on_signal(FAILED, 2.0)
    assert mc.probe_interval == 0.5
    mc.on_signal(OK, 3.0)  # -> L2_ONLY
    mc.on_signal(FAILED, 4.0)  # -> LOCAL_ONLY
    assert (mc.probe_interval, mc.next_deadline()) == (0.125, 4.125)


def _exact() -> dict[str, float]:
    return {"probe_interval_s": EXACT.probe_interval_s, "probe_backoff_max_s": EXACT.probe_backoff_max_s}


# --- switch log -------------------------------------------------------------------


def test_switch_history_is_bounded_and_counts_are_exact():
    mc = ModeController(now=0.0, history=3)
    for i in range(5):  # NORMAL -> L2 -> NORMAL -> ... -> L2_ONLY: 5 switches
        mc.on_signal(LOST if i % 2 == 0 else CAUGHT_UP, float(i))
    assert [s.at for s in mc.switches] == [2.0, 3.0, 4.0]  # oldest dropped
    assert mc.switch_counts == {(N, L2): 3, (L2, N): 2}  # never dropped
    mc.switch_counts[N, L2] = 99  # a copy: the controller is unaffected
    assert mc.switch_counts[N, L2] == 3


@pytest.mark.parametrize("history", [0, -1, True, 2.5, "10"])
def test_history_is_validated(history):
    with pytest.raises(ConfigError) as info:
        ModeController(now=0.0, history=history)
    assert info.value.field == "history"


# --- thresholds -------------------------------------------------------------------


def test_default_thresholds():
    assert ModeThresholds() == DEFAULT_THRESHOLDS
    assert (DEFAULT_THRESHOLDS.failures_to_local, DEFAULT_THRESHOLDS.probes_to_recover) == (3, 2)
    assert (DEFAULT_THRESHOLDS.probe_interval_s, DEFAULT_THRESHOLDS.probe_backoff_max_s) == (0.1, 1.0)
    with pytest.raises(TypeError):
        ModeThresholds(3)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_THRESHOLDS.failures_to_local = 1  # type: ignore[misc]


def test_backoff_cap_may_equal_the_interval():
    assert ModeThresholds(probe_interval_s=0.5, probe_backoff_max_s=0.5).probe_backoff_max_s == 0.5


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("failures_to_local", 0, "integer >= 1"),
        ("failures_to_local", -3, "integer >= 1"),
        ("failures_to_local", True, "integer >= 1"),
        ("failures_to_local", 2.0, "integer >= 1"),
        ("probes_to_recover", 0, "integer >= 1"),
        ("probes_to_recover", "2", "integer >= 1"),
        ("probe_interval_s", 0, "> 0"),
        ("probe_interval_s", -0.1, "> 0"),
        ("probe_interval_s", math.nan, "> 0"),
        ("probe_interval_s", math.inf, "> 0"),
        ("probe_interval_s", False, "> 0"),
        ("probe_interval_s", "0.1", "> 0"),
        ("probe_backoff_max_s", 0.05, ">= modes.probe_interval_s (0.1)"),
        ("probe_backoff_max_s", math.inf, ">= modes.probe_interval_s"),
        ("probe_backoff_max_s", None, ">= modes.probe_interval_s"),
    ],
)
def test_thresholds_are_validated_naming_the_field(field, value, allowed):
    with pytest.raises(ConfigError) as info:
        ModeThresholds(**{field: value})
    assert info.value.field == f"modes.{field}"
    assert info.value.value is value
    assert allowed in info.value.allowed
    assert str(info.value).startswith(f"modes.{field}: got {value!r}")


def test_switches_carry_the_pools_the_machine_decides_for():
    # On a cluster each pool has a machine of its own; every switch names its pools.
    controller = ModeController(ModeThresholds(failures_to_local=1), now=0.0, pools=("gpu",))
    assert controller.pools == ("gpu",)
    switch = controller.on_signal(Signal.REDIS_FAILED, 1.0)
    assert switch is not None and switch.pools == ("gpu",)
    assert ModeController(now=0.0).pools == () and switch == controller.switches[-1]
