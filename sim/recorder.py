"""What one architecture's run recorded, and how runs (and worker shards) merge.

Latencies go into HDR histograms (``hdrhistogram``, microseconds, the library's
:func:`~lockless.metrics.new_histogram`) per operation: ``latency`` from the intended
start, ``service`` from the send. The harness's own lag (sent - intended) goes into one
histogram for the whole run: it decides whether the run is valid at all.

Everything a worker process sends to the parent is plain data (:meth:`Recorder.to_data`):
histograms in HDR's encoded form, which the parent decodes and adds, so percentiles
are computed once from merged counts and never averaged.

Latency over time is kept per second per operation in coarse log buckets (10% wide):
one HDR histogram per second per operation would cost ~200 KB each in memory, while
the plot only needs a P99 line good to 10%.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

from hdrh.histogram import HdrHistogram

from lockless import new_histogram

#: Operations timed per architecture (``place`` is the registry's own place_job).
OPS = ("select", "get", "heartbeat", "register", "remove", "job_start", "job_finish", "place")
#: Other distributions kept per architecture (all microseconds); ``ipc`` is the socket
#: round trip's share of a call when schedulers run in their own processes (sim.remote).
#: ``utilization`` is busy slots per 1,000 slots, sampled every monitor interval; the
#: others after it are where a baseline's time goes (``sim.architectures.BREAKDOWN``).
EXTRA = (
    "lag",
    "loop_lag",
    "staleness",
    "propagation",
    "ipc",
    "utilization",
    "lock_wait",
    "redis_read",
    "parse",
    "select_cpu",
    "relist",
)

_LOG_STEP = math.log(1.1)


def _bucket(us: float) -> int:
    return int(math.log(max(us, 1.0)) / _LOG_STEP)


def _bucket_value(bucket: int) -> float:
    return math.exp((bucket + 1) * _LOG_STEP)


def _record(hist: HdrHistogram, us: float, count: int = 1) -> None:
    hist.record_value(max(1, min(int(us), 3_600_000_000)), count)


class Recorder:
    """Histograms, counters, per-second series, timeline and violations of one architecture.

    Times passed in are loop-clock seconds; ``t0`` is the run's simulated time 0 on that
    clock, and operations intended before ``t0 + warmup`` are not recorded.
    """

    def __init__(self, arch: str, *, t0: float, warmup_s: float = 0.0) -> None:
        self.arch = arch
        self.t0 = t0
        self.record_from = t0 + warmup_s
        self.latency: dict[str, HdrHistogram] = {op: new_histogram() for op in OPS}
        self.service: dict[str, HdrHistogram] = {op: new_histogram() for op in OPS}
        self.extra: dict[str, HdrHistogram] = {name: new_histogram() for name in EXTRA}
        self.errors: Counter[tuple[str, str]] = Counter()
        self.counters: Counter[str] = Counter()
        # (op, second) -> [ok count, error count, Counter(log bucket -> n)]
        self.per_second: dict[tuple[str, int], list[Any]] = defaultdict(lambda: [0, 0, Counter()])
        self.timeline: list[dict[str, Any]] = []
        self.violations: list[dict[str, Any]] = []

    # ----------------------------------------------------------- operations
    def op(
        self,
        op: str,
        intended: float,
        sent: float,
        done: float,
        error: BaseException | None = None,
        *,
        count_lag: bool = True,
    ) -> None:
        """One operation's three times (see ``sim.bridge``); ``error`` if it failed."""
        if intended < self.record_from:
            return
        latency_us = (done - intended) * 1e6
        if count_lag:
            _record(self.extra["lag"], (sent - intended) * 1e6)
        second = self.per_second[(op, int(intended - self.t0))]
        if error is not None:
            self.errors[(op, type(error).__name__)] += 1
            second[1] += 1
            return
        _record(self.latency[op], latency_us)
        _record(self.service[op], (done - sent) * 1e6)
        second[0] += 1
        second[2][_bucket(latency_us)] += 1

    def batch(
        self, op: str, intended: list[float], sent: float, done: float, error: BaseException | None = None
    ):
        """A pipelined batch: one send and one reply shared by operations intended at different times."""
        kept = [t for t in intended if t >= self.record_from]
        if not kept:
            return
        if error is not None:
            self.errors[(op, type(error).__name__)] += len(kept)
        else:
            _record(self.service[op], (done - sent) * 1e6, len(kept))
        for t in kept:
            _record(self.extra["lag"], (sent - t) * 1e6)
            second = self.per_second[(op, int(t - self.t0))]
            if error is not None:
                second[1] += 1
                continue
            us = (done - t) * 1e6
            _record(self.latency[op], us)
            second[0] += 1
            second[2][_bucket(us)] += 1

    def observe(self, name: str, us: float) -> None:
        """A value for one of the :data:`EXTRA` distributions."""
        _record(self.extra[name], us)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def event(self, at: float, kind: str, detail: str = "", **fields: Any) -> None:
        """A timeline entry (fault, mode switch, phase marker) at loop time ``at``."""
        self.timeline.append(
            {"t": round(at - self.t0, 6), "arch": self.arch, "kind": kind, "detail": detail, **fields}
        )

    def violation(self, at: float, kind: str, detail: str) -> None:
        """A consistency violation: kept in full and put on the timeline."""
        record = {"t": round(at - self.t0, 6), "arch": self.arch, "kind": kind, "detail": detail}
        self.violations.append(record)
        self.timeline.append({**record, "kind": f"violation:{kind}"})

    def add_encoded(self, name: str, encoded: bytes | str) -> None:
        """Merge an encoded histogram (e.g. a registry's propagation delay) into :data:`EXTRA` ``name``."""
        if encoded:
            self.extra[name].add(HdrHistogram.decode(encoded))

    # ---------------------------------------------------------------- merge
    def to_data(self) -> dict[str, Any]:
        """Plain, picklable, JSON-able data; :meth:`merge_data` is its inverse (and adds)."""

        def enc(h: HdrHistogram) -> str:
            return h.encode().decode() if h.get_total_count() else ""

        return {
            "arch": self.arch,
            "latency": {op: enc(h) for op, h in self.latency.items()},
            "service": {op: enc(h) for op, h in self.service.items()},
            "extra": {name: enc(h) for name, h in self.extra.items()},
            "errors": [[op, err, n] for (op, err), n in self.errors.items()],
            "counters": dict(self.counters),
            "per_second": [
                [op, sec, ok, bad, dict(b)] for (op, sec), (ok, bad, b) in self.per_second.items()
            ],
            "timeline": self.timeline,
            "violations": self.violations,
        }

    def merge_data(self, data: dict[str, Any]) -> None:
        """Add another recorder's :meth:`to_data` (a worker shard) into this one."""
        for group, target in (("latency", self.latency), ("service", self.service), ("extra", self.extra)):
            for name, encoded in data[group].items():
                if encoded:
                    target[name].add(HdrHistogram.decode(encoded))
        for op, err, n in data["errors"]:
            self.errors[(op, err)] += n
        for name, value in data["counters"].items():
            # Gauges (CPU %, convergence time) are per shard: the worst shard speaks, not the sum.
            if name.endswith(("_pct", "_ms")):
                self.counters[name] = max(self.counters.get(name, 0), value)
            else:
                self.counters[name] += value
        for op, sec, ok, bad, buckets in data["per_second"]:
            second = self.per_second[(op, sec)]
            second[0] += ok
            second[1] += bad
            second[2].update({int(k): v for k, v in buckets.items()})
        self.timeline.extend(data["timeline"])
        self.timeline.sort(key=lambda e: e["t"])
        self.violations.extend(data["violations"])

    # -------------------------------------------------------------- queries
    def series(self) -> list[dict[str, Any]]:
        """Per second and operation: throughput, errors, approximate P50/P99 latency (us)."""
        rows = []
        for (op, sec), (ok, bad, buckets) in sorted(
            self.per_second.items(), key=lambda kv: (kv[0][1], kv[0][0])
        ):
            rows.append(
                {
                    "arch": self.arch,
                    "second": sec,
                    "op": op,
                    "ok": ok,
                    "errors": bad,
                    "p50_us": _quantile(buckets, 0.5),
                    "p99_us": _quantile(buckets, 0.99),
                }
            )
        return rows


def _quantile(buckets: Counter[int], q: float) -> float:
    total = sum(buckets.values())
    if not total:
        return 0.0
    need, seen = q * total, 0
    for bucket in sorted(buckets):
        seen += buckets[bucket]
        if seen >= need:
            return round(_bucket_value(bucket), 1)
    return round(_bucket_value(max(buckets)), 1)
