"""Per-instance counters and latency histograms (DESIGN.md section 7).

Counters are plain integers in a dict: an L1 hit costs one dict increment, nothing
more, because the read path must stay cheap. Latencies go into HDR histograms (the
``hdrhistogram`` package) in microseconds, which keep percentiles exact to 3
significant digits and merge across instances and processes without averaging
percentiles. :meth:`Metrics.snapshot` gives a frozen copy.

Prometheus exposition is ``prometheus_client``'s job, an optional extra
(``pip install 'lockless[prometheus]'``): :class:`PrometheusCollector` hands a scheduler's
registries to its own ``CollectorRegistry``, and :func:`to_prometheus` renders snapshots
as text. Latencies go out as Prometheus histograms (cumulative buckets taken from the HDR
histogram), which aggregate across instances; the exact percentiles stay in the snapshot.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hdrh.histogram import HdrHistogram

#: Every counter an instance keeps, with its help text (also the Prometheus HELP line).
COUNTERS: Mapping[str, str] = MappingProxyType(
    {
        "l1_hits": "Reads answered from the in-process cache.",
        "l2_reads": "Records read from Redis into L1 (misses, expired entries, refreshes, version checks).",
        "misses": "Async reads not answered by L1 (key absent or entry expired): each goes to Redis.",
        "negative_hits": "Reads answered by the negative cache (node known not to exist).",
        "singleflight_joins": "Reads that joined another in-flight Redis read of the same node.",
        "version_checks": "L2_ONLY reads checked against the Redis version.",
        "version_check_timeouts": "Version checks over budget: served from L1 anyway.",
        "events_applied": "Change events applied to L1.",
        "events_ignored": "Change events older than what L1 holds (duplicates, replays).",
        "events_malformed": "Events or records that did not decode: counted, logged, never served.",
        "gaps": "Sequence gaps seen on the event stream.",
        "catchups": "Gaps repaired from the pool log.",
        "relists": "Pools relisted from Redis.",
        "reconnects": "Event subscription reconnects.",
        "epoch_changes": "Pools relisted as Redis lost their data (new epoch, seq back, history diverged).",
        "history_diverged": "Pools found holding writes Redis no longer has at their seq (lost in failover).",
        "writes_unreplicated": "Writes whose WAIT (redis.wait_replicas) saw fewer replicas than asked for.",
        "stale_reads": "Reads served marked stale: past the staleness bound, or in LOCAL_ONLY.",
        "stale_refusals": "Reads refused past the staleness bound.",
        "journal_appends": "Writes journaled while LOCAL_ONLY.",
        "journal_replays": "Journaled writes replayed after recovery.",
        "journal_rejections": "Writes refused because the journal was full.",
        "replay_rejections": "Journaled admissions Redis refused on replay (the job must be placed again).",
        "admissions": "job_start calls admitted.",
        "rejections": "job_start calls rejected (full, draining, not alive).",
        "reaped": "Nodes removed by this instance's reaper.",
        "redis_errors": "Redis commands that failed or timed out.",
    }
)

#: Histograms, in microseconds.
HISTOGRAMS: Mapping[str, str] = MappingProxyType(
    {
        "redis_latency_us": "Round trip of Redis commands issued by this instance.",
        "propagation_us": "Event propagation delay: write (Redis TIME) to applied in this L1.",
        "catchup_us": "Duration of a catch-up or relist.",
    }
)

_LOWEST_US = 1
_HIGHEST_US = 3_600_000_000  # one hour: an outage-length delay still records
_SIGNIFICANT = 3


def new_histogram() -> HdrHistogram:
    """An HDR histogram with the range and precision every recorder in the project uses."""
    return HdrHistogram(_LOWEST_US, _HIGHEST_US, _SIGNIFICANT)


@dataclass(frozen=True, slots=True)
class HistogramSummary:
    """Percentiles of one histogram, microseconds."""

    count: int
    p50: float
    p95: float
    p99: float
    p999: float
    max: float

    @classmethod
    def of(cls, hist: HdrHistogram) -> HistogramSummary:
        if hist.get_total_count() == 0:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0)
        pct = hist.get_value_at_percentile
        return cls(hist.get_total_count(), pct(50), pct(95), pct(99), pct(99.9), float(hist.get_max_value()))


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """A consistent copy of one instance's metrics."""

    instance: str
    counters: Mapping[str, int]
    histograms: Mapping[str, HistogramSummary]
    #: (from_mode, to_mode) -> number of switches.
    mode_switches: Mapping[tuple[str, str], int] = field(default_factory=dict)
    journal_depth: int = 0
    mode: str = "normal"
    #: Encoded HDR histograms (mergeable across processes).
    encoded: Mapping[str, bytes] = field(default_factory=dict)

    def __getitem__(self, name: str) -> int:
        return self.counters.get(name, 0)


