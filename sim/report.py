"""Writing a run out: one folder per run, readable without the harness.

``results/<name>/<utc>-<git8>-<cfghash8>/`` holds

* ``config.toml`` - the resolved experiment (every default filled in);
* ``summary.json`` - machine (hostname, CPU model, cores, Python, Redis version), git
  commit, config hash, and per architecture: validity, harness lag and CPU, percentiles
  per operation, counters, errors, violations, the Redis commands the phase executed
  (``commands``: INFO commandstats delta), and the run's ``probe`` (sim/probe.py: commands
  per operation and interleaved latencies of every architecture, with a raw PING);
* ``percentiles.csv`` - one row per (architecture, operation): P50/P95/P99/P99.9 with n, and
  which of them too few samples back (``sim/stats.py``: shown as "max of n");
* ``timeline.csv`` - faults, mode switches, violations, phase markers;
* ``throughput.csv`` - per second and operation: completions, errors, ~P50/P99;
* ``histograms/<arch>.<op>.hdr`` - HDR histograms in their encoded form (mergeable);
* ``latency_percentiles.png``, ``latency_over_time.png`` and ``report.md``.

A run whose harness lag P99 exceeds ``harness.max_lag_p99_ms`` is INVALID: its numbers are
kept in the files (so the failure can be studied) but report.md and ``compare`` show
INVALID instead of presenting them as a latency result.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import tomli_w

from sim import stats
from sim.decision import decision_md, decision_metrics
from sim.recorder import OPS, Recorder
from sim.runner import RunOutcome

PERCENTILES = stats.PERCENTILES
#: Operations whose latency ratios to lockless get a confidence interval (placement path).
RATIO_OPS = ("place", "select", "get", "job_start")
RATIO_PERCENTILES = (50.0, 95.0, 99.0)


def config_hash(config_dict: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config_dict, sort_keys=True).encode()).hexdigest()[:8]


def git_commit(cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=cwd, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=cwd,
            timeout=10,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine(redis_version: str) -> dict[str, Any]:
    """Who ran this: results from different machines must never be mistaken for each other."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis_version": redis_version,
    }


def arch_summary(rec: Recorder, max_lag_p99_ms: float) -> dict[str, Any]:
    lag = rec.extra["lag"]
    lag_p99_ms = lag.get_value_at_percentile(99) / 1000 if lag.get_total_count() else 0.0
    ops: dict[str, Any] = {}
    for op in OPS:
        hist, service = rec.latency[op], rec.service[op]
        errors = sum(n for (o, _), n in rec.errors.items() if o == op)
        if not hist.get_total_count() and not errors:
            continue
        ops[op] = {
            **stats.summarize(hist),
            "errors": errors,
            "service_p50_us": service.get_value_at_percentile(50),
            "service_p99_us": service.get_value_at_percentile(99),
        }
    extra = {
        name: {**stats.summarize(h), "mean": round(h.get_mean_value(), 1)}
        for name, h in rec.extra.items()
        if h.get_total_count()
    }
    valid = lag_p99_ms <= max_lag_p99_ms
    return {
        "valid": valid,
        "invalid_reason": ""
        if valid
        else f"harness lag P99 {lag_p99_ms:.2f} ms > bound {max_lag_p99_ms:g} ms",
        "lag_p99_ms": round(lag_p99_ms, 3),
        "ops": ops,
        "distributions": extra,
        "counters": dict(sorted(rec.counters.items())),
        "errors": {f"{op}:{err}": n for (op, err), n in sorted(rec.errors.items())},
        "violations": len(rec.violations),
        "violation_examples": rec.violations[:20],
    }


