"""The two experiment kinds made of many phases: the knee sweep and the contention grid.

Both reuse the comparison's phase (``sim.runner.shard_phase``: bootstrap, the
architecture's instances, the open-loop dispatcher, the checks), run one after another
on one server with the keys dropped in between, exactly like the architectures of a
comparison. What differs is what changes from phase to phase and what is kept of each:
one :class:`Step` per phase, its placement histogram (encoded) and its counters.

* **sweep** (``[sweep]``): per architecture, the offered placement rate rises through
  ``rates_per_s``; job durations follow (``jobs.utilization``), so every step runs at the
  same utilization. A step passes when it is valid, its placement P99 is within the bound
  (below 1,000 placements, the maximum stands in: stricter, and the report says so) and
  at most ``max_failure_ratio`` of its arrivals failed or went unplaced. The first failing
  step ends the architecture's sweep after ``steps_past_knee`` more. The **knee** is the
  highest passing rate below the first failure. A step invalid because the *harness*
  lagged is neither passed nor failed (it measured the machine, not the architecture:
  a short phase is sensitive to a burst of other work); two invalid steps in a row end the
  sweep as "harness-bound", and the knee is then a lower bound.
* **contention** (``[contention]``): per architecture, policy and instance count, the same
  total arrival rate dealt over the instances; conflicts per placement (admissions
  refused because another decision took the slot) against the number of deciders.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lockless import ConfigError
from sim import stats
from sim.config import ExperimentConfig
from sim.probe import phase_commands, server_stats
from sim.recorder import Recorder
from sim.redis_server import RedisServer
from sim.runner import Target, _forget, _loadavg, _server_version, shard_phase, workload

#: Progress of a many-phase run: (architecture, step label, steps done, steps planned, status).
StepProgress = Callable[[str, str, int, int, str], None]


@dataclass(slots=True)
class Step:
    """One phase of a sweep or contention run, reduced to what its outputs need."""

    arch: str
    label: str
    params: dict[str, Any]
    valid: bool
    invalid_reason: str
    lag_p99_ms: float
    place: dict[str, Any]
    place_hdr: str
    counters: dict[str, int]
    errors: int
    commands: dict[str, Any]
    utilization: float | None
    data_age_p50_ms: float | None
    achieved_per_s: float
    violations: int = 0
    passed: bool | None = None
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("place_hdr")
        return out


@dataclass(slots=True)
class ManyOutcome:
    """Everything a sweep or contention run produced."""

    config: ExperimentConfig
    steps: list[Step] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)


def _step(arch: str, label: str, params: dict[str, Any], rec: Recorder, config: ExperimentConfig, commands):
    lag = rec.extra["lag"]
    lag_p99_ms = lag.get_value_at_percentile(99) / 1000 if lag.get_total_count() else 0.0
    bound = config.harness.max_lag_p99_ms
    place = rec.latency["place"]
    errors = sum(n for (op, _), n in rec.errors.items() if op in ("place", "select", "job_start"))
    util = rec.extra["utilization"]
    age = rec.extra["staleness"]
    window = config.experiment.duration_s - config.experiment.warmup_s
    return Step(
        arch=arch,
        label=label,
        params={**params, **workload(config)},
        valid=lag_p99_ms <= bound,
        invalid_reason="" if lag_p99_ms <= bound else f"harness lag P99 {lag_p99_ms:.2f} ms > {bound:g} ms",
        lag_p99_ms=round(lag_p99_ms, 3),
        place=stats.summarize(place),
        place_hdr=place.encode().decode() if place.get_total_count() else "",
        counters=dict(rec.counters),
        errors=errors,
        commands=commands,
        utilization=round(util.get_mean_value() / 1000, 4) if util.get_total_count() else None,
        data_age_p50_ms=round(age.get_value_at_percentile(50) / 1000, 3) if age.get_total_count() else None,
        achieved_per_s=round(place.get_total_count() / window, 3) if window > 0 else 0.0,
        violations=len(rec.violations),
    )


def judge(step: Step, config: ExperimentConfig) -> None:
    """Set ``step.passed`` and ``step.why`` by the sweep's criteria (see the module docstring)."""
    sweep = config.sweep
    assert sweep is not None
    c = step.counters
    arrivals = c.get("placed", 0) + c.get("unplaced", 0) + step.errors
    failed = c.get("unplaced", 0) + step.errors + c.get("abandoned", 0)
    ratio = failed / arrivals if arrivals else 1.0
    n = step.place["count"]
    tail = step.place["p99_us"] if stats.resolved(n, 99) else step.place["max_us"]
    tail_name = "P99" if stats.resolved(n, 99) else f"max of {n:,}"
    bound_us = sweep.p99_bound_ms * 1000
    if not step.valid:
        step.passed, step.why = None, f"not judged (harness-bound): {step.invalid_reason}"
    elif not n:
        step.passed, step.why = False, "no placement completed"
    elif tail > bound_us:
        step.passed, step.why = False, f"{tail_name} {tail / 1000:.1f} ms > {sweep.p99_bound_ms:g} ms"
    elif ratio > sweep.max_failure_ratio:
        step.passed, step.why = False, f"{ratio:.1%} of arrivals failed or unplaced"
    else:
        step.passed, step.why = True, f"{tail_name} {tail / 1000:.1f} ms, {ratio:.2%} failed"


