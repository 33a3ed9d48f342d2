"""The knee sweep and the contention grid: config errors, the knee rule, and tiny real runs.

The end-to-end runs use a real redis-server and the real dispatcher, shrunk to a few
seconds (in-process instances, 100 nodes), and check the files a user reads.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from lockless import ConfigError
from sim.budgets import MetricMissing, resolve
from sim.config import from_mapping
from sim.redis_server import RedisServer
from sim.sweep import Step, judge, knees, run_many
from sim.sweep_report import write_many


def _error(data: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        from_mapping(data)
    return info.value


def test_kind_and_its_table_go_together() -> None:
    assert _error({"experiment": {"name": "x", "kind": "knee"}}).allowed == "comparison | sweep | contention"
    err = _error({"experiment": {"name": "x", "kind": "sweep"}})
    assert err.field == "sweep" and "exactly when experiment.kind = 'sweep'" in err.allowed
    err = _error({"experiment": {"name": "x"}, "contention": {}})
    assert err.field == "contention"


def test_sweep_and_contention_fields_are_checked() -> None:
    base = {"experiment": {"name": "x", "kind": "sweep"}}
    assert _error({**base, "sweep": {"rates_per_s": [4.0, 2.0]}}).field == "sweep.rates_per_s"
    assert _error({**base, "sweep": {"rate": [1.0]}}).field == "sweep.rate"
    cont = {"experiment": {"name": "x", "kind": "contention"}}
    err = _error({**cont, "contention": {"policies": ["random"]}})
    assert err.field == "contention.policies" and err.allowed == "least_loaded | power_of_two"
    assert _error({**cont, "contention": {"instances": [2, 1]}}).field == "contention.instances"


def test_overrides_name_an_architecture_of_the_run() -> None:
    err = _error({"experiment": {"name": "x"}, "overrides": {"locked": {"arrival_rate_per_s": 1.0}}})
    assert err.field == "overrides.locked" and "lockless" in err.allowed
    err = _error(
        {"experiment": {"name": "x", "architectures": ["locked"]}, "overrides": {"locked": {"rate": 1}}}
    )
    assert err.field == "overrides.locked.rate"


def test_utilization_sets_job_durations_from_the_rate() -> None:
    config = from_mapping(
        {
            "experiment": {"name": "x", "architectures": ["lockless", "locked"]},
            "nodes": {"count": 100, "max_jobs": 4},
            "jobs": {"arrival_rate_per_s": 20.0, "utilization": 0.8},
            "overrides": {"locked": {"arrival_rate_per_s": 2.0, "duration_s": 60.0}},
        }
    )
    assert config.for_architecture("lockless").jobs.duration_mean_s == pytest.approx(0.8 * 400 / 20)
    locked = config.for_architecture("locked")
    assert locked.jobs.duration_mean_s == pytest.approx(0.8 * 400 / 2)
    assert locked.experiment.duration_s == 60.0
    assert _error({"experiment": {"name": "x"}, "jobs": {"utilization": 1.5}}).field == "jobs.utilization"


def _step(arch: str, rate: float, *, n: int, p99_us: int, valid: bool = True, unplaced: int = 0) -> Step:
    place = {"count": n, "p50_us": p99_us // 2, "p95_us": p99_us, "p99_us": p99_us, "max_us": p99_us * 2}
    place["undersampled"] = ["p99", "p99.9"] if n < 1000 else ["p99.9"]
    return Step(
        arch=arch,
        label=f"{rate}",
        params={"rate_per_s": rate},
        valid=valid,
        invalid_reason="" if valid else "harness lag P99 50 ms > 10 ms",
        lag_p99_ms=1.0,
        place=place,
        place_hdr="",
        counters={"placed": n, "unplaced": unplaced},
        errors=0,
        commands={},
        utilization=0.85,
        data_age_p50_ms=0.0,
        achieved_per_s=rate,
    )


def test_the_knee_is_the_last_pass_before_the_first_failure() -> None:
    config = from_mapping(
        {
            "experiment": {"name": "x", "kind": "sweep"},
            "sweep": {"p99_bound_ms": 10.0, "max_failure_ratio": 0.01},
        }
    )
    steps = [
        _step("a", 1, n=2000, p99_us=2000),
        _step("a", 2, n=4000, p99_us=9000),
        _step("a", 4, n=8000, p99_us=30_000),  # P99 over the bound
        _step("b", 1, n=500, p99_us=3000),  # max of 500 (6 ms) stands in, passes
        _step("b", 2, n=1000, p99_us=3000, unplaced=50),  # 5% unplaced
        _step("c", 1, n=2000, p99_us=1000, valid=False),  # the harness could not drive it: not judged
        _step("d", 1, n=2000, p99_us=1000),
        _step("d", 2, n=2000, p99_us=1000, valid=False),  # skipped over
        _step("d", 4, n=2000, p99_us=1000),
        _step("d", 8, n=2000, p99_us=20_000),
    ]
    for s in steps:
        judge(s, config)
    assert [s.passed for s in steps] == [True, True, False, True, False, None, True, None, True, False]
    assert "max of 500" in steps[3].why and "P99 30.0 ms" in steps[2].why
    k = knees(steps)
    assert k["a"]["knee_rate_per_s"] == 2 and k["a"]["stopped_at_rate_per_s"] == 4
    assert k["b"]["knee_rate_per_s"] == 1 and "failed or unplaced" in k["b"]["stopped_because"]
    assert k["c"]["below_first_rate"] and k["c"]["harness_bound"]
    assert k["d"]["knee_rate_per_s"] == 4 and not k["d"]["harness_bound"]


def _tiny(kind: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "experiment": {
            "name": f"tiny-{kind}",
            "kind": kind,
            "duration_s": 2.5,
            "warmup_s": 0.5,
            "architectures": ["lockless", "redis-select"],
        },
        "nodes": {"count": 100, "max_jobs": 4, "heartbeat_interval_s": 2.0},
        "jobs": {"arrival_rate_per_s": 20.0, "api": "place_job", "utilization": 0.85},
        "schedulers": {"instances": 1},
        **extra,
    }


@pytest.fixture(scope="module")
def server():
    srv = RedisServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.cleanup()


def test_a_tiny_sweep_writes_knees_a_plot_and_a_report(server: RedisServer, tmp_path: Path) -> None:
    config = from_mapping(_tiny("sweep", {"sweep": {"rates_per_s": [10.0, 20.0], "p99_bound_ms": 1000.0}}))
    seen: list[str] = []
    outcome = asyncio.run(
        run_many(config, redis_url=server.url, progress=lambda a, label, d, t, s: seen.append(f"{a} {label}"))
    )
    assert len(outcome.steps) == 4 and "redis-select 20/s" in seen
    folder = write_many(outcome, tmp_path)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["kind"] == "sweep" and set(summary["knees"]) == {"lockless", "redis-select"}
    for step in summary["steps"]:
        assert step["place"]["count"] > 0 and step["utilization"] > 0.5
    assert (folder / "knee.png").stat().st_size > 10_000
    assert "## Knees" in (folder / "report.md").read_text()
    assert len(list((folder / "histograms").glob("*.place.hdr"))) == 4
    # A knee is a number a budget can read.
    assert resolve(summary, "lockless", "knee_rate_per_s")[0] >= 10.0


def test_a_tiny_contention_run_counts_conflicts_per_instance_count(
    server: RedisServer, tmp_path: Path
) -> None:
    config = from_mapping(
        _tiny("contention", {"contention": {"instances": [1, 2], "policies": ["least_loaded"]}})
    )
    outcome = asyncio.run(run_many(config, redis_url=server.url))
    assert [(s.arch, s.params["instances"]) for s in outcome.steps] == [
        ("lockless", 1),
        ("lockless", 2),
        ("redis-select", 1),
        ("redis-select", 2),
    ]
    folder = write_many(outcome, tmp_path)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["architectures"]["redis-select"]["counters"].get("conflicts", 0) == 0
    assert (folder / "conflicts.png").is_file() and (folder / "contention_latency.png").is_file()
    rows = (folder / "steps.csv").read_text().splitlines()
    assert rows[0].startswith("arch,step") and len(rows) == 5


def test_a_budget_never_judges_a_thin_percentile() -> None:
    summary = {
        "architectures": {
            "a": {"ops": {"place": {"count": 400, "p50_us": 10, "p99_us": 90, "undersampled": ["p99"]}}}
        }
    }
    assert resolve(summary, "a", "ops.place.p50_us")[0] == 10
    with pytest.raises(MetricMissing, match="P99 of 400 samples is the maximum of n"):
        resolve(summary, "a", "ops.place.p99_us")


def test_a_sweep_summary_is_judged_without_the_probe_budgets() -> None:
    from pathlib import Path as _Path

    from sim.budgets import evaluate, load_budgets

    budgets = load_budgets(_Path(__file__).parents[2] / "experiments" / "budgets.toml")
    summary = {
        "experiment": "knee",
        "architectures": {"lockless": {"valid": True, "violations": 0, "counters": {}}},
    }
    rows = evaluate(summary, budgets)
    assert rows and all(not r.budget.metric.startswith("probe.") for r in rows)
    assert {r.status for r in rows if r.budget.name == "no consistency violation"} == {"ok"}
