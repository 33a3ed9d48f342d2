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
# greyed and marked, never as a latency result.

# %%
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from hdrh.histogram import HdrHistogram
from IPython.display import Markdown, display

from sim.budgets import find_runs

# %% tags=["parameters"]
# Parameters (papermill-style): a results root or one run folder; None = $LOCKLESS_RESULTS,
# else results/reference/ in the repository.
RESULTS = None

# %%
ARCH_COLOURS = {"lockless": "tab:green", "locked": "tab:red", "direct": "tab:blue"}
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


def any_run(prefer=("locked-vs-lockless", "smoke"), min_archs=1):
    """A preferred experiment, else any loaded one with at least ``min_archs`` architectures."""
    for name in prefer:
        if name in runs and len(runs[name]["summary"]["architectures"]) >= min_archs:
            return name
    for name, run in runs.items():
        if len(run["summary"]["architectures"]) >= min_archs:
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
if runs:
    frames = []
    for name, run in runs.items():
        df = pd.read_csv(run["folder"] / "percentiles.csv")
        df.insert(0, "experiment", name)
        frames.append(df)
    table = pd.concat(frames, ignore_index=True)
    for col in ("p50_us", "p99_us", "p99.9_us"):
        table[col.replace("_us", " ms")] = (table[col] / 1000).round(3)
    table["valid"] = table["valid"].map({True: "yes", False: "INVALID"}).fillna(table["valid"])
    shown = table.set_index(["experiment", "op", "arch"])[["count", "p50 ms", "p99 ms", "p99.9 ms", "valid"]]
    display(shown.sort_index())

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
# ## Scaling: select P99 against node count
#
# One point per (experiment, architecture): the run's node count and its `select` P99.
# Lockless selection reads a local index, so its P99 should stay flat as the cluster
# grows; a baseline reads the whole pool from Redis per selection, so its P99 grows with
# the node count. Runs where Redis was down, frozen or slow are left out (an outage is not
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
            if "select" in a["ops"] and a["ops"]["select"]["count"]:
                points.append(
                    {
                        "experiment": name,
                        "arch": arch,
                        "nodes": s["nodes"],
                        "select P99 ms": a["ops"]["select"]["p99_us"] / 1000,
                        "valid": a["valid"],
                    }
                )
    if points:
        pts = pd.DataFrame(points).sort_values("nodes")
        fig, ax = plt.subplots(figsize=(7, 4))
        for arch, grp in pts.groupby("arch"):
            ok = grp[grp["valid"]]
            ax.plot(ok["nodes"], ok["select P99 ms"], marker="o", label=arch, color=ARCH_COLOURS.get(arch))
            bad = grp[~grp["valid"]]
            ax.scatter(
                bad["nodes"],
                bad["select P99 ms"],
                marker="x",
                color=ARCH_COLOURS.get(arch),
                label=f"{arch} (INVALID)" if len(bad) else None,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("nodes in the cluster (log)")
        ax.set_ylabel("select P99 (ms, log)")
        ax.set_title("select P99 vs cluster size")
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
                    "P50 us": p.get("p50_us"),
                    "P90 us": p.get("p90_us"),
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
