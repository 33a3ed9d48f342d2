# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Locked vs lockless: what the result folders show
#
# This notebook only **reads** result folders written by `lockless-sim run` (it never
# runs an experiment). By default it reads the committed reference results,
# `results/reference/<experiment>/` (each holding `summary.json`, `percentiles.csv`,
# `timeline.csv`, `throughput.csv`, `histograms/` and the PNGs). Point it elsewhere with
# the environment variable `LOCKLESS_RESULTS` (a folder of runs such as `results/`, or one
# run folder) or by setting `RESULTS` in the parameters cell below.
#
# Experiments that are missing are reported and their sections skipped: the notebook
# runs on whatever is there, down to nothing at all.
#
# A phase whose harness lag P99 exceeded its bound is **INVALID**: its numbers are shown
# greyed and marked, never as a latency result. Every percentile comes with its n; one
# that fewer than 10 samples lie beyond (a P99 from under 1,000 samples) is shown as
# "max of n". Ratios between architectures carry a 95% bootstrap interval (`sim/stats.py`).
#
# Three kinds of result folder are read: comparisons (one workload, every architecture:
# `baselines`, `smoke`, `locked-vs-lockless`, ...), the knee sweep (`knee`) and the
# contention grid (`contention`).

# %%
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from hdrh.histogram import HdrHistogram
from IPython.display import Markdown, display

from sim import stats
from sim.budgets import find_runs

# %% tags=["parameters"]
# Parameters (papermill-style): a results root or one run folder; None = $LOCKLESS_RESULTS,
# else results/reference/ in the repository.
RESULTS = None

# %%
ARCH_COLOURS = {
    "lockless": "tab:green",
    "locked": "tab:red",
    "direct": "tab:blue",
    "ttl-cache": "tab:orange",
    "redis-select": "tab:purple",
}
pd.set_option("display.width", 160)


