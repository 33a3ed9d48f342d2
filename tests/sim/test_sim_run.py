"""End to end: a tiny run against a real Redis writes every output file; the CLI reads them back."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from sim.__main__ import cli
from sim.config import from_mapping
from sim.redis_server import RedisServer
from sim.report import write_run
from sim.runner import run_async


def _tiny(name: str, archs: list[str], faults: list[dict] | None = None):
    return from_mapping(
        {
            "experiment": {"name": name, "duration_s": 3.0, "warmup_s": 0.5, "architectures": archs},
            # A generous lag bound: tests check plumbing, never timing, on a shared machine.
            "harness": {"quiet_s": 0.2, "convergence_s": 5.0, "max_lag_p99_ms": 10_000.0},
            "nodes": {
                "count": 40,
                "heartbeat_interval_s": 0.5,
                "leave_rate_per_hour": 600.0,
                "crash_rate_per_hour": 600.0,
                "rejoin_after_s": 0.5,
                "labels": ["gpu"],
            },
            "jobs": {"arrival_rate_per_s": 20.0, "duration_mean_s": 0.5, "get_rate_per_s": 10.0},
            "faults": faults or [],
            "registry": {"nodes": {"reap_interval_s": 0.5}},
        }
    )


async def test_tiny_run_with_a_fault_writes_every_output(fault_server: RedisServer, tmp_path: Path) -> None:
    config = _tiny("tiny", ["lockless", "locked", "direct"], [{"kind": "kill_pubsub", "at_s": 1.5}])
    outcome = await run_async(config, server=fault_server)
    assert set(outcome.recorders) == {"lockless", "locked", "direct"}
    for rec in outcome.recorders.values():
        assert rec.latency["heartbeat"].get_total_count() > 0
        assert rec.latency["select"].get_total_count() > 0
        assert any(e["kind"] == "fault_start" for e in rec.timeline)
        assert rec.violations == []
    folder = write_run(outcome, tmp_path)
    for name in (
        "config.toml",
        "summary.json",
        "percentiles.csv",
        "timeline.csv",
        "throughput.csv",
        "latency_percentiles.png",
        "latency_over_time.png",
        "report.md",
    ):
        assert (folder / name).stat().st_size > 0, name
    assert list((folder / "histograms").glob("lockless.latency.select.hdr"))
    summary = json.loads((folder / "summary.json").read_text())
    for key in ("hostname", "cpu_model", "cores", "python", "redis_version"):
        assert summary["machine"][key]
    assert summary["git_commit"] and summary["architectures"]["lockless"]["valid"] is True
    assert "locked" in summary["ratios_vs_lockless"]
    parts = folder.name.split("-")
    assert len(parts) == 3 and len(parts[1]) == 8 and len(parts[2]) == 8

    result = CliRunner().invoke(cli, ["compare", str(folder), str(folder)])
    assert result.exit_code == 0, result.output
    assert "select" in result.output and "locked" in result.output


async def test_external_url_refuses_server_faults(redis_url: str) -> None:
    config = _tiny("ext", ["direct"], [{"kind": "pause", "at_s": 1.0, "duration_s": 0.5}])
    try:
        await run_async(config, redis_url=redis_url)
    except Exception as exc:  # the type and the message are both checked
        assert type(exc).__name__ == "ConfigError" and "faults.kind" in str(exc)
    else:
        raise AssertionError("a server fault against an external Redis must be refused")


def test_cli_names_the_bad_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[experiment]\nname = "bad"\n[jobs]\nduration = "normal"\n')
    result = CliRunner().invoke(cli, ["run", str(bad), "--quiet"])
    assert result.exit_code != 0
    assert "jobs.duration" in result.output and "exponential | fixed | lognormal" in result.output