def write_run(outcome: RunOutcome, out_root: Path, *, now: dt.datetime | None = None) -> Path:
    """Write every output file of a run; returns its folder."""
    config = outcome.config
    cfg = config.to_dict()
    chash = config_hash(cfg)
    commit = git_commit(Path(__file__).parent)
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    folder = out_root / config.experiment.name / f"{stamp}-{commit[:8]}-{chash}"
    (folder / "histograms").mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text(tomli_w.dumps(cfg))
    bound = config.harness.max_lag_p99_ms
    archs = {arch: arch_summary(rec, bound) for arch, rec in outcome.recorders.items()}
    for arch, data in archs.items():  # the phase's INFO commandstats delta (sim/probe.py)
        if "commands" in outcome.phases.get(arch, {}):
            data["commands"] = outcome.phases[arch]["commands"]
        if "cluster" in outcome.phases.get(arch, {}):  # faults, lost writes (sim/cluster_target.py)
            data["cluster"] = outcome.phases[arch]["cluster"]
        if "sentinel" in outcome.phases.get(arch, {}):  # failovers, lost writes (sim/sentinel_target.py)
            data["sentinel"] = outcome.phases[arch]["sentinel"]
    summary = {
        "experiment": config.experiment.name,
        "description": config.experiment.description,
        "git_commit": commit,
        "config_hash": chash,
        "created_utc": stamp,
        "machine": {
            **machine(outcome.machine.get("redis_version", "?")),
            "loadavg_start": outcome.machine.get("loadavg_start"),
            "loadavg_end": outcome.machine.get("loadavg_end"),
        },
        "architecture_order": "sequential (one seeded plan replayed per architecture, Redis flushed between)",
        "placement": placement(config),
        "max_lag_p99_ms": bound,
        "nodes": config.nodes.count,
        "statistics": {
            "percentiles": [stats.key(q) for q in PERCENTILES],
            "min_samples": {stats.key(q): stats.min_samples(q) for q in PERCENTILES},
            "undersampled": "shown as 'max of n' and never judged by a budget",
            "ratio_interval": f"{stats.CONFIDENCE:.0%}, percentile bootstrap ({stats.RESAMPLES} resamples)",
        },
        "architectures": archs,
        "ratios_vs_lockless": ratios(outcome.recorders, archs),
    }
    for arch, data in archs.items():  # what load each phase was given (rate, job length, slots)
        if "workload" in outcome.phases.get(arch, {}):
            data["workload"] = outcome.phases[arch]["workload"]
    if "probe" in outcome.phases:  # commands per operation and interleaved latencies (sim/probe.py)
        summary["probe"] = outcome.phases["probe"]
    summary["decision"] = decision_metrics(summary)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _write_csvs(folder, outcome, archs)
    for arch, rec in outcome.recorders.items():
        for group, hists in (("latency", rec.latency), ("service", rec.service), ("extra", rec.extra)):
            for name, hist in hists.items():
                if hist.get_total_count():
                    (folder / "histograms" / f"{arch}.{group}.{name}.hdr").write_bytes(hist.encode())
    from sim import plots  # matplotlib is slow to import; only runs that write results need it

    plots.percentiles(folder / "latency_percentiles.png", archs)
    plots.over_time(folder / "latency_over_time.png", outcome.recorders)
    (folder / "report.md").write_text(report_md(summary))
    return folder


def placement(config: Any) -> str:
    """What ran where: the harness, the scheduler instances under test, Redis."""
    h, n = config.harness, config.schedulers.instances
    beats = (
        "; node heartbeats written to Redis by the harness itself (as node agents), not through the instances"
        if h.heartbeats_via == "harness"
        else "; node heartbeats sent through the nodes' scheduler instances"
    )
    return _where(h, n) + beats


def _where(h: Any, n: int) -> str:
    if h.scheduler_processes:
        return (
            f"harness (plan replay, heartbeat driver, checks) in one process; each of the {n} "
            "scheduler instances (the registry under test) in a process of its own, called over a "
            "Unix socket; latency is timed in the harness from intended start to reply, so it "
            "includes the scheduler's CPU and queueing and two socket hops (ipc)"
            + (f"; scheduler processes at nice +{h.scheduler_nice}" if h.scheduler_nice else "")
        )
    if h.workers > 1:
        return (
            f"{h.workers} worker processes, each replaying its shard of nodes and running its "
            "scheduler instances on the same event loop; the parent bootstraps, injects faults, merges"
        )
    return f"one process: the harness and all {n} scheduler instances share one event loop"


def ratios(recorders: dict[str, Recorder], archs: dict[str, Any]) -> dict[str, Any]:
    """Per baseline and placement-path operation: its P50/P95/P99 over lockless's, same run, with
    a 95% bootstrap interval (``sim/stats.py``); ``None`` where either side has too few samples."""
    base = recorders.get("lockless")
    out: dict[str, Any] = {}
    if base is None:
        return out
    for arch, rec in recorders.items():
        if arch == "lockless":
            continue
        for op in RATIO_OPS:
            mine, theirs = base.latency[op], rec.latency[op]
            if not (mine.get_total_count() and theirs.get_total_count()):
                continue
            out.setdefault(arch, {})[op] = {
                stats.key(q): stats.ratio_interval(theirs, mine, q, seed=int(q * 10))
                for q in RATIO_PERCENTILES
            }
    return out


