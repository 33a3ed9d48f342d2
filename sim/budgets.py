"""Latency budgets: what a result folder must show, and the check that holds it to them.

``experiments/budgets.toml`` lists budgets; ``lockless-sim check RESULT_DIR`` evaluates
every budget that applies to the run's experiment against its ``summary.json`` and
exits non-zero with a table of what fell short. Budgets are ordered by how well they
survive a noisy, shared machine, and the file should prefer the first kinds:

1. ``count`` - deterministic counts: Redis commands per operation (the run's probe,
   from ``INFO commandstats`` deltas), mode switches and relists for a seeded fault plan,
   consistency counters that must be zero. The same code gives the same count on any
   machine, loaded or not.
2. ``ratio`` - two figures measured in the same run: lockless vs locked, a lockless
   write vs the raw ``PING`` round trip interleaved with it. Load from elsewhere slows
   both sides alike.
3. ``absolute`` - a bound in microseconds, only where no same-run yardstick exists.

Validity comes between them: a phase whose harness lag P99 exceeded its bound is
INVALID, and a budget on it that timing could have moved (``when_invalid = "skip"``, the
default for ratios and absolutes) is neither passed nor failed: the verdict is INVALID,
and the caller reruns once (``lockless-sim check EXPERIMENT.toml`` does). Counts keep
judging (``when_invalid = "check"``): a capacity overrun is never the load's fault.
Figures from the probe stay judged too: it runs after the phases, at one caller's pace.

A budget (one ``[[budget]]`` table)::

    name = "L1 read sends no command"       # shown in the table
    kind = "count"                          # count | ratio | absolute
    experiments = ["smoke"]                 # experiment names; ["*"] (default) = every one
    archs = ["lockless"]                    # ["*"] (default) = every architecture in the run
    metric = "probe.get.commands.total"     # [scope:]dotted.path, see below
    over = "run:probe.ping.p50_us"          # optional divisor (required for kind = "ratio")
    equals = 0                              # exactly one of equals | at_most | at_least
    when_invalid = "check"                  # check | skip (default: check for count, else skip)
    why = "a placement read never waits on the network"

A path is read from the architecture's entry in ``summary.json`` (``architectures.<arch>``,
with the run's probe of that architecture under ``probe``), or, with a scope prefix,
from another architecture's (``locked:ops.select.p50_us``) or from the summary root
(``run:probe.ping.p50_us``). A missing key under ``counters``, ``commands``, ``calls``,
``client_commands`` or ``errors`` reads as 0 (only non-zero counts are written); a table
of numbers reads as its sum (``errors`` = every error); ``true``/``false`` read as 1/0.
Anything else missing is a failure that names the path, except that a budget reading the
probe does not apply to a run without one (sweeps and contention grids probe nothing).
A percentile that too few samples
back (``undersampled`` beside it: a P99 from under 1,000 samples is the maximum of n,
``sim/stats.py``) is never judged: reading it fails, naming the sample count.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockless import ConfigError

KINDS = ("count", "ratio", "absolute")
BOUNDS = ("equals", "at_most", "at_least")
WHEN_INVALID = ("check", "skip")
FIELDS = ("name", "kind", "experiments", "archs", "metric", "over", "when_invalid", "why", *BOUNDS)
#: Parents whose missing keys read as 0: they hold only the counts that are non-zero.
ZERO_DEFAULT_PARENTS = frozenset({"counters", "commands", "calls", "client_commands", "errors"})
#: Exit codes of ``lockless-sim check``.
EXIT_PASS, EXIT_FAIL, EXIT_INVALID = 0, 1, 3
#: Relative slack of ``equals`` (float noise only: 200 / 200 must equal 1).
_EQ_TOLERANCE = 1e-9


class BudgetError(ConfigError):
    """A budgets file is malformed: names the field (``budget[3].kind``) and what is allowed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    """One budget; see the module docstring for the fields."""

    index: int
    name: str
    kind: str
    experiments: tuple[str, ...]
    archs: tuple[str, ...]
    metric: str
    over: str | None
    bound: str
    value: float
    when_invalid: str
    why: str

    def applies_to(self, experiment: str) -> bool:
        """True if this budget is meant for ``experiment``."""
        return "*" in self.experiments or experiment in self.experiments

    def holds(self, measured: float) -> bool:
        """True if ``measured`` is within the bound."""
        if self.bound == "at_most":
            return measured <= self.value
        if self.bound == "at_least":
            return measured >= self.value
        return math.isclose(measured, self.value, rel_tol=_EQ_TOLERANCE, abs_tol=_EQ_TOLERANCE)

    def describe_bound(self) -> str:
        """``== 0``, ``<= 3``, ``>= 10`` (with ``x`` for a ratio)."""
        sym = {"equals": "==", "at_most": "<=", "at_least": ">="}[self.bound]
        return f"{sym} {_num(self.value)}{'x' if self.over else ''}"