def knees(steps: list[Step]) -> dict[str, dict[str, Any]]:
    """Per architecture: the highest passing rate below the first failure, and why it stopped there."""
    out: dict[str, dict[str, Any]] = {}
    for arch in dict.fromkeys(s.arch for s in steps):
        mine = [s for s in steps if s.arch == arch]
        knee: Step | None = None
        stop: Step | None = None
        for s in mine:
            if s.passed:
                knee = s
            elif s.passed is False:
                stop = s
                break
        harness_bound = False
        if stop is None and mine and mine[-1].passed is None:
            # Ended by invalid steps: the knee (if any) is a lower bound.
            after = mine.index(knee) + 1 if knee else 0
            stop = next(s for s in mine[after:] if s.passed is None)
            harness_bound = True
        out[arch] = {
            "knee_rate_per_s": knee.params["rate_per_s"] if knee else None,
            "achieved_per_s": knee.achieved_per_s if knee else None,
            "place": knee.place if knee else None,
            "stopped_at_rate_per_s": stop.params["rate_per_s"] if stop else None,
            "stopped_because": stop.why if stop else "every rate passed: the knee is above the sweep",
            "harness_bound": harness_bound,
            "below_first_rate": knee is None,
        }
    return out


async def _phase(
    config: ExperimentConfig, arch: str, url: str, server: RedisServer | None, ns: str
) -> tuple[Recorder, dict[str, Any]]:
    target = Target(registry_url=url, checker_url=url, namespace=ns)
    stats0 = await server_stats(url)
    try:
        rec = await shard_phase(config, arch, target, server=server)
    finally:
        commands_after = await server_stats(url)
        await _forget(target, server)
    return rec, phase_commands(stats0, commands_after)


def plan(config: ExperimentConfig) -> list[tuple[str, str, dict[str, Any], ExperimentConfig]]:
    """Every phase (arch, label, params, config) of a sweep or contention run, in run order."""
    phases = []
    kind = config.experiment.kind
    for arch in config.experiment.architectures:
        if kind == "sweep":
            assert config.sweep is not None
            for rate in config.sweep.rates_per_s:
                cfg = config.with_rate(rate).resolved_jobs()
                phases.append((arch, f"{rate:g}/s", {"rate_per_s": rate}, cfg))
        elif kind == "contention":
            assert config.contention is not None
            for policy in config.contention.policies:
                for n in config.contention.instances:
                    cfg = dataclasses.replace(
                        config,
                        schedulers=dataclasses.replace(config.schedulers, instances=n),
                        registry=dataclasses.replace(
                            config.registry, cache=dataclasses.replace(config.registry.cache, policy=policy)
                        ),
                    ).resolved_jobs()
                    phases.append((arch, f"{policy} x{n}", {"policy": policy, "instances": n}, cfg))
        else:
            raise ConfigError("experiment.kind", kind, "sweep | contention (comparison runs in sim.runner)")
    return phases


async def run_many(
    config: ExperimentConfig, *, redis_url: str | None = None, progress: StepProgress | None = None
) -> ManyOutcome:
    """Run a sweep or contention experiment (see the module docstring) and return its steps."""
    if config.faults:
        raise ConfigError("faults", "(tables)", f"none in a {config.experiment.kind} experiment")
    outcome = ManyOutcome(config=config)
    server: RedisServer | None = None
    if redis_url is None:
        server = RedisServer()
        await asyncio.to_thread(server.start)
        url = server.url
    else:
        url = redis_url
    phases = plan(config)
    token = uuid.uuid4().hex[:6]
    try:
        outcome.machine["redis_version"] = server.version if server else await _server_version(url)
        outcome.machine["loadavg_start"] = _loadavg()
        failures: dict[str, int] = {}
        invalid_run: dict[str, int] = {}
        for i, (arch, label, params, cfg) in enumerate(phases):
            if config.experiment.kind == "sweep" and (
                failures.get(arch, -1) >= config.sweep.steps_past_knee or invalid_run.get(arch, 0) >= 2
            ):
                continue  # this architecture's sweep is over
            if progress:
                progress(arch, label, i, len(phases), "running")
            rec, commands = await _phase(cfg, arch, url, server, f"sim-{config.experiment.name}-{i}-{token}")
            step = _step(arch, label, params, rec, cfg, commands)
            if config.experiment.kind == "sweep":
                judge(step, config)
                invalid_run[arch] = invalid_run.get(arch, 0) + 1 if step.passed is None else 0
                if step.passed is False:
                    failures[arch] = failures.get(arch, -1) + 1
            outcome.steps.append(step)
            if progress:
                status = step.why or (
                    f"{step.place['count']:,} placed, conflicts {step.counters.get('conflicts', 0):,}"
                )
                progress(arch, label, i + 1, len(phases), status)
        outcome.machine["loadavg_end"] = _loadavg()
    finally:
        if server is not None:
            await asyncio.to_thread(server.cleanup)
    return outcome
