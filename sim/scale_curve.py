"""The scale curve: one experiment at growing node counts, to the point of failure, with its CPU bill.

Run: ``python -m sim.scale_curve experiments/scale.toml --nodes 10000,20000,50000,100000,150000
[--duration S] [--out results/] [--past-failure 1] [--every-beat-publishes]``.

``--every-beat-publishes`` runs the seed's design instead (every heartbeat a new version and
an event to every scheduler instance: ``registry.nodes.publish_every_heartbeat``), the
design the quiet heartbeat replaces, so its curve can be set beside this one.

Each step is a whole run of the experiment with ``nodes.count`` replaced (its own server,
written out as any run, under ``steps/``), and everything else as the file says: the same
heartbeat interval, job rate and churn per node. A step is *valid* when every phase's
harness lag P99 is within its bound; the curve stops ``--past-failure`` steps after the
first INVALID one (or one with violations).

Per step it keeps what decides how far one machine goes (``steps.csv``, ``curve.md``,
``curve.png``): heartbeats per second and harness lag P99 (with n), placements (with n),
violations, and the steady-state CPU (``sim/heartbeats.py`` ``CpuWindow``: from the end of
the warm-up to the end of the plan) of the harness process, the scheduler processes and
the Redis server, each in % of one core and per heartbeat. Redis runs commands on one
thread and the harness drives its loop on one, so either saturates at 100 %; the machine
at 100 % per core. **What saturates first** is the resource nearest its limit at the first
failing step (:func:`saturation`).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import datetime as dt
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lockless import ConfigError
from sim import stats
from sim.config import ExperimentConfig, load_toml

#: Columns of steps.csv, in order.
COLUMNS = (
    "nodes",
    "valid",
    "lag_p99_ms",
    "lag_n",
    "violations",
    "heartbeats_per_s",
    "placements",
    "place_p99_ms",
    "harness_cpu_pct",
    "scheduler_cpu_pct",
    "redis_cpu_pct",
    "machine_cpu_pct",
    "harness_us_per_heartbeat",
    "scheduler_us_per_heartbeat",
    "redis_us_per_heartbeat",
    "redis_evalsha_us_per_heartbeat",
    "loadavg_start",
    "run",
)


def every_beat_publishes(config: ExperimentConfig) -> ExperimentConfig:
    """The experiment in the seed's design: every heartbeat a version and an event (named ``<name>-seed``)."""
    registry = config.registry
    nodes = dataclasses.replace(registry.nodes, publish_every_heartbeat=True)
    experiment = dataclasses.replace(config.experiment, name=f"{config.experiment.name}-seed")
    registry = dataclasses.replace(registry, nodes=nodes)
    return dataclasses.replace(config, experiment=experiment, registry=registry)


def step_config(config: ExperimentConfig, nodes: int, duration_s: float | None) -> ExperimentConfig:
    """The experiment at ``nodes`` nodes (and, if given, ``duration_s``), everything else kept."""
    experiment = config.experiment
    if experiment.kind != "comparison":
        # A step is one run of the experiment's phases; a sweep or a contention grid is many.
        raise ConfigError("experiment.kind", experiment.kind, "comparison (one run per node count)")
    if duration_s is not None:
        experiment = dataclasses.replace(
            experiment, duration_s=duration_s, warmup_s=min(experiment.warmup_s, duration_s / 4)
        )
    return dataclasses.replace(
        config, experiment=experiment, nodes=dataclasses.replace(config.nodes, count=nodes)
    )


def step_row(summary: dict[str, Any], run: str) -> dict[str, Any]:
    """One row of the curve from a run's summary.json (its first architecture)."""
    arch, a = next(iter(summary["architectures"].items()))
    c = a["counters"]
    cores = summary["machine"].get("cores") or os.cpu_count() or 1
    parts = [c.get(f"steady_{k}_cpu_pct", 0.0) for k in ("harness", "scheduler", "redis")]
    place = a["ops"].get("place", {})
    return {
        "nodes": summary["nodes"],
        "valid": a["valid"],
        "lag_p99_ms": a["lag_p99_ms"],
        "lag_n": a["distributions"].get("lag", {}).get("count", 0),
        "violations": a["violations"],
        "heartbeats_per_s": round(c["steady_heartbeats"] / c["steady_s"]) if c.get("steady_s") else 0,
        "placements": place.get("count", 0),
        # A P99 needs ~1,000 samples (sim/stats.py): fewer, and the cell says "max of n".
        "place_p99_ms": stats.show(place, 99, lambda us: f"{us / 1000:.2f}") if place else "",
        "harness_cpu_pct": parts[0],
        "scheduler_cpu_pct": parts[1],
        "redis_cpu_pct": parts[2],
        "machine_cpu_pct": round(sum(parts) / cores, 1),
        "harness_us_per_heartbeat": c.get("steady_harness_cpu_us_per_heartbeat", ""),
        "scheduler_us_per_heartbeat": c.get("steady_scheduler_cpu_us_per_heartbeat", ""),
        "redis_us_per_heartbeat": c.get("steady_redis_cpu_us_per_heartbeat", ""),
        "redis_evalsha_us_per_heartbeat": c.get("steady_redis_evalsha_us_per_heartbeat", ""),
        "loadavg_start": " ".join(str(x) for x in summary["machine"].get("loadavg_start", [])),
        "run": run,
        "arch": arch,
    }


