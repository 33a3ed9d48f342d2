"""The scale curve's bookkeeping: steps keep the experiment, rows read the steady state, and the
resource named as saturating is the one nearest its limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockless import ConfigError
from sim.config import from_mapping
from sim.scale_curve import (
    COLUMNS,
    curve_md,
    every_beat_publishes,
    main,
    projection,
    saturation,
    step_config,
    step_row,
    write_curve,
)


def _config():
    return from_mapping(
        {
            "experiment": {"name": "scale", "duration_s": 60.0, "warmup_s": 10.0},
            "nodes": {"count": 20_000, "crash_rate_per_hour": 0.5, "leave_rate_per_hour": 0.5},
            "jobs": {"arrival_rate_per_s": 50.0},
            "schedulers": {"instances": 2},
        }
    )


def _summary(nodes: int, *, valid: bool, harness: float, redis: float, scheduler: float) -> dict:
    return {
        "nodes": nodes,
        "machine": {"cores": 2, "loadavg_start": [0.3, 0.4, 0.5]},
        "architectures": {
            "lockless": {
                "valid": valid,
                "lag_p99_ms": 4.2 if valid else 31.0,
                "violations": 0,
                "distributions": {"lag": {"count": 123_456}},
                "ops": {"place": {"count": 2_900, "p99_us": 15_500}},
                "counters": {
                    "steady_s": 50.0,
                    "steady_heartbeats": nodes * 10,
                    "steady_harness_cpu_pct": harness,
                    "steady_redis_cpu_pct": redis,
                    "steady_scheduler_cpu_pct": scheduler,
                    "steady_harness_cpu_us_per_heartbeat": 25.0,
                    "steady_redis_cpu_us_per_heartbeat": 15.0,
                },
            }
        },
    }


def test_a_step_changes_the_node_count_and_nothing_else() -> None:
    config = _config()
    step = step_config(config, 100_000, None)
    assert step.nodes.count == 100_000
    assert step.experiment == config.experiment and step.jobs == config.jobs
    assert step.nodes.crash_rate_per_hour == 0.5 and step.schedulers == config.schedulers
    short = step_config(config, 1_000, 20.0)
    assert (short.experiment.duration_s, short.experiment.warmup_s) == (20.0, 5.0)


def test_a_sweep_or_contention_experiment_is_refused_by_name() -> None:
    sweep = from_mapping(
        {
            "experiment": {"name": "knee", "duration_s": 60.0, "kind": "sweep"},
            "sweep": {"rates_per_s": [1.0, 2.0]},
        }
    )
    with pytest.raises(ConfigError, match=r"experiment\.kind.*sweep.*comparison"):
        step_config(sweep, 10_000, None)


def test_the_command_line_refuses_a_sweep_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "knee.toml"
    toml.write_text('[experiment]\nname = "knee"\nkind = "sweep"\n[sweep]\nrates_per_s = [1.0]\n')
    with pytest.raises(SystemExit) as exc:
        main([str(toml), "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert "experiment.kind" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_seed_design_changes_only_publishing_and_the_name() -> None:
    config = _config()
    seed = every_beat_publishes(config)
    assert seed.registry.nodes.publish_every_heartbeat and not config.registry.nodes.publish_every_heartbeat
    assert seed.experiment.name == "scale-seed" and seed.nodes == config.nodes and seed.jobs == config.jobs
    assert seed.registry.redis == config.registry.redis


def test_a_row_reads_the_steady_state() -> None:
    row = step_row(_summary(100_000, valid=True, harness=60.0, redis=40.0, scheduler=20.0), "steps/x")
    assert row["heartbeats_per_s"] == 20_000 and row["lag_n"] == 123_456
    assert (row["placements"], row["place_p99_ms"]) == (2_900, "15.50")
    assert row["machine_cpu_pct"] == 60.0  # 120 % of one core on 2 cores
    assert set(COLUMNS) <= set(row)


def test_a_thin_placement_p99_is_shown_as_the_maximum_of_n() -> None:
    summary = _summary(10_000, valid=True, harness=10.0, redis=10.0, scheduler=5.0)
    summary["architectures"]["lockless"]["ops"]["place"] = {"count": 900, "p99_us": 9_000, "max_us": 12_345}
    assert step_row(summary, "x")["place_p99_ms"] == "max of 900: 12.35"
    del summary["architectures"]["lockless"]["ops"]["place"]
    assert (step_row(summary, "x")["placements"], step_row(summary, "x")["place_p99_ms"]) == (0, "")


@pytest.mark.parametrize(
    ("harness", "redis", "scheduler", "expected"),
    [
        (95.0, 40.0, 20.0, "harness process (one core)"),
        (50.0, 97.0, 20.0, "redis-server (one core)"),
        (80.0, 80.0, 30.0, "the machine's cores"),  # 190 % of 200 %
        (10.0, 10.0, 170.0, "the machine's cores"),  # schedulers 85 % of theirs, machine 95 %
    ],
)
def test_the_resource_nearest_its_limit_is_named(
    harness: float, redis: float, scheduler: float, expected: str
) -> None:
    row = step_row(_summary(50_000, valid=False, harness=harness, redis=redis, scheduler=scheduler), "x")
    name, level = saturation(row, schedulers=2)
    assert name == expected and 0 < level <= 1.0


def test_the_curve_files_say_where_it_failed(tmp_path: Path) -> None:
    rows = [
        step_row(_summary(n, valid=n < 150_000, harness=h, redis=r, scheduler=10.0), f"steps/{n}")
        for n, h, r in ((50_000, 40.0, 20.0), (100_000, 70.0, 45.0), (150_000, 99.0, 60.0))
    ]
    write_curve(tmp_path, rows, _config())
    text = (tmp_path / "curve.md").read_text()
    assert "| 150,000 |" in text and "INVALID" in text
    assert "First failing step: 150,000 nodes; nearest its limit there: harness process (one core)" in text
    assert "Projection to 1,000,000 nodes (on paper, from the 100,000-node step)" in text
    assert (tmp_path / "steps.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    assert (tmp_path / "curve.png").stat().st_size > 0
    assert curve_md(rows[:2], _config()).count("First failing") == 0


def test_the_projection_is_linear_in_the_heartbeat_rate() -> None:
    row = step_row(_summary(100_000, valid=True, harness=60.0, redis=40.0, scheduler=20.0), "x")
    p = projection(row, 5.0)  # 25 us harness, 15 us Redis per heartbeat; 70 % of a core planned
    assert p["heartbeats_per_s"] == 200_000
    assert p["nodes_per_redis_core"] == round(0.7 * 1e6 / 15 * 5) == 233_333
    assert p["nodes_per_harness_core"] == 140_000
    assert (p["redis_shards"], p["harness_cores"], p["harness_machines_2_cores"]) == (5, 8, 4)
    assert p["scheduler_cores"] == 2.0  # 20 % at 100,000 nodes, ten times the nodes
    twice = projection(row, 5.0, nodes=2_000_000)
    assert (twice["redis_shards"], twice["harness_cores"]) == (9, 15)