@dataclass(frozen=True, slots=True)
class Row:
    """One budget evaluated on one architecture of one run."""

    run: str
    budget: Budget
    arch: str
    status: str
    """``ok`` | ``FAIL`` | ``INVALID`` (not judged: the phase was overloaded)."""
    measured: float | None
    detail: str = ""


@dataclass(slots=True)
class Report:
    """Every row of one check, and the verdict they add up to."""

    rows: list[Row] = field(default_factory=list)
    invalid_phases: dict[str, list[str]] = field(default_factory=dict)
    """Run name -> its INVALID architectures with the reason."""
    unchecked: list[str] = field(default_factory=list)
    """Runs that no budget applies to (a check that checks nothing is an error)."""

    @property
    def verdict(self) -> str:
        """``FAIL`` if any judged budget fell short, else ``INVALID`` if any was not judged, else ``PASS``."""
        if self.unchecked or any(r.status == "FAIL" for r in self.rows):
            return "FAIL"
        if any(r.status == "INVALID" for r in self.rows):
            return "INVALID"
        return "PASS"

    @property
    def exit_code(self) -> int:
        """:data:`EXIT_PASS`, :data:`EXIT_FAIL` or :data:`EXIT_INVALID`."""
        return {"PASS": EXIT_PASS, "FAIL": EXIT_FAIL, "INVALID": EXIT_INVALID}[self.verdict]


# ------------------------------------------------------------------- parsing
def load_budgets(path: Path) -> list[Budget]:
    """Read and validate a budgets file; :class:`BudgetError` names the bad field and the allowed values."""
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BudgetError("(file)", str(path), f"valid TOML ({exc})") from None
    return parse_budgets(data)


def parse_budgets(data: Mapping[str, Any]) -> list[Budget]:
    """Validate already-parsed budgets data (a ``budget`` array of tables)."""
    unknown = sorted(set(data) - {"budget"})
    if unknown:
        raise BudgetError(unknown[0], data[unknown[0]], "only [[budget]] tables at the top level")
    raw = data.get("budget")
    if not isinstance(raw, list) or not raw:
        raise BudgetError("budget", raw, "one or more [[budget]] tables")
    return [_parse_one(i, entry) for i, entry in enumerate(raw)]


def _parse_one(i: int, entry: Any) -> Budget:
    where = f"budget[{i}]"
    if not isinstance(entry, Mapping):
        raise BudgetError(where, entry, "a table")
    for key in entry:
        if key not in FIELDS:
            raise BudgetError(f"{where}.{key}", entry[key], " | ".join(FIELDS))
    name = entry.get("name", f"budget {i}")
    if not isinstance(name, str) or not name:
        raise BudgetError(f"{where}.name", name, "a non-empty string")
    where = f"budget[{i}] ({name})"
    kind = entry.get("kind")
    if kind not in KINDS:
        raise BudgetError(f"{where}.kind", kind, " | ".join(KINDS))
    lists = {key: _names(f"{where}.{key}", entry.get(key, ["*"])) for key in ("experiments", "archs")}
    metric = entry.get("metric")
    _path(f"{where}.metric", metric)
    over = entry.get("over")
    if over is not None:
        _path(f"{where}.over", over)
    if kind == "ratio" and over is None:
        raise BudgetError(f"{where}.over", None, "a [scope:]path to divide by (kind = 'ratio' needs one)")
    bounds = [b for b in BOUNDS if b in entry]
    if len(bounds) != 1:
        raise BudgetError(
            f"{where}.{'|'.join(BOUNDS)}", bounds or None, "exactly one of " + ", ".join(BOUNDS)
        )
    value = entry[bounds[0]]
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise BudgetError(f"{where}.{bounds[0]}", value, "a finite number")
    when_invalid = entry.get("when_invalid", "check" if kind == "count" else "skip")
    if when_invalid not in WHEN_INVALID:
        raise BudgetError(f"{where}.when_invalid", when_invalid, " | ".join(WHEN_INVALID))
    why = entry.get("why")
    if not isinstance(why, str) or not why.strip():
        raise BudgetError(f"{where}.why", why, "a non-empty string saying why the budget holds")
    return Budget(
        index=i,
        name=name,
        kind=kind,
        experiments=lists["experiments"],
        archs=lists["archs"],
        metric=metric,
        over=over,
        bound=bounds[0],
        value=float(value),
        when_invalid=when_invalid,
        why=why.strip(),
    )