def saturation(row: dict[str, Any], schedulers: int) -> tuple[str, float]:
    """The resource nearest its limit in a step, and how near (1.0 = at its limit).

    Redis executes commands on one thread and the harness replays on one event loop: each
    is limited to one core (100 %). The scheduler processes get one core each. The machine
    is limited by its cores: ``machine_cpu_pct`` is already per core.
    """
    loads = {
        "harness process (one core)": row["harness_cpu_pct"] / 100,
        "redis-server (one core)": row["redis_cpu_pct"] / 100,
        "scheduler processes": row["scheduler_cpu_pct"] / (100 * max(1, schedulers)),
        "the machine's cores": row["machine_cpu_pct"] / 100,
    }
    name = max(loads, key=lambda k: loads[k])
    return name, round(loads[name], 2)


#: The share of a core a projection plans to use (headroom for bursts, failover, GC pauses).
PLANNED_UTILIZATION = 0.7


def projection(
    row: dict[str, Any],
    interval_s: float,
    *,
    nodes: int = 1_000_000,
    utilization: float = PLANNED_UTILIZATION,
) -> dict[str, float]:
    """What ``nodes`` nodes would need, from one measured step's steady-state costs (on paper).

    Linear in the heartbeat rate: Redis CPU per heartbeat (every command of the step,
    scripts of the jobs included) sets the nodes one Redis core carries, hence the shards;
    harness CPU per heartbeat sets the nodes one harness core drives; the schedulers' CPU
    grows with the events, which grow with the nodes (load changes and churn per node),
    so it is scaled by the node ratio. Cores are planned at ``utilization``.
    """
    beats = nodes / interval_s
    redis_us, harness_us = float(row["redis_us_per_heartbeat"]), float(row["harness_us_per_heartbeat"])
    per_redis_core = utilization * 1e6 / redis_us * interval_s
    per_harness_core = utilization * 1e6 / harness_us * interval_s
    return {
        "nodes": nodes,
        "heartbeats_per_s": round(beats),
        "nodes_per_redis_core": round(per_redis_core),
        "nodes_per_harness_core": round(per_harness_core),
        "redis_shards": math.ceil(nodes / per_redis_core),
        "harness_cores": math.ceil(nodes / per_harness_core),
        "harness_machines_2_cores": math.ceil(math.ceil(nodes / per_harness_core) / 2),
        "scheduler_cores": round(float(row["scheduler_cpu_pct"]) / 100 * nodes / row["nodes"], 1),
    }


def projection_md(row: dict[str, Any], interval_s: float) -> str:
    p = projection(row, interval_s)
    return (
        f"\n## Projection to {p['nodes']:,} nodes (on paper, from the {row['nodes']:,}-node step)\n\n"
        f"{p['heartbeats_per_s']:,} heartbeats/s. At {PLANNED_UTILIZATION:.0%} of a core: one Redis core "
        f"carries {p['nodes_per_redis_core']:,} nodes ({row['redis_us_per_heartbeat']} us of Redis CPU "
        f"per heartbeat), one harness core drives {p['nodes_per_harness_core']:,} "
        f"({row['harness_us_per_heartbeat']} us per heartbeat). So: **{p['redis_shards']} Redis shards** "
        f"(primaries; pools spread over them), **{p['harness_cores']} harness cores** "
        f"({p['harness_machines_2_cores']} two-core machines), and about {p['scheduler_cores']} cores of "
        "scheduler instances (their CPU follows events and placements, scaled here with the node count).\n"
    )


