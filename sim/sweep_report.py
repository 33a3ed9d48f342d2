"""Writing a sweep or contention run out, in the same folder layout as a comparison.

``results/<name>/<utc>-<git8>-<cfghash8>/`` holds ``config.toml``, ``summary.json`` (machine,
commit, every step with its parameters, validity, placement percentiles with n, counters
and Redis command deltas; for a sweep the knee of each architecture), ``steps.csv`` (one
row per step), ``histograms/<arch>.<step>.place.hdr`` (each step's placement histogram,
encoded: mergeable, re-analysable), PNG plots and ``report.md``:

* sweep: ``knee.png``, placement latency (P50 and P99) against achieved throughput, every
  architecture on one figure, each knee starred: the standard picture of a systems paper;
* contention: ``conflicts.png`` (conflicts per placement against instances, one panel per
  policy) and ``contention_latency.png`` (placement P50/P99 against instances).

``summary.json`` also carries ``architectures.<arch>`` (validity, summed counters, the
knee) so that ``lockless-sim check`` can hold these runs to budgets like any other.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import tomli_w

from sim import stats
from sim.report import _where, config_hash, git_commit, machine
from sim.sweep import ManyOutcome, Step, knees


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


def _ms(us: float) -> str:
    return f"{us / 1000:.3f}" if us < 10_000 else f"{us / 1000:,.1f}"


def write_many(outcome: ManyOutcome, out_root: Path, *, now: dt.datetime | None = None) -> Path:
    """Write every output of a sweep or contention run; returns its folder."""
    config = outcome.config
    cfg = config.to_dict()
    chash = config_hash(cfg)
    commit = git_commit(Path(__file__).parent)
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    folder = out_root / config.experiment.name / f"{stamp}-{commit[:8]}-{chash}"
    (folder / "histograms").mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text(tomli_w.dumps(cfg))
    kind = config.experiment.kind
    steps = outcome.steps
    summary: dict[str, Any] = {
        "experiment": config.experiment.name,
        "kind": kind,
        "description": config.experiment.description,
        "git_commit": commit,
        "config_hash": chash,
        "created_utc": stamp,
        "machine": {
            **machine(outcome.machine.get("redis_version", "?")),
            "loadavg_start": outcome.machine.get("loadavg_start"),
            "loadavg_end": outcome.machine.get("loadavg_end"),
        },
        "placement": _where(config.harness, config.schedulers.instances),
        "nodes": config.nodes.count,
        "slots": config.slots,
        "target_utilization": config.jobs.utilization,
        "statistics": {
            "min_samples": {stats.key(q): stats.min_samples(q) for q in stats.PERCENTILES},
            "undersampled": "shown as 'max of n'; a sweep step's knee test then uses the maximum",
        },
        "steps": [s.to_dict() for s in steps],
        "architectures": _architectures(steps, kind),
    }
    if kind == "sweep":
        summary["sweep"] = {
            "p99_bound_ms": config.sweep.p99_bound_ms,
            "max_failure_ratio": config.sweep.max_failure_ratio,
        }
        summary["knees"] = knees(steps)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _write_csv(folder / "steps.csv", steps)
    for s in steps:
        if s.place_hdr:
            (folder / "histograms" / f"{s.arch}.{_safe(s.label)}.place.hdr").write_text(s.place_hdr)
    from sim import plots  # matplotlib is slow to import

    if kind == "sweep":
        plots.knee(folder / "knee.png", summary)
    else:
        plots.contention(folder / "conflicts.png", folder / "contention_latency.png", summary)
    (folder / "report.md").write_text(report_md(summary))
    return folder


def _architectures(steps: list[Step], kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    knee = knees(steps) if kind == "sweep" else {}
    for s in steps:
        fresh = {"valid": True, "counters": {}, "steps": 0, "invalid_steps": 0, "violations": 0, "ops": {}}
        entry = out.setdefault(s.arch, fresh)
        entry["steps"] += 1
        entry["violations"] += s.violations
        if not s.valid:
            entry["invalid_steps"] += 1
            if kind == "contention":  # every contention phase is a result: one invalid taints the arch
                entry["valid"] = False
                entry["invalid_reason"] = f"{s.label}: {s.invalid_reason}"
        for name, value in s.counters.items():
            if not name.endswith(("_pct", "_ms")):
                entry["counters"][name] = entry["counters"].get(name, 0) + value
    for arch, k in knee.items():
        out[arch]["knee_rate_per_s"] = k["knee_rate_per_s"]
        out[arch]["knee_achieved_per_s"] = k["achieved_per_s"]
    return out


_COLUMNS = (
    "arch",
    "step",
    "rate_per_s",
    "policy",
    "instances",
    "valid",
    "lag_p99_ms",
    "placed",
    "n",
    "p50_us",
    "p95_us",
    "p99_us",
    "max_us",
    "undersampled",
    "achieved_per_s",
    "conflicts",
    "stale_rejections",
    "retried_placements",
    "unplaced",
    "errors",
    "conflicts_per_placement",
    "utilization",
    "data_age_p50_ms",
    "redis_usec_per_placement",
    "passed",
    "why",
)


def _row(s: Step) -> dict[str, Any]:
    c = s.counters
    placed = c.get("placed", 0)
    return {
        "arch": s.arch,
        "step": s.label,
        "rate_per_s": s.params.get("arrival_rate_per_s"),
        "policy": s.params.get("policy"),
        "instances": s.params.get("instances"),
        "valid": s.valid,
        "lag_p99_ms": s.lag_p99_ms,
        "placed": placed,
        "n": s.place["count"],
        "p50_us": s.place["p50_us"],
        "p95_us": s.place["p95_us"],
        "p99_us": s.place["p99_us"],
        "max_us": s.place["max_us"],
        "undersampled": " ".join(s.place["undersampled"]),
        "achieved_per_s": s.achieved_per_s,
        "conflicts": c.get("conflicts", 0),
        "stale_rejections": c.get("stale_rejections", 0),
        "retried_placements": c.get("retried_placements", 0),
        "unplaced": c.get("unplaced", 0),
        "errors": s.errors,
        "conflicts_per_placement": round(c.get("conflicts", 0) / placed, 5) if placed else None,
        "utilization": s.utilization,
        "data_age_p50_ms": s.data_age_p50_ms,
        "redis_usec_per_placement": round(s.commands.get("usec_total", 0) / placed, 1) if placed else None,
        "passed": s.passed,
        "why": s.why,
    }


def _write_csv(path: Path, steps: list[Step]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=_COLUMNS)
        w.writeheader()
        for s in steps:
            w.writerow(_row(s))


def report_md(summary: dict[str, Any]) -> str:
    """The human report of a sweep or contention run."""
    m = summary["machine"]
    kind = summary["kind"]
    lines = [
        f"# {summary['experiment']} ({kind})",
        "",
        summary["description"],
        "",
        f"- commit `{summary['git_commit']}`, config `{summary['config_hash']}`, {summary['created_utc']}",
        f"- machine: {m['hostname']}, {m['cpu_model']}, {m['cores']} cores, Python {m['python']}, "
        f"Redis {m['redis_version']}; load average (1/5/15 min) {m.get('loadavg_start')} at start, "
        f"{m.get('loadavg_end')} at end",
        f"- {summary['nodes']:,} nodes, {summary['slots']:,} slots, target utilization "
        f"{summary['target_utilization']:.0%} (busy slots / slots; job durations follow the rate)",
        f"- where: {summary['placement']}",
        "- n = placements measured (after each step's warm-up); a percentile fewer than 10 samples lie "
        "beyond is shown as 'max of n'",
        "",
    ]
    rows = [_row(Step(**{**s, "place_hdr": ""})) for s in summary["steps"]]
    if kind == "sweep":
        sw = summary["sweep"]
        lines += [
            "## Knees",
            "",
            f"A step passes when valid, its placement P99 is <= {sw['p99_bound_ms']:g} ms (the maximum "
            f"stands in below 1,000 placements) and <= {sw['max_failure_ratio']:.1%} of arrivals failed. "
            "Knee: the highest passing rate before the first failure. A step INVALID on harness lag is "
            "not judged; two in a row end the sweep and make the knee a lower bound (harness-bound).",
            "",
            "| arch | knee (offered /s) | achieved /s | n | P50 ms | P95 ms | P99 ms "
            "| stopped at /s | because |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for arch, k in summary["knees"].items():
            p = k["place"] or {}
            knee = "below the first rate" if k["below_first_rate"] else f"{k['knee_rate_per_s']:g}"
            cells = " | ".join(stats.show(p, q, _ms) for q in (50, 95, 99)) if p else "- | - | -"
            lines.append(
                f"| {arch} | {knee} | {k['achieved_per_s'] or '-'} | {p.get('count', 0):,} | {cells} "
                f"| {k['stopped_at_rate_per_s'] or '-'} | {k['stopped_because']} |"
            )
        lines += [
            "",
            "## Every step",
            "",
            "| arch | offered /s | achieved /s | n | P50 ms | P95 ms | P99 ms | failed | utilization "
            "| lag P99 ms | valid | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r, s in zip(rows, summary["steps"], strict=True):
            cells = " | ".join(stats.show(s["place"], q, _ms) for q in (50, 95, 99))
            lines.append(
                f"| {r['arch']} | {r['rate_per_s']:g} | {r['achieved_per_s']} | {r['n']:,} | {cells} "
                f"| {r['unplaced'] + r['errors']} | {r['utilization']} | {r['lag_p99_ms']} "
                f"| {'yes' if r['valid'] else 'INVALID'} "
                f"| {({True: 'pass: ', False: 'FAIL: ', None: ''})[r['passed']]}{r['why']} |"
            )
        lines += ["", "Plot: knee.png (latency against achieved throughput, knees starred).", ""]
    else:
        lines += [
            "## Conflicts against scheduler instances",
            "",
            "Same total arrival rate at every instance count. Conflict: an admission refused because "
            "the node was full (another decision took the slot after this one's data was read).",
            "",
            "| arch | policy | instances | placed | conflicts / pl. | stale rej. / pl. | retried / pl. "
            "| unplaced | n | P50 ms | P95 ms | P99 ms | utilization | data age P50 ms | valid |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r, s in zip(rows, summary["steps"], strict=True):
            placed = r["placed"] or 0
            cells = " | ".join(stats.show(s["place"], q, _ms) for q in (50, 95, 99))
            stale = round(r["stale_rejections"] / placed, 4) if placed else "-"
            retried = round(r["retried_placements"] / placed, 4) if placed else "-"
            lines.append(
                f"| {r['arch']} | {r['policy']} | {r['instances']} | {placed:,} "
                f"| {r['conflicts_per_placement']} | {stale} | {retried} | {r['unplaced']} | {r['n']:,} "
                f"| {cells} | {r['utilization']} | {r['data_age_p50_ms']} "
                f"| {'yes' if r['valid'] else 'INVALID: ' + s['invalid_reason']} |"
            )
        lines += ["", "Plots: conflicts.png, contention_latency.png.", ""]
    lines.append("Files: steps.csv, histograms/ (encoded HDR per step), summary.json, config.toml.")
    lines.append("")
    return "\n".join(lines)