def _write_csvs(folder: Path, outcome: RunOutcome, archs: dict[str, Any]) -> None:
    with (folder / "percentiles.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "arch",
                "op",
                "valid",
                "count",
                "errors",
                *[f"p{p:g}_us" for p in PERCENTILES],
                "max_us",
                "undersampled",
                "service_p50_us",
                "service_p99_us",
            ]
        )
        for arch, data in archs.items():
            for op, s in data["ops"].items():
                w.writerow(
                    [
                        arch,
                        op,
                        data["valid"],
                        s["count"],
                        s["errors"],
                        *[s[f"p{p:g}_us"] for p in PERCENTILES],
                        s["max_us"],
                        " ".join(s["undersampled"]),
                        s["service_p50_us"],
                        s["service_p99_us"],
                    ]
                )
    with (folder / "timeline.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["t_s", "arch", "kind", "detail", "instance", "reason"])
        for rec in outcome.recorders.values():
            for e in sorted(rec.timeline, key=lambda e: e["t"]):
                w.writerow(
                    [e["t"], e["arch"], e["kind"], e["detail"], e.get("instance", ""), e.get("reason", "")]
                )
            if not archs[rec.arch]["valid"]:
                w.writerow(["", rec.arch, "INVALID", archs[rec.arch]["invalid_reason"], "", ""])
    with (folder / "throughput.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["arch", "second", "op", "ok", "errors", "p50_us", "p99_us"])
        for rec in outcome.recorders.values():
            for row in rec.series():
                w.writerow(row.values())


def _ms(us: float) -> str:
    return f"{us / 1000:.3f}" if us < 10_000 else f"{us / 1000:.1f}"


def report_md(summary: dict[str, Any]) -> str:
    """A short human report: validity first, then percentiles, ratios, modes and violations."""
    m = summary["machine"]
    lines = [
        f"# {summary['experiment']}",
        "",
        summary["description"],
        "",
        f"- commit `{summary['git_commit']}`, config `{summary['config_hash']}`, {summary['created_utc']}",
        f"- machine: {m['hostname']}, {m['cpu_model']}, {m['cores']} cores, Python {m['python']}, "
        f"server {m['redis_version']}; load average (1/5/15 min) {m.get('loadavg_start')} at start, "
        f"{m.get('loadavg_end')} at end (a shared machine's other work competes for the same cores)",
        f"- {summary['nodes']:,} nodes; architectures run {summary['architecture_order']}",
        f"- where: {summary.get('placement', 'one process')}",
        "",
        "## Validity",
        "",
        "CPU in % of one core over the phase; scheduler CPU is the sum over the scheduler processes "
        "('-' when they share the harness process).",
        "",
        "| arch | harness lag P99 (ms) | harness CPU % | scheduler CPU % | redis CPU % "
        "| ipc P50/P99 (ms) | valid |",
        "|---|---|---|---|---|---|---|",
    ]
    for arch, a in summary["architectures"].items():
        c = a["counters"]
        valid = "yes" if a["valid"] else f"**INVALID**: {a['invalid_reason']}"
        ipc = a["distributions"].get("ipc")
        ipc_ms = f"{_ms(ipc['p50_us'])} / {_ms(ipc['p99_us'])}" if ipc else "-"
        lines.append(
            f"| {arch} | {a['lag_p99_ms']:.2f} | {c.get('harness_cpu_pct', '?')} | "
            f"{c.get('scheduler_cpu_pct', '-')} | {c.get('redis_cpu_pct', '?')} | {ipc_ms} | {valid} |"
        )
    lines += [
        "",
        "## Latency from intended start (ms)",
        "",
        "n is the sample count; a percentile that fewer than 10 samples lie beyond (P99 from under "
        "1,000, P99.9 from under 10,000) is shown as 'max of n' (sim/stats.py).",
        "",
        "| arch | op | n | errors | P50 | P95 | P99 | P99.9 | max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arch, a in summary["architectures"].items():
        for op, s in a["ops"].items():
            if a["valid"]:
                cells = " | ".join(stats.show(s, q, _ms) for q in PERCENTILES)
                lines.append(
                    f"| {arch} | {op} | {s['count']:,} | {s['errors']:,} | {cells} | {_ms(s['max_us'])} |"
                )
            else:
                lines.append(
                    f"| {arch} | {op} | {s['count']:,} | {s['errors']:,} | INVALID | INVALID | INVALID "
                    "| INVALID | INVALID |"
                )
    if summary["ratios_vs_lockless"]:
        lines += [
            "",
            "## Ratios to lockless (same run, 95% bootstrap interval)",
            "",
            "arch / lockless of the same percentile; '-' where either side has too few samples for it.",
            "",
            "| arch | op | P50 x | P95 x | P99 x |",
            "|---|---|---|---|---|",
        ]
        valid = {arch: a["valid"] for arch, a in summary["architectures"].items()}
        for arch, ops in summary["ratios_vs_lockless"].items():
            if not (valid[arch] and valid.get("lockless")):
                lines.append(f"| {arch} | (all) | INVALID run: no ratio | | |")
                continue
            for op, r in ops.items():
                cells = " | ".join(stats.show_ratio(r.get(k)) for k in ("p50", "p95", "p99"))
                lines.append(f"| {arch} | {op} | {cells} |")
    lines += decision_md(summary)
    lines += ["", "## Consistency", ""]
    for arch, a in summary["architectures"].items():
        c = a["counters"]
        lines.append(
            f"- {arch}: {a['violations']} violations; stale picks {c.get('stale_picks', 0)}, "
            f"mode switches {c.get('mode_switches', 0)}, convergence "
            f"{str(c['convergence_ms']) + ' ms' if 'convergence_ms' in c else 'n/a'}"
        )
        for v in a["violation_examples"][:5]:
            lines.append(f"  - t={v['t']:.3f} s {v['kind']}: {v['detail']}")
    from sim import cluster_target, sentinel_target

    lines += cluster_target.report_lines(summary["architectures"])
    lines += sentinel_target.report_lines(summary["architectures"])
    lines += [
        "",
        "Files: percentiles.csv, timeline.csv, throughput.csv, histograms/, latency_percentiles.png, "
        "latency_over_time.png.",
        "",
    ]
    return "\n".join(lines)
