"""Command line: ``lockless-sim run experiments/<name>.toml``, ``compare DIR...`` and ``check TARGET``.

``run`` replays an experiment against the embedded ``redis-server`` (or ``--redis-url``)
and writes ``<out>/<name>/<utc>-<git8>-<cfghash8>/``; progress (elapsed, operations sent,
harness lag) is shown while it runs. ``compare`` reads the ``summary.json`` of several run
folders and prints operations x architectures with P50/P99 and ratios to lockless.
``check`` holds result folders to ``experiments/budgets.toml`` (``sim/budgets.py``); given an
experiment file it runs it first, and once more if the run is INVALID.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lockless import ConfigError, LocklessError

console = Console(stderr=True)


@click.group()
def cli() -> None:
    """SimPy harness for the lockless node registry (see experiments/README.md)."""


@cli.command()
@click.argument("experiment", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--redis-url", default=None, help="Use this Redis instead of starting one (server faults refused)."
)
@click.option(
    "--out",
    "out",
    default=Path("results"),
    type=click.Path(file_okay=False, path_type=Path),
    show_default=True,
    help="Results root; the run goes to <out>/<name>/<run-id>/.",
)
@click.option("--duration", type=float, default=None, help="Override experiment.duration_s (seconds).")
@click.option("--quiet", is_flag=True, help="No progress display.")
def run(experiment: Path, redis_url: str | None, out: Path, duration: float | None, quiet: bool) -> None:
    """Run EXPERIMENT (a TOML file) and write its results folder."""
    folder = _run_experiment(experiment, redis_url=redis_url, out=out, duration=duration, quiet=quiet)
    summary = json.loads((folder / "summary.json").read_text())
    if summary.get("kind", "comparison") == "comparison":
        Console(width=None if sys.stdout.isatty() else 200).print(_table([summary], [folder.name]))
    else:
        Console().print((folder / "report.md").read_text())
    click.echo(str(folder))


def _run_experiment(
    experiment: Path, *, redis_url: str | None, out: Path, duration: float | None, quiet: bool
) -> Path:
    """Run one experiment file with a progress display; returns the result folder written."""
    from sim.config import load_toml
    from sim.report import write_run
    from sim.runner import run_async

    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_toml(experiment)
        if duration is not None:
            section = dataclasses.replace(
                config.experiment, duration_s=duration, warmup_s=min(config.experiment.warmup_s, duration / 4)
            )
            config = dataclasses.replace(config, experiment=section)
    except ConfigError as exc:
        raise click.ClickException(f"{experiment}: {exc}") from None
    if config.experiment.kind != "comparison":
        return _run_many(config, redis_url=redis_url, out=out, quiet=quiet)
    archs = config.experiment.architectures
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    ) as bar:
        tasks = {a: bar.add_task(a, total=config.experiment.duration_s, status="waiting") for a in archs}

        def progress(arch: str, elapsed: float, total: float, sent: int, lag_ms: float) -> None:
            bar.update(
                tasks[arch],
                completed=min(elapsed, total),
                status=f"{elapsed:6.1f}/{total:g} s  ops {sent:>9,}  lag P99 {lag_ms:7.2f} ms",
            )

        try:
            outcome = asyncio.run(run_async(config, redis_url=redis_url, progress=progress))
        except (ConfigError, LocklessError) as exc:
            raise click.ClickException(str(exc)) from None
    return write_run(outcome, out)


def _run_many(config: Any, *, redis_url: str | None, out: Path, quiet: bool) -> Path:
    """A sweep or contention experiment: many phases, one progress line per phase."""
    from sim.sweep import plan, run_many
    from sim.sweep_report import write_many

    total = len(plan(config))
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} phases  {task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    ) as bar:
        task = bar.add_task(config.experiment.name, total=total, status="starting")

        def progress(arch: str, label: str, done: int, planned: int, status: str) -> None:
            bar.update(task, completed=done, status=f"{arch} {label}: {status}")

        try:
            outcome = asyncio.run(run_many(config, redis_url=redis_url, progress=progress))
        except (ConfigError, LocklessError) as exc:
            raise click.ClickException(str(exc)) from None
        bar.update(task, completed=total)
    return write_many(outcome, out)


@cli.command()
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--budgets",
    "budgets_file",
    default=Path("experiments/budgets.toml"),
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    show_default=True,
    help="The budgets file.",
)
@click.option(
    "--rerun-invalid/--no-rerun-invalid",
    default=True,
    show_default=True,
    help="TARGET is an experiment: run it again once if the first run is INVALID (overloaded harness).",
)
@click.option("--all", "show_all", is_flag=True, help="List every budget, not only what fell short.")
@click.option(
    "--out",
    default=Path("results"),
    type=click.Path(file_okay=False, path_type=Path),
    show_default=True,
    help="TARGET is an experiment: results root of its run(s).",
)
@click.option("--redis-url", default=None, help="TARGET is an experiment: use this Redis.")
@click.option("--quiet", is_flag=True, help="No progress display while running an experiment.")
def check(
    target: Path,
    budgets_file: Path,
    rerun_invalid: bool,
    show_all: bool,
    out: Path,
    redis_url: str | None,
    quiet: bool,
) -> None:
    """Check result folder(s) TARGET against latency budgets; or run experiment TARGET (.toml), then check.

    TARGET may be one run folder (holding summary.json), a folder of runs such as
    results/reference/ (every experiment in it, the newest run of each), or an experiment
    file: that is run into --out and checked, and run once more if INVALID.

    Exit status: 0 every budget held; 1 a budget fell short (or none applied);
    3 INVALID: the harness was overloaded, so timing budgets were not judged;
    2 bad usage or a malformed budgets file.
    """
    from sim.budgets import BudgetError, check_runs, find_runs, load_budgets, render

    try:
        budgets = load_budgets(budgets_file)
    except BudgetError as exc:
        raise _Exit(f"{budgets_file}: {exc}", 2) from None
    attempts = 1 + int(rerun_invalid) if target.suffix == ".toml" and target.is_file() else 1
    for attempt in range(attempts):
        if target.suffix == ".toml" and target.is_file():
            runs = [_run_experiment(target, redis_url=redis_url, out=out, duration=None, quiet=quiet)]
            click.echo(f"run {attempt + 1}: {runs[0]}")
        else:
            runs = find_runs(target) if target.is_dir() else []
            if not runs:
                raise _Exit(f"{target}: no summary.json in it or in its subfolders (not a result folder)", 2)
        report = check_runs(runs, budgets)
        # Wide enough for the table even when CI pipes the output (rich assumes 80 columns then).
        out_console = Console(width=None if sys.stdout.isatty() else 160)
        for name, why in report.invalid_phases.items():
            out_console.print(f"[yellow]INVALID[/] {name}: " + "; ".join(why))
        for name in report.unchecked:
            out_console.print(f"[red]no budget in {budgets_file} applies to {name}[/]")
        if report.rows and (show_all or report.verdict != "PASS"):
            out_console.print(render(report, show_all=show_all))
        counts = {s: sum(1 for r in report.rows if r.status == s) for s in ("ok", "FAIL", "INVALID")}
        out_console.print(
            f"{report.verdict}: {len(report.rows)} budget checks on {len(runs)} run(s): "
            f"{counts['ok']} ok, {counts['FAIL']} failed, {counts['INVALID']} not judged (INVALID)"
        )
        if report.verdict != "INVALID" or attempt + 1 == attempts:
            sys.exit(report.exit_code)
        out_console.print("[yellow]INVALID run: running it once more[/]")


class _Exit(click.ClickException):
    """A ClickException with its own exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code