def write_curve(folder: Path, rows: Sequence[dict[str, Any]], config: ExperimentConfig) -> None:
    """steps.csv, curve.md and curve.png of the curve so far."""
    with (folder / "steps.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    text = curve_md(rows, config)
    valid = [r for r in rows if r["valid"] and not r["violations"] and r["redis_us_per_heartbeat"] != ""]
    if valid:
        text += projection_md(max(valid, key=lambda r: r["nodes"]), config.nodes.heartbeat_interval_s)
    (folder / "curve.md").write_text(text)
    _plot(folder / "curve.png", rows)


def curve_md(rows: Sequence[dict[str, Any]], config: ExperimentConfig) -> str:
    schedulers = config.schedulers.instances
    lines = [
        f"# Scale curve: {config.experiment.name}",
        "",
        f"{config.nodes.heartbeat_interval_s:g} s heartbeat, {schedulers} scheduler instances, "
        f"{config.jobs.arrival_rate_per_s:g} jobs/s, churn {config.nodes.crash_rate_per_hour:g} crashes + "
        f"{config.nodes.leave_rate_per_hour:g} leaves per node-hour; "
        f"{config.experiment.duration_s:g} s per step. "
        "CPU in % of one core over the steady state (warm-up end to plan end).",
        "",
        "| nodes | heartbeats/s | valid | lag P99 ms (n) | violations | placements | "
        "harness % | schedulers % | redis % | machine % | harness / redis us per beat | nearest its limit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name, level = saturation(r, schedulers)
        lines.append(
            f"| {r['nodes']:,} | {r['heartbeats_per_s']:,} | {'yes' if r['valid'] else 'INVALID'} | "
            f"{r['lag_p99_ms']:.1f} ({r['lag_n']:,}) | {r['violations']} | {r['placements']:,} | "
            f"{r['harness_cpu_pct']} | {r['scheduler_cpu_pct']} | {r['redis_cpu_pct']} | "
            f"{r['machine_cpu_pct']} | {r['harness_us_per_heartbeat']} / {r['redis_us_per_heartbeat']} | "
            f"{name} ({level:.0%}) |"
        )
    failed = [r for r in rows if not r["valid"] or r["violations"]]
    if failed:
        name, level = saturation(failed[0], schedulers)
        lines += [
            "",
            f"First failing step: {failed[0]['nodes']:,} nodes; "
            f"nearest its limit there: {name} ({level:.0%}).",
        ]
    return "\n".join(lines) + "\n"


def _plot(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = [r["nodes"] / 1000 for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bottom = [0.0] * len(rows)
    for key, label in (
        ("harness_cpu_pct", "harness"),
        ("scheduler_cpu_pct", "schedulers"),
        ("redis_cpu_pct", "redis-server"),
    ):
        values = [float(r[key] or 0) for r in rows]
        ax.bar(nodes, values, width=max(nodes) / len(nodes) * 0.5, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.axhline(100 * (os.cpu_count() or 2), color="grey", linestyle=":", label="all cores")
    ax.set_xlabel("nodes (thousands)")
    ax.set_ylabel("CPU, % of one core (steady state)")
    lag = ax.twinx()
    lag.plot(nodes, [r["lag_p99_ms"] for r in rows], "k.-", label="harness lag P99")
    lag.axhline(10, color="red", linestyle="--", linewidth=0.8)
    lag.set_ylabel("harness lag P99 (ms); bound dashed")
    lag.set_yscale("log")
    for r, x in zip(rows, nodes, strict=True):
        if not r["valid"]:
            lag.annotate("INVALID", (x, r["lag_p99_ms"]), fontsize=8, color="red")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


async def run_curve(
    config: ExperimentConfig,
    counts: Sequence[int],
    out: Path,
    *,
    duration_s: float | None = None,
    past_failure: int = 1,
) -> Path:
    """Run the steps; returns the curve's folder."""
    from sim.report import write_run
    from sim.runner import run_async

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = out / f"{config.experiment.name}-curve" / stamp
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    left = None
    for count in counts:
        step = step_config(config, count, duration_s)
        outcome = await run_async(step)
        run = write_run(outcome, folder / "steps")
        rows.append(step_row(json.loads((run / "summary.json").read_text()), str(run.relative_to(folder))))
        write_curve(folder, rows, step)
        r = rows[-1]
        print(
            f"{count:>8,} nodes: {'valid' if r['valid'] else 'INVALID'}, lag P99 {r['lag_p99_ms']:.1f} ms, "
            f"harness {r['harness_cpu_pct']} %, schedulers {r['scheduler_cpu_pct']} %, "
            f"redis {r['redis_cpu_pct']} %",
            flush=True,
        )
        if left is None and (not r["valid"] or r["violations"]):
            left = past_failure
        elif left is not None:
            left -= 1
        if left is not None and left <= 0:
            break
    return folder


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", type=Path)
    parser.add_argument("--nodes", default="10000,20000,50000,100000,150000,200000")
    parser.add_argument("--duration", type=float, default=None, help="override experiment.duration_s")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument(
        "--past-failure", type=int, default=1, help="steps to run after the first failing one"
    )
    parser.add_argument(
        "--every-beat-publishes",
        action="store_true",
        help="the seed's design: every heartbeat a version and an event "
        "(registry.nodes.publish_every_heartbeat)",
    )
    args = parser.parse_args(argv)
    try:
        config = load_toml(args.experiment)
        step_config(config, 1, None)  # refuses what a curve cannot run, before any step
    except ConfigError as exc:
        parser.error(f"{args.experiment}: {exc}")
    if args.every_beat_publishes:
        config = every_beat_publishes(config)
    counts = [int(x) for x in args.nodes.split(",") if x]
    folder = asyncio.run(
        run_curve(config, counts, args.out, duration_s=args.duration, past_failure=args.past_failure)
    )
    print(f"written: {folder}")


if __name__ == "__main__":
    main()