def _names(where: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise BudgetError(where, value, 'a non-empty list of names, or ["*"] for all')
    return tuple(value)


def _path(where: str, value: Any) -> None:
    if not isinstance(value, str) or not value or value.endswith((".", ":")) or value.count(":") > 1:
        raise BudgetError(
            where,
            value,
            "a path such as 'counters.mode_switches', 'locked:ops.select.p50_us' or 'run:probe.ping.p50_us'",
        )


# ----------------------------------------------------------------- resolving
class MetricMissing(LookupError):
    """A budget's path does not exist in the summary."""


def arch_view(summary: Mapping[str, Any], arch: str) -> dict[str, Any]:
    """The architecture's summary entry, with the run's probe of it under ``probe``."""
    entry = dict(summary["architectures"][arch])
    probe = summary.get("probe", {}).get("architectures", {}).get(arch)
    if probe is not None:
        entry["probe"] = probe
    return entry


def resolve(summary: Mapping[str, Any], arch: str, path: str) -> tuple[float, str]:
    """The number at ``[scope:]path`` for ``arch``; returns (value, scope it was read from)."""
    scope, _, rest = path.rpartition(":")
    scope = scope or arch
    if scope == "run":
        node: Any = summary
    elif scope in summary.get("architectures", {}):
        node = arch_view(summary, scope)
    else:
        raise MetricMissing(f"{path}: architecture {scope!r} is not in this run")
    keys = rest.split(".")
    # Keys may contain dots themselves ("p99.9_us"): match the longest key first.
    i = 0
    parent = ""
    while i < len(keys):
        if not isinstance(node, Mapping):
            raise MetricMissing(f"{path}: {'.'.join(keys[:i])} is not a table")
        for j in range(len(keys), i, -1):
            key = ".".join(keys[i:j])
            if key in node:
                thin = node.get("undersampled", ())
                if key.endswith("_us") and key.removesuffix("_us") in thin:
                    raise MetricMissing(
                        f"{path}: {key.removesuffix('_us').upper()} of {node.get('count', 0):,} samples is "
                        "the maximum of n, not a percentile (too few samples): no budget judges it"
                    )
                parent, node, i = key, node[key], j
                break
        else:
            if parent in ZERO_DEFAULT_PARENTS:  # the rest is one key, possibly dotted
                return 0.0, scope
            raise MetricMissing(f"{path}: no {'.'.join(keys[: i + 1])!r} in summary.json")
    if isinstance(node, bool):
        return float(node), scope
    if isinstance(node, int | float):
        return float(node), scope
    if isinstance(node, Mapping) and all(isinstance(v, int | float) for v in node.values()):
        return float(sum(node.values())), scope
    raise MetricMissing(f"{path}: not a number ({type(node).__name__})")


# ---------------------------------------------------------------- evaluating
def evaluate(summary: Mapping[str, Any], budgets: Iterable[Budget], *, run: str = "") -> list[Row]:
    """Every budget that applies to this summary's experiment, on each architecture it names."""
    experiment = summary.get("experiment", "")
    archs: Mapping[str, Any] = summary.get("architectures", {})
    rows: list[Row] = []
    for budget in budgets:
        if not budget.applies_to(experiment):
            continue
        if "probe" not in summary and (
            _from_probe(budget.metric) or (budget.over is not None and _from_probe(budget.over))
        ):
            continue  # a run without a probe (sweep, contention) has nothing for this budget to read
        targets = list(archs) if "*" in budget.archs else [a for a in budget.archs if a in archs]
        for arch in targets:
            rows.append(_row(summary, budget, arch, run or experiment))
    return rows


def _row(summary: Mapping[str, Any], budget: Budget, arch: str, run: str) -> Row:
    # The phases a figure comes from; the probe runs after them on a quiet server, at one
    # caller's pace, so an overloaded phase does not make its figures unjudgeable.
    scopes: set[str] = set()
    try:
        value, scope = resolve(summary, arch, budget.metric)
        if not _from_probe(budget.metric):
            scopes.add(scope)
        if budget.over is not None:
            divisor, over_scope = resolve(summary, arch, budget.over)
            if not _from_probe(budget.over):
                scopes.add(over_scope)
            if divisor == 0:
                return Row(run, budget, arch, "FAIL", None, f"{budget.over} is 0: no ratio")
            value /= divisor
    except MetricMissing as exc:
        return Row(run, budget, arch, "FAIL", None, f"missing: {exc}")
    archs = summary["architectures"]
    invalid = sorted(s for s in scopes if s in archs and not archs[s].get("valid", True))
    if invalid and budget.when_invalid == "skip":
        return Row(run, budget, arch, "INVALID", value, f"not judged: {', '.join(invalid)} INVALID")
    return Row(run, budget, arch, "ok" if budget.holds(value) else "FAIL", value)


def _from_probe(path: str) -> bool:
    return path.rpartition(":")[2].startswith("probe.")


def find_runs(path: Path) -> list[Path]:
    """Result folders under ``path``: itself if it holds summary.json, else the newest run per experiment.

    Reads both layouts: ``results/reference/<experiment>/summary.json`` and
    ``results/<experiment>/<run-id>/summary.json`` (the newest run-id, by name, per experiment).
    """
    if (path / "summary.json").is_file():
        return [path]
    runs: list[Path] = []
    for child in sorted(p for p in path.iterdir() if p.is_dir()):
        if (child / "summary.json").is_file():
            runs.append(child)
            continue
        nested = sorted(p for p in child.iterdir() if p.is_dir() and (p / "summary.json").is_file())
        if nested:
            runs.append(nested[-1])
    return runs


def check_runs(paths: Iterable[Path], budgets: list[Budget]) -> Report:
    """Evaluate ``budgets`` on every result folder in ``paths``."""
    report = Report()
    for folder in paths:
        summary = json.loads((folder / "summary.json").read_text())
        name = f"{summary.get('experiment', '?')}/{folder.name}"
        invalid = [
            f"{arch}: {a.get('invalid_reason') or 'INVALID'}"
            for arch, a in summary.get("architectures", {}).items()
            if not a.get("valid", True)
        ]
        if invalid:
            report.invalid_phases[name] = invalid
        rows = evaluate(summary, budgets, run=name)
        if not rows:
            report.unchecked.append(name)
        report.rows.extend(rows)
    return report


def _num(x: float) -> str:
    if x == int(x) and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def render(report: Report, *, show_all: bool = False) -> Any:
    """A rich Table of the failing and unjudged rows (every row with ``show_all``)."""
    from rich.table import Table

    order = {"FAIL": 0, "INVALID": 1, "ok": 2}
    rows = [r for r in report.rows if show_all or r.status != "ok"]
    rows.sort(key=lambda r: (order[r.status], r.run, KINDS.index(r.budget.kind), r.budget.index, r.arch))
    runs = sorted({r.run for r in report.rows})
    title = f"latency budgets: {report.verdict}" + (f" ({runs[0]})" if len(runs) == 1 else "")
    table = Table(title=title, title_justify="left")
    columns = ["status", "kind", *(["run"] if len(runs) > 1 else []), "arch", "budget", "measured", "bound"]
    for col in [*columns, "why / detail"]:
        table.add_column(col, justify="right" if col in ("measured", "bound") else "left", overflow="fold")
    style = {"FAIL": "bold red", "INVALID": "yellow", "ok": "green"}
    for r in rows:
        metric = r.budget.metric + (f" / {r.budget.over}" if r.budget.over else "")
        cells = [f"[{style[r.status]}]{r.status}[/]", r.budget.kind]
        if len(runs) > 1:
            cells.append(r.run)
        cells += [
            r.arch,
            f"{r.budget.name}\n[dim]{metric}[/]",
            "-" if r.measured is None else _num(r.measured) + ("x" if r.budget.over else ""),
            r.budget.describe_bound(),
            f"{r.detail}\n[dim]{r.budget.why}[/]" if r.detail else r.budget.why,
        ]
        table.add_row(*cells)
    return table