def repo_root() -> Path:
    """The repository this notebook sits in (the folder holding pyproject.toml)."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    return here


source = Path(RESULTS or os.environ.get("LOCKLESS_RESULTS") or repo_root() / "results" / "reference")
if not source.is_absolute() and not source.is_dir():
    # Jupyter runs the kernel in notebooks/: a relative path given from the repository root
    # (LOCKLESS_RESULTS=results/ jupyter lab ...) is meant from there.
    source = repo_root() / source
folders = find_runs(source) if source.is_dir() else []
runs = {}
for folder in folders:
    summary = json.loads((folder / "summary.json").read_text())
    runs.setdefault(summary["experiment"], {"folder": folder, "summary": summary})

if not runs:
    display(
        Markdown(
            f"**No result folders found in `{source}`.** Every section below is skipped. "
            "Generate results with `lockless-sim run experiments/<name>.toml --out results/`, "
            "then point `LOCKLESS_RESULTS` at `results/` (or copy a run into `results/reference/<name>/`)."
        )
    )
else:
    rows = []
    for name, run in runs.items():
        s = run["summary"]
        rows.append(
            {
                "experiment": name,
                "run": run["folder"].name,
                "nodes": s["nodes"],
                "commit": s["git_commit"][:12],
                "machine": f"{s['machine']['cpu_model']} x{s['machine']['cores']}",
                **{arch: "ok" if a["valid"] else "INVALID" for arch, a in s["architectures"].items()},
            }
        )
    display(Markdown(f"Read **{len(runs)}** experiment(s) from `{source}`:"))
    display(pd.DataFrame(rows).set_index("experiment").fillna("-"))


def need(*names: str):
    """The first of the experiments ``names`` that was loaded, or None (and say so)."""
    for name in names:
        if name in runs:
            return name
    display(Markdown(f"*Skipped: none of {', '.join(f'`{n}`' for n in names)} in `{source}`.*"))
    return None


def kind(name: str) -> str:
    """comparison | sweep | contention."""
    return runs[name]["summary"].get("kind", "comparison")


def any_run(prefer=("baselines", "locked-vs-lockless", "smoke"), min_archs=1):
    """A preferred comparison, else any loaded comparison with at least ``min_archs`` architectures."""
    for name in prefer:
        wide = name in runs and len(runs[name]["summary"]["architectures"]) >= min_archs
        if wide and kind(name) == "comparison":
            return name
    for name, run in runs.items():
        if kind(name) == "comparison" and len(run["summary"]["architectures"]) >= min_archs:
            return name
    display(Markdown(f"*Skipped: no loaded experiment has {min_archs}+ architectures.*"))
    return None


def histogram(name: str, arch: str, group: str, op: str):
    """An HDR histogram of one run (None if that run did not record it)."""
    path = runs[name]["folder"] / "histograms" / f"{arch}.{group}.{op}.hdr"
    return HdrHistogram.decode(path.read_bytes()) if path.is_file() else None


def cdf(hist):
    """(latency ms, cumulative fraction) for every recorded value of an HDR histogram."""
    values, counts = [], []
    for item in hist.get_recorded_iterator():
        values.append(item.value_iterated_to / 1000)
        counts.append(item.count_at_value_iterated_to)
    counts = np.cumsum(counts)
    return np.array(values), counts / counts[-1]


# %% [markdown]
# ## Latency percentiles per architecture and operation
#
# Latency is measured from each operation's *intended* start (open loop: a slow system
# shows as latency, never as a lighter load). One row per experiment, operation and
# architecture; milliseconds. `select` and `get` are placement reads: lockless serves them
# from local memory, the baselines from Redis (locked: under one lock). Writes
# (`heartbeat`, `job_start`, `job_finish`) are one Lua script call in every architecture.

# %%
comparisons = [name for name in runs if kind(name) == "comparison"]
if comparisons:
    rows = []
    for name in comparisons:
        for arch, a in runs[name]["summary"]["architectures"].items():
            for op, s in a["ops"].items():
                s = {**s, "undersampled": s.get("undersampled", stats.undersampled(s["count"]))}
                rows.append(
                    {
                        "experiment": name,
                        "op": op,
                        "arch": arch,
                        "n": s["count"],
                        **{
                            f"{stats.key(q)} ms": stats.show(s, q, lambda us: f"{us / 1000:.3f}")
                            for q in (50, 95, 99)
                        },
                        "valid": "yes" if a["valid"] else "INVALID",
                    }
                )
    display(pd.DataFrame(rows).set_index(["experiment", "op", "arch"]).sort_index())

# %% [markdown]
# ## Latency CDFs per architecture (log scale)
#
# The whole distribution of each placement-path operation, one line per architecture,
# from the run's HDR histograms. Further left is faster; a line's upper tail is its
# P99/P99.9. Lockless `select` and `get` sit one to two orders of magnitude left of the
# baselines, whose reads wait for Redis (and, when locked, for each other).

# %%
name = any_run(min_archs=2) if runs else None
if name:
    archs = runs[name]["summary"]["architectures"]
    ops = [
        op for op in ("select", "get", "job_start", "place") if any(op in a["ops"] for a in archs.values())
    ]
    fig, axes = plt.subplots(1, len(ops), figsize=(4.2 * len(ops), 3.6), squeeze=False)
    for ax, op in zip(axes[0], ops, strict=True):
        for arch, a in archs.items():
            hist = histogram(name, arch, "latency", op)
            if hist is None or not hist.get_total_count():
                continue
            x, y = cdf(hist)
            label = arch + ("" if a["valid"] else " (INVALID)")
            ax.step(
                x, y, where="post", label=label, color=ARCH_COLOURS.get(arch), alpha=1 if a["valid"] else 0.35
            )
        ax.set_xscale("log")
        ax.set_title(f"{name}: {op}")
        ax.set_xlabel("latency from intended start (ms, log)")
        ax.set_ylabel("fraction of operations")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    plt.show()

# %% [markdown]
# ## Latency over time during an outage, with faults and mode switches
#
# Per-second P99 of each operation of the lockless phase through the outage experiment
# (the first of `outage-hang`, `outage-stop`, `restart-empty`, `pubsub-drop`,
# `latency-spike`, `smoke` that is present). Shaded: the fault; dotted lines: mode
# switches of the scheduler instances (NORMAL, L2_ONLY, LOCAL_ONLY). During an outage
# lockless keeps serving placement reads from its last known state while writes queue
# in the journal; after recovery it catches up through L2_ONLY before NORMAL.

# %%
name = (
    need("outage-hang", "outage-stop", "restart-empty", "pubsub-drop", "latency-spike", "smoke")
    if runs
    else None
)
if name:
    folder = runs[name]["folder"]
    series = pd.read_csv(folder / "throughput.csv")
    timeline = pd.read_csv(folder / "timeline.csv")
    arch = "lockless" if "lockless" in set(series["arch"]) else series["arch"].iloc[0]
    mine = series[series["arch"] == arch]
    events = timeline[timeline["arch"] == arch]
    fig, ax = plt.subplots(figsize=(11, 4))
    for op, grp in mine.groupby("op"):
        # Each row covers [second, second + 1): plot it at the middle.
        ax.plot(grp["second"] + 0.5, grp["p99_us"] / 1000, marker=".", label=f"{op} P99")
    starts = events[events["kind"] == "fault_start"]
    ends = events[events["kind"] == "fault_end"]
    for _, start in starts.iterrows():
        later = ends[ends["t_s"] >= start["t_s"]]
        end = later["t_s"].min() if len(later) else start["t_s"] + 0.05
        ax.axvspan(start["t_s"], end, color="tab:red", alpha=0.15)
        ax.annotate(
            f"fault: {start['detail']}",
            (start["t_s"], 1),
            xycoords=("data", "axes fraction"),
            va="top",
            fontsize=8,
        )
    for _, switch in events[events["kind"] == "mode"].iterrows():
        ax.axvline(switch["t_s"], color="grey", linestyle=":", linewidth=1)
        ax.annotate(
            str(switch["detail"]),
            (switch["t_s"], 0.02),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=7,
            color="dimgrey",
        )
    ax.set_yscale("log")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("per-second P99 (ms, log)")
    ax.set_title(f"{name}: {arch} latency over time")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    plt.show()
    switches = events[events["kind"].isin(["fault_start", "fault_end", "mode"])]
    display(switches[["t_s", "kind", "detail", "instance", "reason"]].reset_index(drop=True))

# %% [markdown]
# ## Event propagation delay
#
# Time from a write's commit in Redis to its change being applied in every *other*
# lockless cache (pub/sub, or a log catch-up after a gap). This bounds how stale a
# placement read can be in NORMAL mode. CDF per experiment (log scale), and P50/P99.

# %%
if runs:
    rows = []
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name in runs:
        hist = histogram(name, "lockless", "extra", "propagation")
        if hist is None or not hist.get_total_count():
            continue
        x, y = cdf(hist)
        ax.step(x, y, where="post", label=name)
        rows.append(
            {
                "experiment": name,
                "events": hist.get_total_count(),
                "P50 ms": hist.get_value_at_percentile(50) / 1000,
                "P99 ms": hist.get_value_at_percentile(99) / 1000,
                "max ms": hist.get_max_value() / 1000,
            }
        )
    if rows:
        ax.set_xscale("log")
        ax.set_xlabel("propagation delay (ms, log)")
        ax.set_ylabel("fraction of events")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        plt.show()
        display(pd.DataFrame(rows).set_index("experiment").round(3))
    else:
        plt.close(fig)
        display(Markdown("*Skipped: no lockless propagation histogram in the loaded runs.*"))

# %% [markdown]
# ## Scaling: decision P99 against node count
#
# One point per (experiment, architecture): the run's node count and the P99 of its
# decision, `select` where the run selects and admits apart, else `place` (select and admit).
# Lockless selection reads a local index, so its P99 should stay flat as the cluster
# grows; a full-scan baseline reads the whole pool from Redis per decision, so its P99 grows
# with the node count. A P99 of fewer than 1,000 samples is the maximum of n (column `P99 is`).
# Runs where Redis was down, frozen or slow are left out (an outage is not
# a cluster size); pub/sub kills stay in. With fewer than two node counts loaded this is a
# single column of points.

# %%
def had_faults(folder: Path) -> bool:
    """True if Redis was down, frozen or slow in the run: its latencies are not a cluster size's.

    A pub/sub kill does not count: the server keeps answering, and lockless repairs the gap
    from the log in milliseconds.
    """
    timeline = folder / "timeline.csv"
    if not timeline.is_file():
        return False
    t = pd.read_csv(timeline)
    faults = t[t["kind"] == "fault_start"]["detail"].astype(str)
    return bool((faults != "kill_pubsub").any())


if runs:
    points = []
    faulted = sorted(name for name, run in runs.items() if had_faults(run["folder"]))
    for name, run in runs.items():
        if name in faulted:
            continue
        s = run["summary"]
        for arch, a in s["architectures"].items():
            op = next((o for o in ("select", "place") if a["ops"].get(o, {}).get("count")), None)
            if op is not None:
                n = a["ops"][op]["count"]
                points.append(
                    {
                        "experiment": name,
                        "arch": arch,
                        "nodes": s["nodes"],
                        "op": op,
                        "n": n,
                        "P99 is": "P99" if n >= 1000 else f"max of {n}",
                        "decision P99 ms": a["ops"][op]["p99_us"] / 1000,
                        "valid": a["valid"],
                    }
                )
    if points:
        pts = pd.DataFrame(points).sort_values("nodes")
        fig, ax = plt.subplots(figsize=(7, 4))
        for arch, grp in pts.groupby("arch"):
            ok = grp[grp["valid"]]
            ax.plot(ok["nodes"], ok["decision P99 ms"], marker="o", label=arch, color=ARCH_COLOURS.get(arch))
            bad = grp[~grp["valid"]]
            ax.scatter(
                bad["nodes"],
                bad["decision P99 ms"],
                marker="x",
                color=ARCH_COLOURS.get(arch),
                label=f"{arch} (INVALID)" if len(bad) else None,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("nodes in the cluster (log)")
        ax.set_ylabel("decision (select or place) P99 (ms, log)")
        ax.set_title("decision P99 vs cluster size")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        plt.show()
        if pts["nodes"].nunique() < 2:
            display(
                Markdown(
                    "*Only one node count among the loaded runs: no curve yet "
                    "(add `scale`, `steady-10k`, ...).*"
                )
            )
        if faulted:
            left_out = ", ".join(faulted)
            display(Markdown(f"*Left out, because Redis was down, frozen or slow in them: {left_out}.*"))
        display(pts.set_index(["nodes", "arch"]))
    else:
        display(Markdown("*Skipped: no run recorded `select`.*"))

# %% [markdown]
# ## What one operation costs Redis (the probe)
#
# After its phases every run probes each architecture on one quiet pool: Redis commands
# per operation (from `INFO commandstats`; `client` = commands the client sent, i.e.
# round trips, without the Lua scripts' inner calls) and interleaved single-caller
# latencies next to a raw `PING`. `lockless-sim check` holds these to
# `experiments/budgets.toml`.

# %%
name = any_run() if runs else None
if name and "probe" in runs[name]["summary"]:
    probe = runs[name]["summary"]["probe"]
    rows = []
    for arch, ops in probe["architectures"].items():
        for op, p in ops.items():
            rows.append(
                {
                    "arch": arch,
                    "op": op,
                    "commands/op": p["commands"].get("total"),
                    "client commands/op": p.get("client_commands", {}).get("total"),
                    "n": p.get("count"),
                    "P50 us": p.get("p50_us"),
                    "P95 us": p.get("p95_us"),
                    "Redis CPU us/op": p.get("redis_usec"),
                    "P50 / PING P50": round(p["p50_us"] / probe["ping"]["p50_us"], 3)
                    if p.get("p50_us")
                    else None,
                }
            )
    display(
        Markdown(
            f"`{name}`: {probe['nodes']} nodes; raw PING P50 {probe['ping']['p50_us']} us, "
            f"P99 {probe['ping']['p99_us']} us."
        )
    )
    display(pd.DataFrame(rows).set_index(["op", "arch"]).sort_index())
elif name:
    display(Markdown(f"*Skipped: `{name}` predates the probe (no `probe` in its summary.json).*"))

# %% [markdown]
# ## Baselines: what lockless buys over the designs a team would build instead
#
# One row per architecture of the `baselines` run (else the first comparison loaded):
# placement latency with its n, its ratio to lockless of the same run with a 95% bootstrap
# interval (`-` where either side has too few samples for that percentile), conflicts and
# stale rejections per placement, Redis round trips / commands / CPU per placement (the
# run's quiet probe of `place_job`), the whole phase's Redis command time per placement,
# the age of the data decisions used, and the utilization the phase ran at.

# %%
name = any_run(prefer=("baselines", "smoke")) if runs else None
if name and "decision" in runs[name]["summary"]:
    decision = runs[name]["summary"]["decision"]
    rows = []
    for arch, m in decision.items():
        place = m["place"] or {}
        ratio = m["ratio_to_lockless"] or {}
        rows.append(
            {
                "arch": arch,
                "rate /s": m["arrival_rate_per_s"],
                "placements": m["placements"],
                "place P50 ms": stats.show(place, 50) if place else "-",
                "place P99 ms": stats.show(place, 99) if place else "-",
                "P50 x lockless [95%]": stats.show_ratio(ratio.get("p50")) if m["valid"] else "INVALID",
                "P99 x lockless [95%]": stats.show_ratio(ratio.get("p99")) if m["valid"] else "INVALID",
                "conflicts / pl.": m["conflicts_per_placement"],
                "stale rej. / pl.": m["stale_rejections_per_placement"],
                "round trips / pl.": m["probe_round_trips_per_placement"],
                "Redis cmds / pl.": m["probe_commands_per_placement"],
                "Redis CPU us / pl.": m["probe_redis_usec_per_placement"],
                "phase Redis us / pl.": m["phase_redis_usec_per_placement"],
                "data age P50 ms": m["data_age_p50_ms"],
                "utilization": m["utilization"],
            }
        )
    display(Markdown(f"`{name}` ({runs[name]['summary']['nodes']:,} nodes):"))
    display(pd.DataFrame(rows).set_index("arch"))
elif name:
    display(Markdown(f"*Skipped: `{name}` predates the decision metrics.*"))

# %% [markdown]
# ## Cost against freshness
#
# What each design pays in Redis work for how fresh its decisions are: x is the median age
# of the data a placement used (0 for designs that read Redis on every decision: drawn at
# 1 us on the log axis), y the Redis command time per placement over the whole phase
# (heartbeats are the same for every design, so the differences are each design's: pool
# reads, relists, the select script, events). Lower left is better.

# %%
name = any_run(prefer=("baselines", "smoke")) if runs else None
if name and "decision" in runs[name]["summary"]:
    decision = runs[name]["summary"]["decision"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arch, m in decision.items():
        if m["phase_redis_usec_per_placement"] is None or m["data_age_p50_ms"] is None:
            continue
        x = max(m["data_age_p50_ms"], 0.001)
        y = m["phase_redis_usec_per_placement"]
        ax.scatter([x], [y], s=80, color=ARCH_COLOURS.get(arch), label=arch, alpha=1 if m["valid"] else 0.35)
        ax.annotate(arch, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("data age at decision, P50 (ms, log)")
    ax.set_ylabel("Redis command time per placement, whole phase (us, log)")
    ax.set_title(f"{name}: cost against freshness")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()

# %% [markdown]
# ## Knees: latency against throughput
#
# The `knee` sweep raises the offered placement rate step by step for every architecture
# (same utilization at every step) until the placement P99 passes its bound or arrivals
# fail. Each line is one architecture: P99 solid (hollow where it is the maximum of fewer
# than 1,000 placements), P50 dashed; the star is its knee, the highest rate it sustained.

# %%
sweeps = [n for n in runs if kind(n) == "sweep"]
if not sweeps:
    display(Markdown("*Skipped: no knee sweep (`lockless-sim run experiments/knee.toml`) loaded.*"))
for name in sweeps:
    summary = runs[name]["summary"]
    fig, ax = plt.subplots(figsize=(8.5, 5))
    for arch in dict.fromkeys(s["arch"] for s in summary["steps"]):
        steps = [s for s in summary["steps"] if s["arch"] == arch and s["place"]["count"]]
        if not steps:
            continue
        colour = ARCH_COLOURS.get(arch)
        x = [s["achieved_per_s"] for s in steps]
        ax.plot(x, [s["place"]["p50_us"] / 1000 for s in steps], "--", color=colour, alpha=0.7)
        tail = [
            (s["place"]["max_us"] if "p99" in s["place"]["undersampled"] else s["place"]["p99_us"]) / 1000
            for s in steps
        ]
        ax.plot(x, tail, "-", color=colour, label=arch)
        for xi, yi, s in zip(x, tail, steps, strict=True):
            hollow = "p99" in s["place"]["undersampled"]
            ax.scatter([xi], [yi], s=30, facecolors="none" if hollow else colour, edgecolors=colour)
        k = summary["knees"][arch]
        if k["place"]:
            kp = k["place"]
            y = (kp["max_us"] if "p99" in kp["undersampled"] else kp["p99_us"]) / 1000
            ax.scatter([k["achieved_per_s"]], [y], marker="*", s=240, color=colour, zorder=5)
    ax.axhline(summary["sweep"]["p99_bound_ms"], color="grey", linestyle=":", label="P99 bound")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("achieved placements per second (log)")
    ax.set_ylabel("placement latency, ms (log)")
    ax.set_title(f"{name}: {summary['nodes']:,} nodes at {summary['target_utilization']:.0%} busy slots")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()
    rows = []
    for arch, k in summary["knees"].items():
        p = k["place"] or {}
        rows.append(
            {
                "arch": arch,
                "knee /s": "below the first rate" if k["below_first_rate"] else k["knee_rate_per_s"],
                "achieved /s": k["achieved_per_s"],
                "n": p.get("count", 0),
                "P50 ms": stats.show(p, 50) if p else "-",
                "P99 ms": stats.show(p, 99) if p else "-",
                "stopped at /s": k["stopped_at_rate_per_s"],
                "because": k["stopped_because"],
            }
        )
    display(pd.DataFrame(rows).set_index("arch"))

# %% [markdown]
# ## Conflict rate against scheduler instances
#
# The `contention` grid: 1, 2, 4, 8 instances placing on one pool at the same total rate,
# per policy. A conflict is an admission refused because another decision took the slot
# since this one's data was read: the price of deciding from a view. Least-loaded herds
# every instance onto the same node; power of two choices spreads them. Designs that read
# Redis per decision conflict only in the window between their read and their admission;
# redis-select (one atomic script) never.

# %%
grids = [n for n in runs if kind(n) == "contention"]
if not grids:
    display(Markdown("*Skipped: no contention run (`lockless-sim run experiments/contention.toml`) loaded.*"))
for name in grids:
    summary = runs[name]["summary"]
    steps = summary["steps"]
    policies = list(dict.fromkeys(s["params"]["policy"] for s in steps))
    fig, axes = plt.subplots(1, len(policies), figsize=(6 * len(policies), 4.2), squeeze=False, sharey=True)
    rows = []
    for ax, policy in zip(axes[0], policies, strict=True):
        for arch in dict.fromkeys(s["arch"] for s in steps):
            mine = [s for s in steps if s["arch"] == arch and s["params"]["policy"] == policy]
            xs = [s["params"]["instances"] for s in mine]
            ys = [s["counters"].get("conflicts", 0) / max(1, s["counters"].get("placed", 0)) for s in mine]
            ax.plot(xs, ys, marker="o", color=ARCH_COLOURS.get(arch), label=arch)
            for s, y in zip(mine, ys, strict=True):
                rows.append(
                    {
                        "policy": policy,
                        "arch": arch,
                        "instances": s["params"]["instances"],
                        "placed": s["counters"].get("placed", 0),
                        "conflicts / pl.": round(y, 4),
                        "P50 ms": stats.show(s["place"], 50),
                        "P99 ms": stats.show(s["place"], 99),
                        "valid": "yes" if s["valid"] else "INVALID",
                    }
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("scheduler instances (same total rate)")
        ax.set_ylabel("conflicts per placement")
        ax.set_title(f"{name}: {policy}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()
    display(pd.DataFrame(rows).set_index(["policy", "arch", "instances"]))
