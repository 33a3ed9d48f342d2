"""The decision metrics of a run, per architecture, from the same run (DESIGN.md section 8).

What an engineer choosing a design reads, in one row per architecture:

* placement latency from the intended start, with its n, and its ratio to lockless with
  a 95% interval (``sim/stats.py``);
* admission rejections per placement, split into **conflicts** (the node was full:
  another decision took the slot after this one's data was read) and **stale
  rejections** (the node was gone), and the placements that needed a retry;
* picks of nodes already gone (``stale_picks``);
* Redis round trips, commands and CPU per placement, from the run's quiet probe
  (``INFO commandstats`` deltas over ``place_job`` calls: every command and microsecond
  Redis spent executing them, script-internal ones included), and the whole phase's
  Redis CPU (process CPU %, and command microseconds per placement: every command of the
  phase, heartbeats and relists included, over its placements);
* the age of the data each decision used (``staleness``: 0 for designs that read Redis);
* the utilization the phase actually ran at (busy slots / slots), next to its target;
* where a baseline's time goes (``locked``: lock wait, Redis, parsing, selecting;
  ``ttl-cache``: its background relists), from the histograms the architectures record.

Everything is read from ``summary.json`` data, so it can be recomputed from a result folder.
"""

from __future__ import annotations

from typing import Any

from sim import stats

_PLACE_KEYS = ("count", "p50_us", "p95_us", "p99_us", "max_us", "undersampled")
#: The breakdown distributions (sim.architectures.BREAKDOWN, merged by the runner), in table order.
BREAKDOWN = {
    "lock_wait": "lock wait",
    "redis_read": "Redis (pool read round trips)",
    "parse": "parsing",
    "select_cpu": "selecting",
    "relist": "background relist",
}


def _per(n: float, d: float) -> float | None:
    return round(n / d, 4) if d else None


def decision_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """Per architecture: the decision metrics (see the module docstring), plain data."""
    out: dict[str, Any] = {}
    probe = summary.get("probe", {}).get("architectures", {})
    for arch, a in summary["architectures"].items():
        c = a["counters"]
        placed = c.get("placed", 0)
        place = a["ops"].get("place", {})
        dist = a.get("distributions", {})
        phase = a.get("commands", {})
        probe_place = probe.get(arch, {}).get("place", {})
        workload = a.get("workload", {})
        out[arch] = {
            "valid": a["valid"],
            "placements": placed,
            "place": {k: place.get(k) for k in _PLACE_KEYS} if place else {},
            "ratio_to_lockless": summary.get("ratios_vs_lockless", {}).get(arch, {}).get("place", {}),
            "conflicts_per_placement": _per(c.get("conflicts", 0), placed),
            "stale_rejections_per_placement": _per(c.get("stale_rejections", 0), placed),
            "retried_per_placement": _per(c.get("retried_placements", 0), placed),
            "stale_picks": c.get("stale_picks", 0),
            "unplaced": c.get("unplaced", 0),
            "probe_round_trips_per_placement": probe_place.get("client_commands", {}).get("total"),
            "probe_commands_per_placement": probe_place.get("commands", {}).get("total"),
            "probe_redis_usec_per_placement": probe_place.get("redis_usec"),
            "phase_redis_cpu_pct": c.get("redis_cpu_pct"),
            "phase_commands_per_placement": _per(phase.get("total", 0), placed),
            "phase_redis_usec_per_placement": _per(phase.get("usec_total", 0), placed),
            "data_age_p50_ms": round(dist["staleness"]["p50_us"] / 1000, 3) if "staleness" in dist else None,
            "data_age_p99_ms": round(dist["staleness"]["p99_us"] / 1000, 3) if "staleness" in dist else None,
            "utilization": round(dist["utilization"]["mean"] / 1000, 3) if "utilization" in dist else None,
            "target_utilization": workload.get("target_utilization"),
            "arrival_rate_per_s": workload.get("arrival_rate_per_s"),
            "breakdown": {name: dist[name] for name in BREAKDOWN if name in dist},
        }
    return out


