"""Metrics snapshots and their Prometheus exposition (through prometheus_client)."""

from __future__ import annotations

import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lockless import Metrics, PrometheusCollector, to_prometheus


def _metrics(instance: str, latencies_us: list[int]) -> Metrics:
    metrics = Metrics(instance)
    metrics.inc("l1_hits", 7)
    metrics.inc("gaps")
    for value in latencies_us:
        metrics.observe_us("redis_latency_us", value)
    return metrics


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_counters_modes_and_latency_buckets_render_and_parse() -> None:
    a = _metrics("a", [40, 300, 300, 2_000, 60_000])
    b = _metrics("b", [])
    snaps = [
        a.snapshot(mode="l2_only", mode_switches={("normal", "l2_only"): 1}, journal_depth=3),
        b.snapshot(),
    ]
    samples = _samples(to_prometheus(snaps))
    assert samples["lockless_l1_hits_total", (("instance", "a"),)] == 7
    assert samples["lockless_gaps_total", (("instance", "b"),)] == 1
    assert (
        samples["lockless_mode_switches_total", (("from", "normal"), ("instance", "a"), ("to", "l2_only"))]
        == 1
    )
    assert samples["lockless_journal_depth", (("instance", "a"),)] == 3
    assert samples["lockless_mode", (("instance", "a"), ("mode", "l2_only"))] == 1
    assert samples["lockless_mode", (("instance", "a"), ("mode", "normal"))] == 0
    bucket = "lockless_redis_latency_seconds_bucket"
    # Cumulative counts from the HDR histogram: 40 us <= 50 us; 300 us <= 500 us; 2 ms <= 2.5 ms;
    # 60 ms <= 100 ms.
    assert samples[bucket, (("instance", "a"), ("le", "5e-05"))] == 1
    assert samples[bucket, (("instance", "a"), ("le", "0.0005"))] == 3
    assert samples[bucket, (("instance", "a"), ("le", "0.0025"))] == 4
    assert samples[bucket, (("instance", "a"), ("le", "0.05"))] == 4
    assert samples[bucket, (("instance", "a"), ("le", "0.1"))] == 5
    assert samples[bucket, (("instance", "a"), ("le", "+Inf"))] == 5
    assert samples["lockless_redis_latency_seconds_count", (("instance", "a"),)] == 5
    # HDR keeps 3 significant digits, so the sum is exact to 0.1 %.
    assert samples["lockless_redis_latency_seconds_sum", (("instance", "a"),)] == pytest.approx(
        0.06264, rel=1e-3
    )
    assert samples["lockless_redis_latency_seconds_count", (("instance", "b"),)] == 0


def test_the_collector_joins_a_schedulers_own_registry_and_reads_at_scrape_time() -> None:
    metrics = _metrics("sched-1", [100])
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(lambda: [metrics.snapshot()], prefix="sched"))
    assert (
        _samples(generate_latest(registry).decode())["sched_l1_hits_total", (("instance", "sched-1"),)] == 7
    )
    metrics.inc("l1_hits", 5)  # a later scrape sees the new value
    assert (
        _samples(generate_latest(registry).decode())["sched_l1_hits_total", (("instance", "sched-1"),)] == 12
    )


def test_without_prometheus_client_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"lockless\[prometheus\]"):
        PrometheusCollector(lambda: [])