@cli.command()
@click.argument(
    "dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
def compare(dirs: tuple[Path, ...]) -> None:
    """Print operations x architectures (P50/P99, ratios to lockless) for run folders DIRS."""
    summaries = []
    for d in dirs:
        path = d / "summary.json"
        if not path.exists():
            raise click.ClickException(f"{d}: no summary.json (is this a run folder?)")
        summaries.append(json.loads(path.read_text()))
    # Wide enough for every column when piped (rich assumes 80 columns then and would cut names).
    Console(width=None if sys.stdout.isatty() else 200).print(_table(summaries, [d.name for d in dirs]))


def _fmt(us: float) -> str:
    return f"{us / 1000:.3f}" if us < 10_000 else f"{us / 1000:,.1f}"


def _table(summaries: list[dict[str, Any]], names: list[str]) -> Table:
    from sim import stats

    table = Table(
        title="latency from intended start, ms ('max of n': too few samples for the percentile); "
        "x = arch / lockless, same run [95% interval]"
    )
    for col in ("run", "op", "arch", "n", "P50", "P95", "P99", "P50 x", "P99 x", "valid"):
        table.add_column(col, justify="right" if col not in ("run", "op", "arch", "valid") else "left")
    for summary, name in zip(summaries, names, strict=True):
        archs = summary["architectures"]
        ops = [
            op
            for op in ("place", "select", "get", "heartbeat", "register", "remove", "job_start", "job_finish")
            if any(op in a["ops"] for a in archs.values())
        ]
        for op in ops:
            for arch, a in archs.items():
                s = a["ops"].get(op)
                if s is None:
                    continue
                r = summary.get("ratios_vs_lockless", {}).get(arch, {}).get(op, {})
                if not (a["valid"] and archs.get("lockless", {}).get("valid", False)):
                    r = {}  # a ratio with an invalid side is not a result
                valid = "yes" if a["valid"] else "INVALID"
                cells = (
                    [stats.show(s, q, _fmt) for q in (50, 95, 99)] if a["valid"] else ["INVALID"] * 3
                )
                table.add_row(
                    f"{summary['experiment']}/{name}",
                    op,
                    arch,
                    f"{s['count']:,}",
                    *cells,
                    stats.show_ratio(r.get("p50")) if isinstance(r.get("p50"), dict) else "",
                    stats.show_ratio(r.get("p99")) if isinstance(r.get("p99"), dict) else "",
                    valid,
                )
        table.add_section()
    return table


def main() -> None:
    """Console-script entry point (``lockless-sim``)."""
    cli(prog_name="lockless-sim")


if __name__ == "__main__":
    sys.exit(main())