class Metrics:
    """Mutable metrics of one instance. Not thread-safe: one event loop owns it."""

    def __init__(self, instance: str = "default") -> None:
        self.instance = instance
        self.counters: Counter[str] = Counter()
        self.histograms: dict[str, HdrHistogram] = {name: new_histogram() for name in HISTOGRAMS}

    def inc(self, name: str, amount: int = 1) -> None:
        self.counters[name] += amount

    def observe_us(self, name: str, micros: float) -> None:
        # HDR cannot store values under its lowest bound; clamp rather than lose the sample.
        self.histograms[name].record_value(max(_LOWEST_US, min(int(micros), _HIGHEST_US)))

    def snapshot(
        self,
        *,
        mode: str = "normal",
        mode_switches: Mapping[tuple[str, str], int] | None = None,
        journal_depth: int = 0,
    ) -> MetricsSnapshot:
        return MetricsSnapshot(
            instance=self.instance,
            counters=MappingProxyType({name: self.counters.get(name, 0) for name in COUNTERS}),
            histograms=MappingProxyType({n: HistogramSummary.of(h) for n, h in self.histograms.items()}),
            mode_switches=MappingProxyType(dict(mode_switches or {})),
            journal_depth=journal_depth,
            mode=mode,
            encoded=MappingProxyType({n: h.encode() for n, h in self.histograms.items()}),
        )


#: Bucket bounds (seconds) of the exported latency histograms: 50 us to 10 s.
PROMETHEUS_BUCKETS_S = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


def _cumulative_buckets(encoded: bytes) -> tuple[list[tuple[str, int]], float]:
    """Prometheus buckets (``le`` -> cumulative count) and the sum (s) of an encoded HDR histogram."""
    hist = HdrHistogram.decode(encoded) if encoded else new_histogram()
    counts = [0] * len(PROMETHEUS_BUCKETS_S)
    total, sum_us = 0, 0.0
    for item in hist.get_recorded_iterator():
        value_us, n = item.value_iterated_to, item.count_at_value_iterated_to
        total += n
        sum_us += value_us * n
        for i, bound in enumerate(PROMETHEUS_BUCKETS_S):
            if value_us <= bound * 1e6:
                counts[i] += n
                break
    buckets, running = [], 0
    for bound, n in zip(PROMETHEUS_BUCKETS_S, counts, strict=True):
        running += n
        buckets.append((repr(bound), running))
    buckets.append(("+Inf", total))
    return buckets, sum_us / 1e6


class PrometheusCollector:
    """A ``prometheus_client`` collector of registries' metrics.

    ``source`` is called at every scrape and returns the snapshots to export, e.g.
    ``PrometheusCollector(lambda: [registry.metrics()])``; register the collector in the
    scheduler's ``CollectorRegistry`` (or ``prometheus_client.REGISTRY``). Every sample
    carries an ``instance`` label.
    """

    def __init__(self, source: Callable[[], Iterable[MetricsSnapshot]], prefix: str = "lockless") -> None:
        _prometheus()  # fail at construction, with the fix in the message, not at the first scrape
        self._source = source
        self._prefix = prefix

    def collect(self) -> Iterator[Any]:
        core = _prometheus()
        snapshots = list(self._source())
        p = self._prefix
        for name, help_text in COUNTERS.items():
            family = core.CounterMetricFamily(f"{p}_{name}", help_text, labels=["instance"])
            for s in snapshots:
                family.add_metric([s.instance], s.counters.get(name, 0))
            yield family
        family = core.CounterMetricFamily(
            f"{p}_mode_switches", "Mode switches by (from, to).", labels=["instance", "from", "to"]
        )
        for s in snapshots:
            for (src, dst), count in sorted(s.mode_switches.items()):
                family.add_metric([s.instance, src, dst], count)
        yield family
        family = core.GaugeMetricFamily(
            f"{p}_journal_depth", "Writes waiting in the LOCAL_ONLY journal.", labels=["instance"]
        )
        for s in snapshots:
            family.add_metric([s.instance], s.journal_depth)
        yield family
        family = core.GaugeMetricFamily(
            f"{p}_mode", "Current mode (1 for the active one).", labels=["instance", "mode"]
        )
        for s in snapshots:
            for mode in ("normal", "l2_only", "local_only"):
                family.add_metric([s.instance, mode], int(s.mode == mode))
        yield family
        for name, help_text in HISTOGRAMS.items():
            family = core.HistogramMetricFamily(
                f"{p}_{name.removesuffix('_us')}_seconds", help_text, labels=["instance"]
            )
            for s in snapshots:
                buckets, total = _cumulative_buckets(s.encoded.get(name, b""))
                family.add_metric([s.instance], buckets, total)
            yield family


def to_prometheus(snapshots: Iterable[MetricsSnapshot], prefix: str = "lockless") -> str:
    """Render snapshots (one per instance) in the Prometheus text exposition format."""
    from prometheus_client import CollectorRegistry, generate_latest

    frozen = list(snapshots)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PrometheusCollector(lambda: frozen, prefix))
    return generate_latest(registry).decode()


def _prometheus() -> Any:
    try:
        from prometheus_client import core
    except ImportError as exc:
        raise ImportError(
            "Prometheus export needs prometheus_client: pip install 'lockless[prometheus]'"
        ) from exc
    return core
