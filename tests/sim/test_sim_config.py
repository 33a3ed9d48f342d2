"""Experiment files: errors name the dotted field and the allowed values; shipped files load."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockless.errors import ConfigError
from sim.config import from_mapping, load_toml

EXPERIMENTS = Path(__file__).parents[2] / "experiments"


def _error(data: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        from_mapping(data)
    return info.value


def test_unknown_key_names_the_field_and_the_allowed_keys() -> None:
    err = _error({"experiment": {"name": "x", "durations": 3}})
    assert err.field == "experiment.durations"
    assert "duration_s" in err.allowed


def test_bad_choice_names_the_allowed_values() -> None:
    err = _error({"experiment": {"name": "x"}, "jobs": {"duration": "normal"}})
    assert err.field == "jobs.duration"
    assert err.allowed == "exponential | fixed | lognormal"


def test_bad_fault_kind_and_architecture() -> None:
    err = _error({"experiment": {"name": "x"}, "faults": [{"kind": "boom", "at_s": 1.0}]})
    assert err.field == "faults.kind" and "pause" in err.allowed and "latency" in err.allowed
    err = _error({"experiment": {"name": "x", "architectures": ["fast"]}})
    assert err.field == "experiment.architectures"
    assert err.allowed == "lockless | locked | direct | ttl-cache | redis-select"


def test_wrong_type_and_range() -> None:
    assert _error({"experiment": {"name": "x"}, "nodes": {"count": "many"}}).field == "nodes.count"
    assert _error({"experiment": {"name": "x"}, "nodes": {"count": 0}}).allowed == "an integer >= 1"
    err = _error({"experiment": {"name": "x"}, "faults": [{"kind": "pause", "at_s": 1.0}]})
    assert err.field == "faults.duration_s"


def test_registry_table_errors_are_located_under_registry() -> None:
    err = _error({"experiment": {"name": "x"}, "registry": {"cache": {"policy": "random"}}})
    assert err.field == "registry.cache.policy"
    assert "power_of_two" in err.allowed


def test_unknown_section_and_missing_experiment() -> None:
    assert _error({"experiment": {"name": "x"}, "workload": {}}).field == "workload"
    assert _error({"nodes": {}}).field == "experiment"


def test_bad_toml_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[experiment\nname = 1")
    with pytest.raises(ConfigError):
        load_toml(path)


# budgets.toml sits beside the experiments but is not one (sim/budgets.py reads it).
SHIPPED = sorted(p for p in EXPERIMENTS.glob("*.toml") if p.name != "budgets.toml")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_experiments_load_and_spell_out_every_section(path: Path) -> None:
    config = load_toml(path)
    assert config.experiment.name == path.stem
    text = path.read_text()
    for section in ("[experiment]", "[harness]", "[nodes]", "[jobs]", "[schedulers]", "[registry.nodes]"):
        assert section in text


def test_required_scenarios_exist() -> None:
    names = {p.stem for p in EXPERIMENTS.glob("*.toml")}
    assert {
        "smoke",
        "steady-10k",
        "scale",
        "outage-stop",
        "outage-hang",
        "restart-empty",
        "pubsub-drop",
        "latency-spike",
        "locked-vs-lockless",
    } <= names
