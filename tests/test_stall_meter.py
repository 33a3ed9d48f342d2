"""The stall meter that time bounds in the stateful suite subtract: it must see a GIL-holding
stall and must not count ordinary Python work, or the bounds would be either flaky or blind."""

from __future__ import annotations

import time

from tests.support import StallMeter


def _hold_the_gil() -> None:
    # One C call with no bytecode boundary inside: the GIL is never offered to other threads.
    sum(range(20_000_000))


def _plain_python(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_a_gil_holding_call_is_counted_as_a_stall() -> None:
    with StallMeter() as meter:
        started = time.monotonic()
        _hold_the_gil()
        ended = time.monotonic()
        stalled = meter.stalled(started, ended)
    took = ended - started
    assert took > 0.05, f"the GIL-holding call took only {took:.3f} s; the test needs a longer one"
    assert stalled > 0.5 * took, f"{stalled:.3f} s of stall seen in a {took:.3f} s GIL-holding call"


def test_python_that_yields_the_gil_is_not_a_stall() -> None:
    with StallMeter() as meter:
        started = time.monotonic()
        _plain_python(0.2)
        ended = time.monotonic()
        stalled = meter.stalled(started, ended)
    assert stalled < 0.5 * (ended - started), f"{stalled:.3f} s counted as stall in plain Python"


def test_only_the_asked_interval_counts() -> None:
    with StallMeter() as meter:
        _hold_the_gil()
        after = time.monotonic()
        assert meter.stalled(after, after + 0.01) == 0.0
