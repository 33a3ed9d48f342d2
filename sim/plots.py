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
