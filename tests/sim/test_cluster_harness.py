"""The harness on a cluster: the [cluster] section and cluster faults in experiment files, the
ledger of acknowledged writes and its loss check, and one short run end to end on a real
local cluster in which a primary is killed after its replica was cut off."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from lockless import ConfigError
from sim.acks import Ack, AckLedger, LogEntry, lost_writes
from sim.config import from_mapping, load_toml
from sim.runner import run_async

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def _config(**sections: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "experiment": {"name": "t", "duration_s": 10.0, "warmup_s": 1.0},
        "nodes": {"count": 10, "pools": ["a", "b"]},
        "cluster": {"enabled": True},
        "faults": [{"kind": "kill_primary", "at_s": 2.0, "duration_s": 1.0, "pool": "a"}],
    }
    base.update(sections)
    return base


@pytest.mark.parametrize(
    ("sections", "field", "allowed"),
    [
        ({"faults": [{"kind": "kill_primary", "at_s": 2.0, "duration_s": 1.0}]}, "faults.pool", "the pool"),
        (
            {"faults": [{"kind": "kill_primary", "at_s": 2.0, "duration_s": 1.0, "pool": "z"}]},
            "faults.pool",
            "one of",
        ),
        ({"faults": [{"kind": "pause", "at_s": 2.0, "duration_s": 1.0}]}, "faults.kind", "on a cluster"),
        (
            {"faults": [{"kind": "stop", "at_s": 2.0, "duration_s": 1.0, "pool": "a"}]},
            "faults.pool",
            "only cluster",
        ),
        (
            {"faults": [{"kind": "failover", "at_s": 2.0, "pool": "a", "lose_writes_s": 1.0}]},
            "faults.lose_writes_s",
            "0 for a failover",
        ),
        ({"cluster": {"enabled": False}}, "faults.kind", "needs \\[cluster\\]"),
        ({"cluster": {"enabled": True, "replicas_per_primary": 0}}, "cluster.replicas_per_primary", ">= 1"),
        ({"cluster": {"enabled": "yes"}}, "cluster.enabled", "true | false"),
        ({"cluster": {"enabled": True, "node_timeout_ms": 50}}, "cluster.node_timeout_ms", ">= 100"),
        ({"cluster": {"enabled": True, "shards": 3}}, "cluster.shards", "one of the keys"),
        ({"registry": {"redis": {"wait_replicas": -1}}}, "registry.redis.wait_replicas", ">= 0"),
        ({"registry": {"redis": {"url": "cluster://h:1"}}}, "registry.redis.url", "redis\\+cluster://"),
    ],
)
def test_cluster_settings_are_validated_naming_the_field(sections: dict, field: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_mapping(_config(**sections))
    assert caught.value.field == field
    assert re.search(allowed, caught.value.allowed), caught.value


@pytest.mark.parametrize(
    "name", ["cluster-steady", "cluster-failover", "cluster-failover-wait", "cluster-reshard"]
)
def test_cluster_experiments_spell_out_every_field(name: str) -> None:
    text = (EXPERIMENTS / f"{name}.toml").read_text()
    config = load_toml(EXPERIMENTS / f"{name}.toml")
    assert config.cluster.enabled and config.nodes.count == 10_000
    for key in ("primaries", "replicas_per_primary", "node_timeout_ms", "wait_replicas", "wait_timeout_ms"):
        assert f"\n{key} = " in text, key
    for fault in config.faults:
        assert fault.on_cluster and fault.pool in config.nodes.pools
    assert text.count("lose_writes_s = ") == len(config.faults)
    assert config.registry.redis.wait_replicas == (1 if name.endswith("-wait") else 0)


def test_a_write_is_lost_unless_its_seq_still_holds_it() -> None:
    acks = [
        Ack("p", 10, "n1", "job_start", 100.0),  # held
        Ack("p", 11, "n2", "heartbeat", 100.1),  # re-created node: logged as register, held
        Ack("p", 12, "n3", "register", 100.2),  # the seq is gone
        Ack("p", 13, "n4", "register", 100.3),  # another node at the seq
        Ack("p", 14, "n5", "job_start", 100.4),  # the same node and op, but written after: reused
        Ack("p", 15, "n6", "register", 100.5),  # the log entry does not decode
    ]
    log = {
        10: LogEntry("n1", "job_start", 99_000_000),
        11: LogEntry("n2", "register", 100_050_000),
        13: LogEntry("x", "register", 100_250_000),
        14: LogEntry("n5", "job_start", 101_500_000),
        15: None,
    }
    seen: list[tuple[str, list[int]]] = []

    def log_at(pool: str, seqs: list[int]) -> dict[int, LogEntry | None]:
        seen.append((pool, list(seqs)))
        return {s: log.get(s) for s in seqs}

    lost = lost_writes(acks, log_at, failed_at_wall=101.0)
    assert [a.seq for a in lost] == [12, 13, 14, 15]
    assert seen == [("p", [10, 11, 12, 13, 14, 15])]  # one read per pool


def test_the_ledger_keeps_writes_by_pool_and_time() -> None:
    now = iter([1.0, 2.0, 3.0, 4.0])
    ledger = AckLedger(clock=lambda: next(now))
    ledger.record("a", 1, "n", "register")
    ledger.record("b", 1, "n", "register")
    ledger.record("a", 2, "n", "job_start")
    ledger.record("a", 3, "n", "job_start")
    assert [(a.pool, a.seq) for a in ledger.window(["a"], 1.5, 3.0)] == [("a", 2)]
    assert ledger.count() == 4


@pytest.mark.timeout(300)
def test_a_cluster_run_counts_the_writes_a_failover_lost_and_the_caches_converge(tmp_path: Path) -> None:
    # cluster-failover, shrunk: 600 nodes, 14 s, one primary killed 0.5 s after its replica was cut off.
    config = load_toml(EXPERIMENTS / "cluster-failover.toml")
    lossy = dataclasses.replace(config.faults[1], at_s=6.0, duration_s=3.0, lose_writes_s=0.5)
    config = dataclasses.replace(
        config,
        experiment=dataclasses.replace(config.experiment, duration_s=14.0, warmup_s=2.0),
        nodes=dataclasses.replace(config.nodes, count=600),
        faults=(lossy,),
    )
    outcome = asyncio.run(run_async(config))
    rec = outcome.recorders["lockless"]
    report = outcome.phases["lockless"]["cluster"]
    (fault,) = report["faults"]
    assert fault["kind"] == "kill_primary" and fault["lost"] > 0, fault  # writes in the 0.5 s were lost
    assert report["lost_acked_writes"] == fault["lost"] == rec.counters["lost_acked_writes"]
    assert fault["acked_checked"] > fault["lost"]  # writes before the cut were kept
    # Both instances relisted the pool as lost data, noticed the failover and came back.
    assert all(n >= 1 for n in report["instances_relisted_lost"].values()), report
    for timing in fault["instances"].values():
        assert timing["detected_after_s"] is not None and timing["recovered_after_s"] is not None, fault
    assert rec.violations == [] and rec.counters["converged"] == 1
