"""PNG plots of a run (matplotlib, Agg backend: no display needed, safe in CI and workers).

Plots only read what the recorder produced; nothing here measures anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from sim.recorder import Recorder

_MARKS = {"fault_start": ("red", "-"), "fault_end": ("green", "-"), "mode": ("purple", ":")}
_OPS_OVER_TIME = ("select", "place", "get", "heartbeat", "job_start")


def percentiles(path: Path, archs: dict[str, Any]) -> None:
    """Grouped bars: P50 and P99 latency per operation, one colour per architecture (log scale)."""
    ops = sorted({op for a in archs.values() for op in a["ops"]})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    width = 0.8 / max(1, len(archs))
    for ax, pct in zip(axes, ("p50_us", "p99_us"), strict=True):
        for i, (arch, data) in enumerate(archs.items()):
            values = [data["ops"].get(op, {}).get(pct, 0) / 1000 for op in ops]
            label = arch if data["valid"] else f"{arch} (INVALID)"
            ax.bar(
                [x + i * width for x in range(len(ops))],
                values,
                width,
                label=label,
                hatch=None if data["valid"] else "//",
            )
        ax.set_xticks([x + width * (len(archs) - 1) / 2 for x in range(len(ops))], ops, rotation=30)
        ax.set_yscale("log")
        ax.set_title(f"{pct[:-3].upper()} latency from intended start")
        ax.set_ylabel("ms")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def over_time(path: Path, recorders: dict[str, Recorder]) -> None:
    """Per architecture: ~P99 per second of the main operations, with fault and mode-switch markers."""
    fig, axes = plt.subplots(len(recorders), 1, figsize=(12, 3.2 * len(recorders)), squeeze=False)
    for ax, (arch, rec) in zip(axes[:, 0], recorders.items(), strict=True):
        series = rec.series()
        for op in _OPS_OVER_TIME:
            rows = [r for r in series if r["op"] == op and r["ok"]]
            if rows:
                ax.plot([r["second"] for r in rows], [r["p99_us"] / 1000 for r in rows], label=f"{op} ~P99")
        for event in rec.timeline:
            style = _MARKS.get(event["kind"])
            if style:
                ax.axvline(event["t"], color=style[0], linestyle=style[1], alpha=0.6)
                if event["kind"] != "mode":
                    ax.annotate(
                        event["detail"],
                        (event["t"], 1),
                        xycoords=("data", "axes fraction"),
                        fontsize=7,
                        rotation=90,
                        va="top",
                    )
        ax.set_yscale("log")
        ax.set_title(f"{arch}: latency over time (red/green: fault start/end, purple: mode switch)")
        ax.set_xlabel("simulated s")
        ax.set_ylabel("ms")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


_COLOURS = {
    "lockless": "tab:green",
    "locked": "tab:red",
    "direct": "tab:blue",
    "ttl-cache": "tab:orange",
    "redis-select": "tab:purple",
}


def knee(path: Path, summary: dict[str, Any]) -> None:
    """Placement P50 (dashed) and P99 (solid) against achieved throughput, per architecture; knees starred.

    A P99 from fewer than 1,000 placements is the maximum of n: drawn hollow.
    """
    fig, ax = plt.subplots(figsize=(8.5, 5))
    for arch in dict.fromkeys(s["arch"] for s in summary["steps"]):
        steps = [s for s in summary["steps"] if s["arch"] == arch and s["place"]["count"]]
        if not steps:
            continue
        colour = _COLOURS.get(arch)
        x = [s["achieved_per_s"] for s in steps]
        ax.plot(x, [s["place"]["p50_us"] / 1000 for s in steps], "--", color=colour, alpha=0.7)
        p99 = [s["place"]["p99_us"] / 1000 for s in steps]
        ax.plot(x, p99, "-", color=colour, label=f"{arch} (P99 solid, P50 dashed)")
        thin = [i for i, s in enumerate(steps) if "p99" in s["place"]["undersampled"]]
        ax.scatter([x[i] for i in thin], [steps[i]["place"]["max_us"] / 1000 for i in thin],
                   facecolors="none", edgecolors=colour, s=36)
        ok = [i for i, s in enumerate(steps) if "p99" not in s["place"]["undersampled"]]
        ax.scatter([x[i] for i in ok], [p99[i] for i in ok], color=colour, s=16)
        k = summary.get("knees", {}).get(arch, {})
        if k.get("knee_rate_per_s") is not None and k.get("place"):
            kp = k["place"]
            tail = kp["p99_us"] if "p99" not in kp["undersampled"] else kp["max_us"]
            ax.scatter([k["achieved_per_s"]], [tail / 1000], marker="*", s=220, color=colour, zorder=5)
    bound = summary.get("sweep", {}).get("p99_bound_ms")
    if bound:
        ax.axhline(bound, color="grey", linestyle=":", label=f"P99 bound {bound:g} ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("achieved placements per second (log)")
    ax.set_ylabel("placement latency from intended start, ms (log)")
    ax.set_title(f"{summary['experiment']}: latency against throughput ({summary['nodes']:,} nodes); "
                 "star = knee, hollow = max of n")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def contention(conflicts_path: Path, latency_path: Path, summary: dict[str, Any]) -> None:
    """Conflicts per placement, and placement P50/P99, against scheduler instances; one panel per policy."""
    steps = summary["steps"]
    policies = list(dict.fromkeys(s["params"]["policy"] for s in steps))
    archs = list(dict.fromkeys(s["arch"] for s in steps))
    fig, axes = plt.subplots(1, len(policies), figsize=(6 * len(policies), 4.2), squeeze=False, sharey=True)
    fig2, axes2 = plt.subplots(1, len(policies), figsize=(6 * len(policies), 4.2), squeeze=False, sharey=True)
    for ax, ax2, policy in zip(axes[0], axes2[0], policies, strict=True):
        for arch in archs:
            mine = [s for s in steps if s["arch"] == arch and s["params"]["policy"] == policy]
            xs = [s["params"]["instances"] for s in mine]
            rate = [s["counters"].get("conflicts", 0) / max(1, s["counters"].get("placed", 0)) for s in mine]
            colour = _COLOURS.get(arch)
            ax.plot(xs, rate, marker="o", color=colour, label=arch)
            ax2.plot(xs, [s["place"]["p50_us"] / 1000 for s in mine], "--", marker=".", color=colour)
            ax2.plot(xs, [s["place"]["p99_us"] / 1000 for s in mine], "-", marker="o", color=colour,
                     label=f"{arch} (P99 solid, P50 dashed)")
        for a, what in ((ax, "conflicts per placement"), (ax2, "placement latency, ms (log)")):
            a.set_xscale("log", base=2)
            a.set_xlabel("scheduler instances (same total rate)")
            a.set_ylabel(what)
            a.set_title(f"{summary['experiment']}: {policy}")
            a.grid(True, which="both", alpha=0.3)
            a.legend(fontsize=8)
        ax2.set_yscale("log")
    for f, p in ((fig, conflicts_path), (fig2, latency_path)):
        f.tight_layout()
        f.savefig(p, dpi=100)
        plt.close(f)
