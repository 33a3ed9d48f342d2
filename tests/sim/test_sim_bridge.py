"""The clock bridge and lag accounting: a late dispatch shows as lag and counts in latency."""

from __future__ import annotations

import asyncio

import pytest

from sim.bridge import Bridge, OpTimes
from sim.recorder import Recorder


class _ManualLoop:
    """Only ``time()`` is used by Bridge.now(); the test sets it."""

    def __init__(self) -> None:
        self.t = 100.0

    def time(self) -> float:
        return self.t


def test_mapping_with_scale() -> None:
    bridge = Bridge(scale=0.5, loop=_ManualLoop())  # type: ignore[arg-type]
    bridge.begin(at=10.0)
    assert bridge.real(4.0) == 12.0
    assert bridge.sim(12.0) == 4.0


def test_optimes_split_latency_into_lag_and_service() -> None:
    times = OpTimes(intended=1.0, sent=1.25, done=1.5)
    assert times.lag == pytest.approx(0.25)
    assert times.service == pytest.approx(0.25)
    assert times.latency == pytest.approx(0.5)
    with pytest.raises(ValueError):
        OpTimes(intended=2.0, sent=1.0, done=3.0)


def test_delayed_dispatch_is_lag_and_latency_counts_from_intended() -> None:
    rec = Recorder("x", t0=0.0)
    # Intended at 1.000 s, sent 30 ms late, served in 1 ms.
    rec.op("select", 1.000, 1.030, 1.031)
    assert rec.extra["lag"].get_value_at_percentile(100) == pytest.approx(30_000, rel=0.01)
    assert rec.latency["select"].get_value_at_percentile(100) == pytest.approx(31_000, rel=0.01)
    assert rec.service["select"].get_value_at_percentile(100) == pytest.approx(1_000, rel=0.01)


def test_batch_records_each_member_from_its_own_intended_time() -> None:
    rec = Recorder("x", t0=0.0)
    rec.batch("heartbeat", [1.000, 1.002], sent=1.003, done=1.004)
    assert rec.latency["heartbeat"].get_total_count() == 2
    assert rec.latency["heartbeat"].get_max_value() == pytest.approx(4_000, rel=0.01)
    assert rec.service["heartbeat"].get_total_count() == 2


def test_warmup_is_not_recorded_and_errors_are_counted_by_type() -> None:
    rec = Recorder("x", t0=0.0, warmup_s=1.0)
    rec.op("get", 0.5, 0.5, 0.6)
    rec.op("get", 1.5, 1.5, 1.6, ValueError("x"))
    assert rec.latency["get"].get_total_count() == 0
    assert rec.errors[("get", "ValueError")] == 1


def test_merge_adds_histograms_never_averages() -> None:
    a, b = Recorder("x", t0=0.0), Recorder("x", t0=0.0)
    for _ in range(99):
        a.op("select", 1.0, 1.0, 1.0 + 0.001)
    b.op("select", 1.0, 1.0, 2.0)
    a.merge_data(b.to_data())
    assert a.latency["select"].get_total_count() == 100
    assert a.latency["select"].get_max_value() == pytest.approx(1_000_000, rel=0.01)


async def test_sleep_until_reports_lateness_of_a_blocked_loop() -> None:
    bridge = Bridge(spin_s=0.0)
    start = bridge.begin()
    target = bridge.real(0.001)

    async def hog() -> None:
        # Block the loop (on purpose) past the target: the bridge must report it as lag.
        while bridge.now() < target + 0.02:
            pass

    hogging = asyncio.ensure_future(hog())
    late = await bridge.sleep_until(target)
    await hogging
    assert late >= 0.019
    assert bridge.now() >= start
