"""Properties of the mode machine over random signal and timer sequences."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lockless.core.modes import Mode, ModeController, ModeSwitch, ModeThresholds, Signal


@st.composite
def thresholds(draw: st.DrawFn) -> ModeThresholds:
    interval = draw(st.floats(min_value=0.001, max_value=1.0))
    return ModeThresholds(
        failures_to_local=draw(st.integers(1, 4)),
        probes_to_recover=draw(st.integers(1, 3)),
        probe_interval_s=interval,
        probe_backoff_max_s=draw(st.floats(min_value=interval, max_value=8.0)),
    )


# A step: a signal, or (None) a timer firing; then how far time advances before it.
steps = st.lists(
    st.tuples(st.sampled_from([*Signal, None]), st.floats(min_value=0.0, max_value=2.0)),
    max_size=200,
)


def run(mc: ModeController, plan, start: float = 0.0) -> list[ModeSwitch]:
    """Drive ``mc`` through ``plan``, checking step invariants; return every switch it made."""
    now = start
    made: list[ModeSwitch] = []
    for signal, dt in plan:
        now += dt
        before = mc.mode
        if signal is None:
            deadline = mc.next_deadline()
            fired = mc.on_timer(now)
            # A probe is asked for exactly when a deadline exists and has passed.
            assert fired == (deadline is not None and now >= deadline)
            assert mc.mode is before
            continue
        switch = mc.on_signal(signal, now, reason="prop")
        if switch is None:
            assert mc.mode is before
            continue
        made.append(switch)
        assert (switch.from_mode, switch.to_mode, switch.at) == (before, mc.mode, now)
        if switch.to_mode is Mode.NORMAL:
            # NORMAL is reached only by a completed catch-up.
            assert (switch.from_mode, signal) == (Mode.L2_ONLY, Signal.CAUGHT_UP)
        # Mode-dependent state agrees with the mode after every step.
        assert (mc.next_deadline() is not None) == (mc.mode is Mode.LOCAL_ONLY)
        assert (mc.outage_started_at is None) or mc.mode is not Mode.NORMAL
    return made


@given(thresholds(), steps)
def test_never_local_only_straight_to_normal(limits, plan):
    mc = ModeController(limits, now=0.0)
    made = run(mc, plan)
    assert not any(s.from_mode is Mode.LOCAL_ONLY and s.to_mode is Mode.NORMAL for s in made)
    assert (Mode.LOCAL_ONLY, Mode.NORMAL) not in mc.switch_counts


@given(thresholds(), steps)
def test_switch_log_is_a_chain(limits, plan):
    mc = ModeController(limits, now=0.0, history=10_000)
    made = run(mc, plan)
    log = mc.switches
    assert list(log) == made
    previous = Mode.NORMAL
    for switch in log:
        assert switch.from_mode is previous
        previous = switch.to_mode
    assert previous is mc.mode
    assert [s.at for s in log] == sorted(s.at for s in log)
    assert sum(mc.switch_counts.values()) == len(log)


@given(thresholds(), steps, st.integers(1, 5))
def test_bounded_history_keeps_the_newest_and_counts_everything(limits, plan, history):
    mc = ModeController(limits, now=0.0, history=history)
    made = run(mc, plan)
    assert list(mc.switches) == made[-history:]
    expected: dict[tuple[Mode, Mode], int] = {}
    for s in made:
        expected[s.from_mode, s.to_mode] = expected.get((s.from_mode, s.to_mode), 0) + 1
    assert mc.switch_counts == expected


@given(thresholds(), steps)
def test_probe_interval_stays_between_base_and_cap(limits, plan):
    mc = ModeController(limits, now=0.0)
    now = 0.0
    for signal, dt in plan:
        now += dt
        if signal is None:
            mc.on_timer(now)
        else:
            mc.on_signal(signal, now)
        assert limits.probe_interval_s <= mc.probe_interval <= limits.probe_backoff_max_s
        if mc.mode is Mode.LOCAL_ONLY:
            assert mc.outage_started_at is not None
            assert mc.next_deadline() <= now + limits.probe_backoff_max_s
