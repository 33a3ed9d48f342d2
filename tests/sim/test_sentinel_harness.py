"""The harness under Sentinel: the [sentinel] section and its faults in experiment files, and short
runs end to end on a real Sentinel group (primary, replica, three sentinels of the session's
server) in which the primary is killed after its replica was cut off.

The runs check what the ``sentinel-failover`` experiment reports: the fault's record (the
promotion, per instance the detection, recovery and follow times), the acknowledged writes
lost, and 0 violations. A registry patched here so that it never treats lost data as lost
(no relist with a reset, no ``epoch_changes``) is reported by the same run as violations:
the checks can catch a cache that keeps writes Redis lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from lockless import ConfigError
from lockless.core.sequencer import PoolSequencer
from sim.config import ExperimentConfig, from_mapping, load_toml
from sim.runner import run_async

EXPERIMENT = Path(__file__).resolve().parents[2] / "experiments" / "sentinel-failover.toml"


def _config(**sections: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "experiment": {"name": "t", "duration_s": 20.0, "warmup_s": 1.0},
        "nodes": {"count": 10, "pools": ["a", "b"]},
        "sentinel": {"enabled": True},
        "faults": [{"kind": "sentinel_kill_primary", "at_s": 2.0, "duration_s": 5.0, "lose_writes_s": 0.5}],
    }
    base.update(sections)
    return base


def _kill(at_s: float, **fields: Any) -> dict[str, Any]:
    return {"kind": "sentinel_kill_primary", "at_s": at_s, "duration_s": 5.0, **fields}


@pytest.mark.parametrize(
    ("sections", "field", "allowed"),
    [
        ({"sentinel": {"enabled": False}}, "faults.kind", "needs \\[sentinel\\]"),
        ({"cluster": {"enabled": True}}, "sentinel.enabled", "false with \\[cluster\\]"),
        (
            {"faults": [{"kind": "pause", "at_s": 2.0, "duration_s": 1.0}]},
            "faults.kind",
            "with \\[sentinel\\]",
        ),
        (
            {"faults": [{"kind": "kill_primary", "at_s": 2.0, "duration_s": 1.0, "pool": "a"}]},
            "faults.kind",
            "with \\[sentinel\\]: sentinel_kill_primary \\| sentinel_pause_primary",
        ),
        ({"faults": [_kill(2.0, pool="a")]}, "faults.pool", "only cluster faults"),
        ({"faults": [{"kind": "sentinel_kill_primary", "at_s": 2.0}]}, "faults.duration_s", "> 0"),
        (
            {
                "faults": [
                    {"kind": "sentinel_pause_primary", "at_s": 2.0, "duration_s": 5.0, "lose_writes_s": 0.5}
                ]
            },
            "faults.lose_writes_s",
            "0 for a sentinel_pause_primary",
        ),
        ({"faults": [_kill(2.0, lose_writes_s=1.0)]}, "faults.lose_writes_s", "< sentinel.down_after_ms"),
        ({"faults": [_kill(2.0), _kill(6.0)]}, "faults.at_s", "after the previous Sentinel fault"),
        ({"sentinel": {"enabled": "yes"}}, "sentinel.enabled", "true | false"),
        ({"sentinel": {"enabled": True, "quorum": 4}}, "sentinel.quorum", "1..sentinels \\(3\\)"),
        ({"sentinel": {"enabled": True, "sentinels": 0}}, "sentinel.sentinels", ">= 1"),
        ({"sentinel": {"enabled": True, "down_after_ms": 50}}, "sentinel.down_after_ms", ">= 100"),
        (
            {"sentinel": {"enabled": True, "failover_timeout_ms": 500}},
            "sentinel.failover_timeout_ms",
            ">= 1000",
        ),
        ({"sentinel": {"enabled": True, "replicas": 2}}, "sentinel.replicas", "one of the keys"),
        (
            {"harness": {"workers": 2}, "schedulers": {"instances": 2}},
            "harness.workers",
            "1 with \\[sentinel\\]",
        ),
        (
            {"experiment": {"name": "t", "architectures": ["lockless", "direct"]}},
            "experiment.architectures",
            "lockless",
        ),
    ],
)
def test_sentinel_settings_are_validated_naming_the_field(sections: dict, field: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_mapping(_config(**sections))
    assert caught.value.field == field
    assert re.search(allowed, caught.value.allowed), caught.value


def test_a_redis_url_is_refused_with_sentinel() -> None:
    config = from_mapping(_config())
    with pytest.raises(ConfigError, match="none with \\[sentinel\\]"):
        asyncio.run(run_async(config, redis_url="redis://127.0.0.1:1/0"))


def test_the_experiment_spells_out_every_field() -> None:
    text = EXPERIMENT.read_text()
    config = load_toml(EXPERIMENT)
    assert config.sentinel.enabled and config.nodes.count >= 5_000
    assert config.nodes.crash_rate_per_hour > 0 and config.nodes.leave_rate_per_hour > 0
    assert config.jobs.utilization > 0 and config.schedulers.instances == 2
    assert config.harness.scheduler_processes  # the instances' relists off the harness's loop
    for key in ("sentinels", "quorum", "down_after_ms", "failover_timeout_ms", "utilization"):
        assert f"\n{key} = " in text, key
    kinds = [(f.kind, f.lose_writes_s > 0) for f in config.faults]
    # A kill in step, a kill after a replica lag (writes lost), and a freeze, at least.
    assert {("sentinel_kill_primary", False), ("sentinel_kill_primary", True)} <= set(kinds)
    assert ("sentinel_pause_primary", False) in kinds
    assert text.count("lose_writes_s = ") == len(config.faults)


def _shrunk(*, in_process: bool = False) -> ExperimentConfig:
    """sentinel-failover, shrunk: 400 nodes, 14 s, one kill 0.5 s after the replica was cut off.

    ``in_process``: the scheduler instances in the test's process (as a patch here reaches
    them), not in processes of their own as the experiment runs them."""
    config = load_toml(EXPERIMENT)
    (lossy,) = [f for f in config.faults if f.lose_writes_s > 0][:1]
    return dataclasses.replace(
        config,
        experiment=dataclasses.replace(config.experiment, duration_s=14.0, warmup_s=2.0),
        nodes=dataclasses.replace(config.nodes, count=400),
        faults=(dataclasses.replace(lossy, at_s=5.0, duration_s=4.0),),
        harness=dataclasses.replace(
            config.harness, scheduler_processes=config.harness.scheduler_processes and not in_process
        ),
    )


@pytest.mark.timeout(300)
def test_a_sentinel_run_counts_the_writes_a_failover_lost_and_times_the_follow() -> None:
    outcome = asyncio.run(run_async(_shrunk()))
    rec = outcome.recorders["lockless"]
    report = outcome.phases["lockless"]["sentinel"]
    (fault,) = report["faults"]
    assert fault["kind"] == "sentinel_kill_primary" and fault["promotion"]["replica_cut_s"] == 0.5
    promotion = fault["promotion"]
    assert promotion["new_primary"] != promotion["old_primary"] == fault["node"]
    assert 0 < promotion["first_sentinel_s"] <= promotion["all_sentinels_s"]
    # The writes acknowledged while the replica was cut off were lost, the ones before kept.
    assert fault["lost"] > 0 and fault["acked_checked"] > fault["lost"], fault
    assert report["lost_acked_writes"] == fault["lost"] == rec.counters["lost_acked_writes"]
    # Both instances noticed, came back to NORMAL after the promotion, and relisted lost data.
    assert set(fault["instances"]) == {"0", "1"}
    for timing in fault["instances"].values():
        assert timing["detected_after_s"] is not None and timing["recovered_after_s"] is not None, fault
        assert timing["recovered_after_s"] > timing["detected_after_s"]
        assert timing["followed_after_promotion_s"] == pytest.approx(
            timing["recovered_after_s"] - promotion["first_sentinel_s"], abs=0.002
        )
    assert report["followed_after_promotion_s"]["n"] == 2 and report["unrecovered"] == 0
    assert all(n >= 1 for n in report["instances_relisted_lost"].values()), report
    assert rec.violations == [] and rec.counters["converged"] == 1


@pytest.mark.timeout(300)
def test_a_registry_that_keeps_lost_writes_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    # Broken on purpose, here only: the registries never judge Redis's data lost (a seq gone
    # back, a diverged history), so they neither count it nor reset their caches when relisting.
    monkeypatch.setattr(PoolSequencer, "lost_data", lambda self, pool, seq, epoch, high_water: False)
    outcome = asyncio.run(run_async(_shrunk(in_process=True)))
    rec = outcome.recorders["lockless"]
    report = outcome.phases["lockless"]["sentinel"]
    assert report["lost_acked_writes"] > 0, report  # there was something to detect
    assert report["instances_relisted_lost"] == {"0": 0, "1": 0}
    kinds = {v["kind"] for v in rec.violations}
    assert "loss_undetected" in kinds, rec.violations