def _f(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.{digits}g}"


def decision_md(summary: dict[str, Any]) -> list[str]:
    """The decision table for report.md (empty when the run placed nothing)."""
    metrics = summary.get("decision") or decision_metrics(summary)
    if not any(m["placements"] for m in metrics.values()):
        return []
    lines = [
        "",
        "## Decision metrics (same run)",
        "",
        "Placement = select + admit, from the arrival's intended start. Conflict: admission refused "
        "because the node was full (another decision took the slot after this one's data was read); "
        "stale: the node was gone. Round trips, commands and Redis CPU per placement come from the "
        "quiet probe's `place_job` calls (INFO commandstats deltas, script-internal commands "
        "included); 'phase' figures divide the whole phase's Redis work (heartbeats and relists "
        "included) by its placements. Data age: how old the data a decision used was.",
        "",
        "| arch | rate /s | placements | place P50 / P99 ms | P50 x lockless [95%] | P99 x lockless [95%] "
        "| conflicts / pl. | stale rej. / pl. | retried / pl. | stale picks | unplaced "
        "| round trips / pl. | Redis cmds / pl. | Redis CPU us / pl. | phase Redis us / pl. "
        "| phase Redis CPU % | data age P50 / P99 ms | utilization (target) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arch, m in metrics.items():
        place = m["place"]
        latency = (
            f"{stats.show(place, 50)} / {stats.show(place, 99)}" if place and place.get("count") else "-"
        )
        ratio = m["ratio_to_lockless"] or {}
        if not m["valid"]:
            latency, ratio = "INVALID", {}
        elif not metrics.get("lockless", {}).get("valid", False):
            ratio = {}  # a ratio with an invalid side is not a result
        util = f"{_f(m['utilization'])} ({_f(m['target_utilization'])})"
        lines.append(
            f"| {arch} | {_f(m['arrival_rate_per_s'])} | {m['placements']:,} | {latency} "
            f"| {stats.show_ratio(ratio.get('p50'))} | {stats.show_ratio(ratio.get('p99'))} "
            f"| {_f(m['conflicts_per_placement'])} | {_f(m['stale_rejections_per_placement'])} "
            f"| {_f(m['retried_per_placement'])} | {m['stale_picks']:,} | {m['unplaced']:,} "
            f"| {_f(m['probe_round_trips_per_placement'])} | {_f(m['probe_commands_per_placement'])} "
            f"| {_f(m['probe_redis_usec_per_placement'])} | {_f(m['phase_redis_usec_per_placement'])} "
            f"| {_f(m['phase_redis_cpu_pct'])} | {_f(m['data_age_p50_ms'])} / {_f(m['data_age_p99_ms'])} "
            f"| {util} |"
        )
    rows = [(arch, name, d) for arch, m in metrics.items() for name, d in m.get("breakdown", {}).items()]
    if rows:
        lines += [
            "",
            "### Where a baseline's time goes",
            "",
            "Per call, measured inside the scheduler (ms): the locked design's lock wait (every "
            "guarded call), its pool read's Redis round trips and Python parsing, and selection; "
            "ttl-cache's background relist of the pool.",
            "",
            "| arch | part | n | P50 | P95 | P99 | max |",
            "|---|---|---|---|---|---|---|",
        ]

        def ms(us: float) -> str:
            return f"{us / 1000:.3f}"

        for arch, name, d in rows:
            d = {**d, "undersampled": d.get("undersampled", stats.undersampled(d.get("count", 0)))}
            cells = " | ".join(stats.show(d, q, ms) for q in (50, 95, 99))
            lines.append(f"| {arch} | {BREAKDOWN[name]} | {d['count']:,} | {cells} | {ms(d['max_us'])} |")
    return lines
