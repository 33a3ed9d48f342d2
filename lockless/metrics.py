"""Per-instance counters and latency histograms (DESIGN.md section 7).

Counters are plain integers in a dict: an L1 hit costs one dict increment, nothing
more, because the read path must stay cheap. Latencies go into HDR histograms (the
``hdrhistogram`` package) in microseconds, which keep percentiles exact to 3
significant digits and merge across instances and processes without averaging
percentiles. :meth:`Metrics.snapshot` gives a frozen copy; :func:`to_prometheus`
renders one in the Prometheus text exposition format.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from hdrh.histogram import HdrHistogram

#: Every counter an instance keeps, with its help text (also the Prometheus HELP line).
COUNTERS: Mapping[str, str] = MappingProxyType(
    {
        "l1_hits": "Reads answered from the in-process cache.",
        "l2_reads": "Node records read from Redis (misses, expiries, version checks that found a change).",
        "misses": "Reads whose key was not in L1.",
        "negative_hits": "Reads answered by the negative cache (node known not to exist).",
        "singleflight_joins": "Reads that joined another in-flight Redis read of the same node.",
        "version_checks": "L2_ONLY reads checked against the Redis version.",
        "version_check_timeouts": "Version checks over budget: served from L1 anyway.",
        "events_applied": "Change events applied to L1.",
        "events_ignored": "Change events older than what L1 holds (duplicates, replays).",
        "events_malformed": "Change events or records that did not decode (each triggers a relist).",
        "gaps": "Sequence gaps seen on the event stream.",
        "catchups": "Gaps repaired from the pool log.",
        "relists": "Pools relisted from Redis.",
        "reconnects": "Event subscription reconnects.",
        "epoch_changes": "Pools whose epoch changed (Redis lost its data).",
        "stale_reads": "Reads served past the staleness bound or in LOCAL_ONLY.",
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


def to_prometheus(snapshots: list[MetricsSnapshot], prefix: str = "lockless") -> str:
    """Render snapshots (one per instance) in the Prometheus text exposition format."""
    lines: list[str] = []
    for name, help_text in COUNTERS.items():
        metric = f"{prefix}_{name}_total"
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
        lines += [f'{metric}{{instance="{s.instance}"}} {s.counters.get(name, 0)}' for s in snapshots]
    metric = f"{prefix}_mode_switches_total"
    lines += [f"# HELP {metric} Mode switches by (from, to).", f"# TYPE {metric} counter"]
    for s in snapshots:
        for (src, dst), count in sorted(s.mode_switches.items()):
            lines.append(f'{metric}{{instance="{s.instance}",from="{src}",to="{dst}"}} {count}')
    metric = f"{prefix}_journal_depth"
    lines += [f"# HELP {metric} Writes waiting in the LOCAL_ONLY journal.", f"# TYPE {metric} gauge"]
    lines += [f'{metric}{{instance="{s.instance}"}} {s.journal_depth}' for s in snapshots]
    metric = f"{prefix}_mode"
    lines += [f"# HELP {metric} Current mode (1 for the active one).", f"# TYPE {metric} gauge"]
    for s in snapshots:
        for mode in ("normal", "l2_only", "local_only"):
            lines.append(f'{metric}{{instance="{s.instance}",mode="{mode}"}} {int(s.mode == mode)}')
    for name, help_text in HISTOGRAMS.items():
        metric = f"{prefix}_{name.removesuffix('_us')}_seconds"
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} summary"]
        for s in snapshots:
            h = s.histograms[name]
            for q, v in (("0.5", h.p50), ("0.95", h.p95), ("0.99", h.p99), ("0.999", h.p999)):
                lines.append(f'{metric}{{instance="{s.instance}",quantile="{q}"}} {v / 1e6:.9f}')
            lines.append(f'{metric}_count{{instance="{s.instance}"}} {h.count}')
    return "\n".join(lines) + "\n"
