"""Scheduler instances in processes of their own (sim/remote.py), against a real redis-server.

Frames round-trip what the library returns (MappingProxyType included); a remote error
keeps its type name; a tiny run with schedulers in processes and heartbeats written by
the harness records every operation, the transport overhead and the schedulers' CPU,
and says in its report what ran where.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest

from lockless.config import RegistryConfig
from lockless.core.snapshot import NodeSpec, Requirements
from lockless.errors import ConfigError, LocklessError
from lockless.protocol import Heartbeat
from sim.config import from_mapping
from sim.remote import SchedulerProcesses, dumps, read_frame
from sim.report import write_run
from sim.runner import run_async


async def test_frames_round_trip_mapping_proxies() -> None:
    spec = NodeSpec(
        node_id="n1", pool="default", max_jobs=4, resources={"cpu": 2.0}, labels=frozenset({"gpu"})
    )
    assert type(spec.resources).__name__ == "mappingproxy"  # what plain pickle refuses
    reader = asyncio.StreamReader()
    reader.feed_data(dumps(("call", [Heartbeat(pool="default", node_id="n1", spec=spec)])))
    reader.feed_data(dumps({"second": 2}))
    kind, (beat,) = await read_frame(reader)
    assert kind == "call" and beat.spec == spec and beat.spec.resources["cpu"] == 2.0
    assert await read_frame(reader) == {"second": 2}


def _registry(url: str, ns: str) -> RegistryConfig:
    base = RegistryConfig(pools=("default",))
    return dataclasses.replace(base, redis=dataclasses.replace(base.redis, url=url, namespace=ns))


@pytest.mark.parametrize("arch", ["lockless", "locked"])
async def test_remote_registry_serves_calls_and_keeps_error_names(redis_url: str, ns: str, arch: str) -> None:
    procs = SchedulerProcesses(arch, {0: _registry(redis_url, ns)})
    regs = await procs.start()
    try:
        reg = regs[0]
        await reg.start()
        spec = NodeSpec(node_id="n1", pool="default", max_jobs=2, resources={"cpu": 4.0})
        assert await reg.register_node(spec) >= 1
        (beat,) = await reg.heartbeat_many([Heartbeat(pool="default", node_id="n1", load=0.5)])
        assert beat.node_id == "n1" and beat.version >= 1
        selection = await reg.select_nodes("default", 1, Requirements(resources={"cpu": 1.0}))
        assert [n.node_id for n in selection.picks] == ["n1"]
        admission = await reg.job_start("default", "n1", "j1")
        assert admission.admitted
        assert await reg.job_finish("default", "n1", "j1")
        with pytest.raises(LocklessError) as info:
            await reg.get_node("nope", "n1")
        assert type(info.value).__name__ == "UnknownPool"  # counted by the same name as in-process
        encoded, counters = await reg.fetch_metrics()
        assert isinstance(encoded, dict) and isinstance(counters, dict)
        view = await reg.cached_view("default")
        if arch == "lockless":
            assert view is not None
            assert view["n1"].current_jobs == 0  # the finish is assumed in L1 as soon as Redis answers
        else:
            assert view is None  # no cache: nothing to converge
        assert sum(procs.cpu_seconds().values()) >= 0.0
        await reg.close()
    finally:
        await procs.stop()
    assert all(not p.is_alive() for p in procs.procs.values())


def _tiny(archs: list[str]):
    return from_mapping(
        {
            "experiment": {"name": "tiny-remote", "duration_s": 3.0, "warmup_s": 0.5, "architectures": archs},
            # A generous lag bound: tests check plumbing, never timing, on a shared machine.
            "harness": {
                "quiet_s": 0.2,
                "convergence_s": 5.0,
                "max_lag_p99_ms": 10_000.0,
                "scheduler_processes": True,
                "scheduler_nice": 2,
                "heartbeats_via": "harness",
            },
            "nodes": {"count": 40, "heartbeat_interval_s": 0.5, "labels": ["gpu"]},
            "jobs": {"arrival_rate_per_s": 10.0, "duration_mean_s": 0.5, "get_rate_per_s": 10.0},
            "registry": {"nodes": {"reap_interval_s": 0.5}},
        }
    )


async def test_tiny_run_with_scheduler_processes(redis_url: str, tmp_path: Path) -> None:
    outcome = await run_async(_tiny(["lockless", "locked"]), redis_url=redis_url)
    for arch, rec in outcome.recorders.items():
        assert rec.latency["heartbeat"].get_total_count() > 0, arch
        assert rec.latency["select"].get_total_count() > 0, arch
        assert rec.extra["ipc"].get_total_count() > 0, arch
        assert rec.counters["scheduler_processes"] == 2
        assert "scheduler_cpu_pct" in rec.counters
        assert rec.violations == [], arch
    assert outcome.recorders["lockless"].counters["converged"] == 1
    folder = write_run(outcome, tmp_path)
    summary = json.loads((folder / "summary.json").read_text())
    assert "process of its own" in summary["placement"] and "node agents" in summary["placement"]
    assert summary["machine"]["loadavg_start"]
    report = (folder / "report.md").read_text()
    assert "scheduler CPU %" in report and "nice +2" in report


def test_config_refuses_scheduler_processes_with_workers_and_bad_values() -> None:
    def error(harness: dict) -> ConfigError:
        with pytest.raises(ConfigError) as info:
            from_mapping({"experiment": {"name": "x"}, "harness": harness})
        return info.value

    assert error({"workers": 2, "scheduler_processes": True}).field == "harness.scheduler_processes"
    assert error({"scheduler_processes": "yes"}).allowed == "true | false"
    err = error({"heartbeats_via": "nodes"})
    assert err.field == "harness.heartbeats_via" and err.allowed == "scheduler | harness"
    assert error({"scheduler_nice": 20}).field == "harness.scheduler_nice"

