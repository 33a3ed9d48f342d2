"""Experiment files: TOML parsed into nested frozen dataclasses, validated when built.

An experiment names everything a run needs (workload, faults, harness bounds, and the
``[registry]`` table handed to :meth:`lockless.config.RegistryConfig.from_mapping`), so a
result folder plus its resolved config is enough to repeat the run. A typo must fail
loudly, never run defaults: unknown keys and bad values raise
:class:`~lockless.errors.ConfigError` with the dotted field path and what is allowed,
e.g. ``jobs.duration: got 'normal'; allowed: exponential | fixed | lognormal``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from lockless import ConfigError, RegistryConfig
from sim.architectures import ARCHITECTURES, BaselineOptions

#: ``comparison``: every architecture on one plan (the original kind); ``sweep``: the offered
#: placement rate raised step by step per architecture until the knee (``[sweep]``);
#: ``contention``: 1..N scheduler instances at one total rate, per policy (``[contention]``).
KINDS = ("comparison", "sweep", "contention")
POLICIES = ("least_loaded", "power_of_two")
DURATIONS = ("exponential", "fixed", "lognormal")
JOB_APIS = ("select_and_start", "place_job")
HEARTBEAT_PATHS = ("scheduler", "harness")
#: Faults on the server process (need the embedded server) and on the link (need the proxy).
SERVER_FAULTS = ("stop", "restart_empty", "pause", "kill_pubsub")
LINK_FAULTS = ("latency", "blackhole", "cut", "refuse")
#: Faults on a local cluster's shards (``[cluster]``; sim/cluster_target.py), each on one pool's shard.
CLUSTER_FAULTS = ("kill_primary", "pause_primary", "failover", "move_slot")
#: Faults on a local Sentinel group's primary (``[sentinel]``; sim/sentinel_target.py): SIGKILL or
#: SIGSTOP it, the sentinels promote the replica, and after ``duration_s`` it rejoins as a replica.
SENTINEL_FAULTS = ("sentinel_kill_primary", "sentinel_pause_primary")
FAULT_KINDS = SERVER_FAULTS + LINK_FAULTS + CLUSTER_FAULTS + SENTINEL_FAULTS
#: Faults that happen at one instant; the others last ``duration_s``.
INSTANT_FAULTS = ("restart_empty", "kill_pubsub", "cut", "failover", "move_slot")


def _num(name: str, value: Any, *, minimum: float = 0.0, strict: bool = False, maximum: float | None = None):
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if (
        not ok
        or value < minimum
        or (strict and value == minimum)
        or (maximum is not None and value > maximum)
    ):
        low = f"> {minimum}" if strict else f">= {minimum}"
        high = f" and <= {maximum}" if maximum is not None else ""
        raise ConfigError(name, value, f"a number {low}{high}")


def _int(name: str, value: Any, minimum: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(name, value, f"an integer >= {minimum}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExperimentSection:
    """What the run is called and what it compares."""

    name: str
    """Scenario name; the results folder is ``results/<name>/``."""
    description: str = ""
    """One line shown in the report."""
    seed: int = 1
    """Seed of the workload plan: the same seed gives the same plan."""
    duration_s: float = 30.0
    """Simulated time the workload runs, per architecture."""
    warmup_s: float = 2.0
    """Operations intended before this are run but not recorded (connections warm, caches filled)."""
    architectures: tuple[str, ...] = ("lockless",)
    """Architectures run on the identical plan, one after another, Redis flushed in between."""
    kind: str = "comparison"
    """comparison | sweep | contention. For ``sweep`` and ``contention`` every step (one
    rate, or one instance count and policy) is a phase of ``duration_s`` with ``warmup_s``."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ConfigError("experiment.name", self.name, "a non-empty name without '/'")
        if self.kind not in KINDS:
            raise ConfigError("experiment.kind", self.kind, " | ".join(KINDS))
        _int("experiment.seed", self.seed)
        _num("experiment.duration_s", self.duration_s, strict=True)
        _num("experiment.warmup_s", self.warmup_s)
        if self.warmup_s >= self.duration_s:
            raise ConfigError(
                "experiment.warmup_s", self.warmup_s, f"a number < duration_s ({self.duration_s})"
            )
        object.__setattr__(self, "architectures", tuple(self.architectures))
        if not self.architectures or len(set(self.architectures)) != len(self.architectures):
            raise ConfigError(
                "experiment.architectures", self.architectures, "a non-empty list without repeats"
            )
        for arch in self.architectures:
            if arch not in ARCHITECTURES:
                raise ConfigError("experiment.architectures", arch, " | ".join(ARCHITECTURES))


@dataclass(frozen=True, slots=True, kw_only=True)
class HarnessSection:
    """The harness's own bounds and rhythms (DESIGN.md section 8)."""

    time_scale: float = 1.0
    """Real seconds per simulated second (1.0 for latency runs)."""
    tick_ms: float = 1.0
    """The dispatcher wakes at most this often; heartbeats due in one tick share a pipeline."""
    spin_ms: float = 1.0
    """The last this-many ms before an operation's time are spent yielding, not sleeping
    (the selector's timeout has 1 ms resolution); 0 saves the CPU and costs up to 1 ms of lag."""
    max_lag_p99_ms: float = 10.0
    """A run whose harness lag P99 exceeds this is INVALID: its latencies are not presented."""
    max_batch: int = 500
    """Most heartbeats in one pipelined ``heartbeat_many``."""
    workers: int = 1
    """Worker processes, each driving a shard of nodes and instances (>1: scale-out)."""
    heartbeats_via: str = "scheduler"
    """Who writes node heartbeats to Redis. ``scheduler``: each tick's batch is a
    ``heartbeat_many`` call on the node's scheduler instance (under ``locked`` it takes the
    lock like every write). ``harness``: the harness writes them itself, as node agents do,
    with the library's store (same Lua script, same pipelining); instances see them only
    through Redis. Heartbeats are then the same Redis traffic for every architecture."""
    scheduler_processes: bool = False
    """Run each scheduler instance (the registry under test) in a process of its own, apart
    from the harness process that replays the plan and drives the heartbeats (``sim.remote``):
    the lag bound then measures the harness alone, and the scheduler's CPU shows up as its
    latency. Latencies then include two local socket hops (reported as ``ipc``)."""
    scheduler_nice: int = 0
    """Niceness added to the scheduler processes (0-19; only with ``scheduler_processes``).
    On a machine with fewer cores than busy processes, a CPU-bound scheduler (a ``locked``
    selection parsing 10,000 records) would otherwise preempt the harness and invalidate the
    run; niced, it waits for CPU instead, and that wait counts in its own latency."""
    quiet_s: float = 1.0
    """After the plan ends, in-flight operations get this long before the convergence check."""
    convergence_s: float = 10.0
    """Every cache must agree with Redis within this long after the quiet period."""
    invalidation_deadline_s: float = 2.0
    """A node removed (or dead past ``dead_after``) longer than this must no longer be admitted to."""
    check_interval_s: float = 1.0
    """How often the capacity invariant is checked straight from Redis."""
    monitor_interval_s: float = 0.05
    """How often modes are polled and the loop's own lag is sampled."""

    def __post_init__(self) -> None:
        _num("harness.time_scale", self.time_scale, strict=True)
        _num("harness.tick_ms", self.tick_ms, strict=True, maximum=100)
        _num("harness.spin_ms", self.spin_ms, maximum=10)
        _num("harness.max_lag_p99_ms", self.max_lag_p99_ms, strict=True)
        _int("harness.max_batch", self.max_batch, 1)
        _int("harness.workers", self.workers, 1)
        if self.heartbeats_via not in HEARTBEAT_PATHS:
            raise ConfigError("harness.heartbeats_via", self.heartbeats_via, " | ".join(HEARTBEAT_PATHS))
        if not isinstance(self.scheduler_processes, bool):
            raise ConfigError("harness.scheduler_processes", self.scheduler_processes, "true | false")
        if not isinstance(self.scheduler_nice, int) or not 0 <= self.scheduler_nice <= 19:
            raise ConfigError("harness.scheduler_nice", self.scheduler_nice, "an integer 0..19")
        if self.scheduler_processes and self.workers > 1:
            raise ConfigError(
                "harness.scheduler_processes",
                self.scheduler_processes,
                "false when harness.workers > 1 (workers run their instances in their own loop)",
            )
        for name in ("quiet_s", "convergence_s", "invalidation_deadline_s"):
            _num(f"harness.{name}", getattr(self, name))
        for name in ("check_interval_s", "monitor_interval_s"):
            _num(f"harness.{name}", getattr(self, name), strict=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodesSection:
    """The worker nodes: how many, what they offer, how they heartbeat and fail."""

    count: int = 100
    """Nodes in the cluster (registered before the clock starts)."""
    pools: tuple[str, ...] = ("default",)
    """Pools; nodes are dealt round-robin across them."""
    max_jobs: int = 8
    """Slots per node."""
    resources: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({"cpu": 16.0}))
    """Capacities every node declares."""
    labels: tuple[str, ...] = ()
    """Labels a node may carry; each with probability ``label_probability``."""
    label_probability: float = 0.5
    """Chance that a node carries each label."""
    heartbeat_interval_s: float = 5.0
    """Mean time between a node's heartbeats."""
    heartbeat_jitter: float = 0.1
    """Each interval is spread uniformly by +- this fraction."""
    load_change_probability: float = 0.0
    """Chance a heartbeat reports a new load (a non-quiet heartbeat: new version and event)."""
    crash_rate_per_hour: float = 0.0
    """Per node: crashes (stops heartbeating, no goodbye) per hour."""
    leave_rate_per_hour: float = 0.0
    """Per node: graceful leaves (remove_node) per hour."""
    rejoin_after_s: float = 10.0
    """Mean (exponential) time before a crashed or departed node registers again."""

    def __post_init__(self) -> None:
        _int("nodes.count", self.count, 1)
        object.__setattr__(self, "pools", tuple(self.pools))
        try:  # the library's naming rules for pools, reported under this field
            RegistryConfig(pools=self.pools)
        except ConfigError as exc:
            raise ConfigError("nodes.pools", exc.value, exc.allowed) from None
        _int("nodes.max_jobs", self.max_jobs, 1)
        if not isinstance(self.resources, Mapping):
            raise ConfigError("nodes.resources", self.resources, "a table of name = number")
        for name, amount in self.resources.items():
            _num(f"nodes.resources.{name}", amount)
        object.__setattr__(self, "resources", MappingProxyType(dict(self.resources)))
        object.__setattr__(self, "labels", tuple(self.labels))
        _num("nodes.label_probability", self.label_probability, maximum=1.0)
        _num("nodes.heartbeat_interval_s", self.heartbeat_interval_s, strict=True)
        _num("nodes.heartbeat_jitter", self.heartbeat_jitter, maximum=0.9)
        _num("nodes.load_change_probability", self.load_change_probability, maximum=1.0)
        for name in ("crash_rate_per_hour", "leave_rate_per_hour"):
            _num(f"nodes.{name}", getattr(self, name))
        _num("nodes.rejoin_after_s", self.rejoin_after_s, strict=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobAsk:
    """One kind of job: how often it comes, and what it needs from a node."""

    weight: float = 1.0
    resources: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _num("jobs.asks.weight", self.weight, strict=True)
        if not isinstance(self.resources, Mapping):
            raise ConfigError("jobs.asks.resources", self.resources, "a table of name = number")
        for name, amount in self.resources.items():
            _num(f"jobs.asks.resources.{name}", amount)
        object.__setattr__(self, "resources", MappingProxyType(dict(self.resources)))
        object.__setattr__(self, "labels", tuple(self.labels))


@dataclass(frozen=True, slots=True, kw_only=True)
class JobsSection:
    """Job arrivals and how the scheduler places them."""

    arrival_rate_per_s: float = 10.0
    """Poisson arrival rate over the whole cluster."""
    duration: str = "exponential"
    """Distribution of job durations: exponential | fixed | lognormal."""
    duration_mean_s: float = 5.0
    """Mean job duration."""
    duration_sigma: float = 0.5
    """Shape (sigma of the log) for ``lognormal``."""
    api: str = "select_and_start"
    """``select_and_start``: select_nodes then job_start (select and job_start timed apart);
    ``place_job``: the registry's own place_job (timed as ``place``)."""
    candidates: int = 3
    """Nodes asked of select_nodes; the rest are fallbacks when admission rejects."""
    asks: tuple[JobAsk, ...] = (JobAsk(),)
    """Kinds of job, chosen by weight."""
    get_rate_per_s: float = 0.0
    """Poisson rate of get_node reads of random nodes (the ``get`` operation)."""
    utilization: float = 0.0
    """Target busy slots / slots (0: off, ``duration_mean_s`` as given and the cluster starts
    empty). When > 0 the cluster starts that full (jobs already running, their remaining
    durations drawn from ``duration``) and ``duration_mean_s`` is replaced by
    ``utilization * slots / arrival rate``, so arrivals and finishes balance at this level
    at whatever rate a phase runs (per-architecture rates, sweep steps)."""

    def __post_init__(self) -> None:
        _num("jobs.arrival_rate_per_s", self.arrival_rate_per_s)
        _num("jobs.utilization", self.utilization, maximum=0.99)
        if self.duration not in DURATIONS:
            raise ConfigError("jobs.duration", self.duration, " | ".join(DURATIONS))
        _num("jobs.duration_mean_s", self.duration_mean_s, strict=True)
        _num("jobs.duration_sigma", self.duration_sigma)
        if self.api not in JOB_APIS:
            raise ConfigError("jobs.api", self.api, " | ".join(JOB_APIS))
        _int("jobs.candidates", self.candidates, 1)
        object.__setattr__(self, "asks", tuple(self.asks))
        if not self.asks:
            raise ConfigError("jobs.asks", self.asks, "at least one [[jobs.asks]] table")
        _num("jobs.get_rate_per_s", self.get_rate_per_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulersSection:
    """Scheduler instances: each has its own connections and its own registry instance."""

    instances: int = 2
    """Instances per run (dealt across workers when ``harness.workers`` > 1)."""

    def __post_init__(self) -> None:
        _int("schedulers.instances", self.instances, 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultSpec:
    """One fault: what, when, for how long."""

    kind: str
    """stop | restart_empty | pause | kill_pubsub (server); latency | blackhole | cut | refuse (link);
    kill_primary | pause_primary | failover | move_slot (a cluster's shard, see ``pool``);
    sentinel_kill_primary | sentinel_pause_primary (the primary of a Sentinel group, ``[sentinel]``)."""
    at_s: float
    """Simulated time the fault starts."""
    duration_s: float = 0.0
    """How long it lasts (0 and ignored for the instant faults restart_empty, kill_pubsub, cut,
    failover, move_slot). kill_primary: how long the killed node stays down before it is started
    again (it rejoins as a replica); pause_primary: how long the primary is frozen.
    sentinel_kill_primary / sentinel_pause_primary: from ``at_s`` until the old primary is brought
    back (restarted empty, or resumed) as a replica of the new one; never before the sentinels
    have promoted the replica, however short."""
    delay_ms: float = 0.0
    """Added one-way delay, for ``latency``."""
    pool: str = ""
    """Cluster faults: the pool whose shard is hit (the primary owning its slot; move_slot moves
    that slot to the next primary). Empty for the other kinds."""
    lose_writes_s: float = 0.0
    """kill_primary, sentinel_kill_primary: for this long before the kill the primary's replica
    is cut off (frozen, its replication link closed: a lagging replica), so the writes
    acknowledged meanwhile are lost when it takes over. 0: the primary is killed with its
    replica in step (loses only what was in flight). The kill happens at ``at_s + lose_writes_s``."""

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ConfigError("faults.kind", self.kind, " | ".join(FAULT_KINDS))
        _num("faults.at_s", self.at_s)
        _num("faults.duration_s", self.duration_s)
        if self.kind not in INSTANT_FAULTS and self.duration_s <= 0:
            raise ConfigError("faults.duration_s", self.duration_s, f"a number > 0 for a {self.kind} fault")
        _num("faults.delay_ms", self.delay_ms)
        if self.kind == "latency" and self.delay_ms <= 0:
            raise ConfigError("faults.delay_ms", self.delay_ms, "a number > 0 for a latency fault")
        if not isinstance(self.pool, str):
            raise ConfigError("faults.pool", self.pool, "a pool name (a string)")
        if self.kind in CLUSTER_FAULTS and not self.pool:
            raise ConfigError("faults.pool", self.pool, f"the pool whose shard the {self.kind} fault hits")
        if self.kind not in CLUSTER_FAULTS and self.pool:
            raise ConfigError(
                "faults.pool", self.pool, f'"" (only cluster faults name a pool, not {self.kind})'
            )
        _num("faults.lose_writes_s", self.lose_writes_s)
        if self.lose_writes_s and self.kind not in ("kill_primary", "sentinel_kill_primary"):
            raise ConfigError("faults.lose_writes_s", self.lose_writes_s, f"0 for a {self.kind} fault")

    @property
    def needs_proxy(self) -> bool:
        return self.kind in LINK_FAULTS

    @property
    def on_cluster(self) -> bool:
        return self.kind in CLUSTER_FAULTS

    @property
    def on_sentinel(self) -> bool:
        return self.kind in SENTINEL_FAULTS


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSection:
    """Run against a Redis Cluster instead of one server (DESIGN.md section 8a; sim/cluster_target.py)."""

    enabled: bool = False
    """True: the harness starts a local cluster (``sim.cluster_server.LocalCluster``) of the server
    ``LOCKLESS_SERVER`` names, or uses the cluster ``--redis-url redis+cluster://...`` names (then
    the cluster faults are refused: the harness breaks only what it started)."""
    primaries: int = 3
    """Primaries (shards); the slots are split evenly between them."""
    replicas_per_primary: int = 1
    """Replicas of each primary (at least 1 for kill_primary, pause_primary and failover)."""
    node_timeout_ms: int = 1000
    """``cluster-node-timeout``: a node silent this long is suspected; a failover takes ~1.5-3x it."""

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError("cluster.enabled", self.enabled, "true | false")
        _int("cluster.primaries", self.primaries, 1)
        _int("cluster.replicas_per_primary", self.replicas_per_primary, 0)
        _int("cluster.node_timeout_ms", self.node_timeout_ms, 100)


@dataclass(frozen=True, slots=True, kw_only=True)
class SentinelSection:
    """Run against a primary and a replica under Redis Sentinel instead of one server
    (sim/sentinel_target.py; the library's ``redis+sentinel://`` URLs)."""

    enabled: bool = False
    """True: the harness starts a :class:`~sim.sentinel_server.SentinelGroup` (a primary, a replica
    and ``sentinels`` sentinels) of the server ``LOCKLESS_SERVER`` names, and every client of the
    run (the registries, the harness's heartbeat writer and checker) finds the primary through
    the sentinels."""
    sentinels: int = 3
    """Sentinel processes (at least 1)."""
    quorum: int = 2
    """Sentinels that must agree the primary is down before a failover (1 to ``sentinels``)."""
    down_after_ms: int = 1000
    """``down-after-milliseconds``: a primary silent this long is subjectively down; a failover
    takes about 2-3x it."""
    failover_timeout_ms: int = 2000
    """``failover-timeout``: a sentinel that voted for a failover of this primary starts none for
    twice this long (Sentinel's default, 180000, would stall the next fault of a run)."""

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError("sentinel.enabled", self.enabled, "true | false")
        _int("sentinel.sentinels", self.sentinels, 1)
        if (
            not isinstance(self.quorum, int)
            or isinstance(self.quorum, bool)
            or not 1 <= self.quorum <= self.sentinels
        ):
            raise ConfigError("sentinel.quorum", self.quorum, f"an integer 1..sentinels ({self.sentinels})")
        _int("sentinel.down_after_ms", self.down_after_ms, 100)
        _int("sentinel.failover_timeout_ms", self.failover_timeout_ms, 1000)


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchOverride:
    """Per-architecture settings of a ``comparison`` (``[overrides.<arch>]``): a design whose
    knee is lower runs at a rate below it, and long enough for its sample count."""

    arrival_rate_per_s: float | None = None
    """Replaces ``jobs.arrival_rate_per_s`` for this architecture."""
    duration_s: float | None = None
    """Replaces ``experiment.duration_s`` for this architecture."""

    def __post_init__(self) -> None:
        if self.arrival_rate_per_s is not None:
            _num("overrides.arrival_rate_per_s", self.arrival_rate_per_s, strict=True)
        if self.duration_s is not None:
            _num("overrides.duration_s", self.duration_s, strict=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepSection:
    """The knee sweep (``experiment.kind = "sweep"``): offered placement rate raised step by step.

    Each architecture runs the rates in order, one phase of ``experiment.duration_s`` each,
    until a step fails and ``steps_past_knee`` more have run. A step passes when the phase is
    valid (harness lag within its bound), its placement P99 is within ``p99_bound_ms`` (with
    fewer than 1,000 placements the maximum stands in for the P99: stricter, and said so),
    and failed or unplaced arrivals are at most ``max_failure_ratio``. The knee is the highest
    passing rate before the first failure.
    """

    rates_per_s: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    """Offered placement rates (jobs/s over the cluster), strictly ascending."""
    p99_bound_ms: float = 100.0
    """A step whose placement P99 exceeds this is past the knee."""
    max_failure_ratio: float = 0.01
    """(errors + unplaced + abandoned) / arrivals above this fails a step."""
    steps_past_knee: int = 1
    """Steps run after the first failing one (their latencies show the curve bending)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "rates_per_s", tuple(self.rates_per_s))
        if not self.rates_per_s:
            raise ConfigError("sweep.rates_per_s", self.rates_per_s, "a non-empty list of rates")
        for rate in self.rates_per_s:
            _num("sweep.rates_per_s", rate, strict=True)
        if any(b <= a for a, b in zip(self.rates_per_s, self.rates_per_s[1:], strict=False)):
            raise ConfigError("sweep.rates_per_s", self.rates_per_s, "strictly ascending rates")
        _num("sweep.p99_bound_ms", self.p99_bound_ms, strict=True)
        _num("sweep.max_failure_ratio", self.max_failure_ratio, maximum=1.0)
        _int("sweep.steps_past_knee", self.steps_past_knee)


@dataclass(frozen=True, slots=True, kw_only=True)
class ContentionSection:
    """The contention experiment (``experiment.kind = "contention"``).

    For each architecture, policy and instance count, one phase of ``experiment.duration_s``
    with the *same total* arrival rate (``jobs.arrival_rate_per_s``) dealt over the instances,
    so only the number of concurrent deciders changes.
    """

    instances: tuple[int, ...] = (1, 2, 4, 8)
    """Scheduler instance counts, strictly ascending."""
    policies: tuple[str, ...] = POLICIES
    """Selection policies: least_loaded | power_of_two."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "instances", tuple(self.instances))
        object.__setattr__(self, "policies", tuple(self.policies))
        if not self.instances:
            raise ConfigError("contention.instances", self.instances, "a non-empty list of counts")
        for n in self.instances:
            _int("contention.instances", n, 1)
        if any(b <= a for a, b in zip(self.instances, self.instances[1:], strict=False)):
            raise ConfigError("contention.instances", self.instances, "strictly ascending counts")
        if not self.policies or len(set(self.policies)) != len(self.policies):
            raise ConfigError("contention.policies", self.policies, "a non-empty list without repeats")
        for policy in self.policies:
            if policy not in POLICIES:
                raise ConfigError("contention.policies", policy, " | ".join(POLICIES))


@dataclass(frozen=True, slots=True, kw_only=True)
class ExperimentConfig:
    """A whole experiment file."""

    experiment: ExperimentSection
    harness: HarnessSection = field(default_factory=HarnessSection)
    nodes: NodesSection = field(default_factory=NodesSection)
    jobs: JobsSection = field(default_factory=JobsSection)
    schedulers: SchedulersSection = field(default_factory=SchedulersSection)
    faults: tuple[FaultSpec, ...] = ()
    cluster: ClusterSection = field(default_factory=ClusterSection)
    sentinel: SentinelSection = field(default_factory=SentinelSection)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    """The library's configuration; ``pools`` comes from ``nodes.pools``, URL and namespace from the run."""
    baselines: BaselineOptions = field(default_factory=BaselineOptions)
    """Settings of the baselines (``ttl-cache`` relist period, pool read batch)."""
    overrides: Mapping[str, ArchOverride] = field(default_factory=lambda: MappingProxyType({}))
    """Per-architecture rate and duration (``comparison`` only)."""
    sweep: SweepSection | None = None
    """Required when ``experiment.kind = "sweep"``, refused otherwise."""
    contention: ContentionSection | None = None
    """Required when ``experiment.kind = "contention"``, refused otherwise."""

    def __post_init__(self) -> None:
        kind = self.experiment.kind
        for section in ("sweep", "contention"):
            present = getattr(self, section) is not None
            if present != (kind == section):
                raise ConfigError(
                    section,
                    "(table)" if present else None,
                    f"a [{section}] table exactly when experiment.kind = '{section}' (kind is '{kind}')",
                )
        for arch in self.overrides:
            if arch not in self.experiment.architectures:
                raise ConfigError(
                    f"overrides.{arch}",
                    "(table)",
                    "one of experiment.architectures: " + " | ".join(self.experiment.architectures),
                )
        if self.overrides and kind != "comparison":
            raise ConfigError("overrides", "(table)", "only with experiment.kind = 'comparison'")
        object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))
        object.__setattr__(self, "faults", tuple(sorted(self.faults, key=lambda f: f.at_s)))
        for fault in self.faults:
            if fault.at_s >= self.experiment.duration_s:
                raise ConfigError(
                    "faults.at_s",
                    fault.at_s,
                    f"a time < experiment.duration_s ({self.experiment.duration_s})",
                )
        if self.harness.workers > self.schedulers.instances:
            raise ConfigError(
                "harness.workers",
                self.harness.workers,
                f"at most schedulers.instances ({self.schedulers.instances})",
            )
        if set(self.registry.pools) != set(self.nodes.pools):
            object.__setattr__(self, "registry", dataclasses.replace(self.registry, pools=self.nodes.pools))
        self._check_sentinel()  # first: it names a [cluster] beside [sentinel] as the mistake
        self._check_cluster()

    def _check_cluster(self) -> None:
        """Cluster faults need [cluster]; a cluster takes no single-server or link fault."""
        if self.cluster.enabled and self.harness.workers > 1:
            raise ConfigError("harness.workers", self.harness.workers, "1 with [cluster] enabled")
        if self.cluster.enabled and set(self.experiment.architectures) != {"lockless"}:
            # The baselines read whole pools through a client of one server (sim/architectures/
            # pool_read.py, redis_select.py); only the library routes by slot.
            raise ConfigError(
                "experiment.architectures",
                list(self.experiment.architectures),
                '["lockless"] with [cluster] enabled',
            )
        for fault in self.faults:
            if fault.on_cluster and not self.cluster.enabled:
                raise ConfigError("faults.kind", fault.kind, "a cluster fault needs [cluster] enabled = true")
            if self.cluster.enabled and not fault.on_cluster:
                raise ConfigError("faults.kind", fault.kind, "on a cluster: " + " | ".join(CLUSTER_FAULTS))
            if fault.on_cluster and fault.pool not in self.nodes.pools:
                raise ConfigError("faults.pool", fault.pool, f"one of nodes.pools {list(self.nodes.pools)}")
            if fault.kind != "move_slot" and fault.on_cluster and self.cluster.replicas_per_primary < 1:
                raise ConfigError(
                    "cluster.replicas_per_primary", 0, f">= 1 for a {fault.kind} fault (a replica takes over)"
                )

    def _check_sentinel(self) -> None:
        """Sentinel faults need [sentinel]; a Sentinel group takes no other fault, and no [cluster]."""
        sentinel = self.sentinel
        if sentinel.enabled and self.cluster.enabled:
            raise ConfigError(
                "sentinel.enabled", True, "false with [cluster] enabled (one deployment per run)"
            )
        if sentinel.enabled and self.harness.workers > 1:
            raise ConfigError("harness.workers", self.harness.workers, "1 with [sentinel] enabled")
        if sentinel.enabled and set(self.experiment.architectures) != {"lockless"}:
            # Only the library follows a failover; the baselines' clients stay on the old primary.
            raise ConfigError(
                "experiment.architectures",
                list(self.experiment.architectures),
                '["lockless"] with [sentinel] enabled',
            )
        for fault in self.faults:
            if fault.on_sentinel and not sentinel.enabled:
                raise ConfigError(
                    "faults.kind", fault.kind, "a Sentinel fault needs [sentinel] enabled = true"
                )
            if sentinel.enabled and not fault.on_sentinel:
                raise ConfigError(
                    "faults.kind", fault.kind, "with [sentinel]: " + " | ".join(SENTINEL_FAULTS)
                )
            if fault.on_sentinel and fault.lose_writes_s * 1000 >= sentinel.down_after_ms:
                # Sentinel promotes no replica it has seen down: one frozen that long stalls the failover.
                raise ConfigError(
                    "faults.lose_writes_s",
                    fault.lose_writes_s,
                    f"a number < sentinel.down_after_ms / 1000 ({sentinel.down_after_ms / 1000:g} s): "
                    "the sentinels mark a replica silent that long down and promote none",
                )
        # One failover at a time: the group has one replica, which the old primary becomes again
        # only at the fault's end (a fault before that finds nothing to promote).
        ordered = [f for f in self.faults if f.on_sentinel]
        for before, after in itertools.pairwise(ordered):
            free_at = before.at_s + before.duration_s
            if after.at_s <= free_at:
                raise ConfigError(
                    "faults.at_s",
                    after.at_s,
                    f"a time after the previous Sentinel fault has ended (> {free_at:g}, its at_s + "
                    "duration_s: the old primary must be back as the replica first)",
                )

    @property
    def slots(self) -> int:
        """Job slots in the cluster (nodes x max_jobs): the denominator of utilization."""
        return self.nodes.count * self.nodes.max_jobs

    def with_rate(self, rate_per_s: float, *, duration_s: float | None = None) -> ExperimentConfig:
        """This experiment at another arrival rate (and duration), utilization kept (``jobs.utilization``)."""
        jobs = dataclasses.replace(self.jobs, arrival_rate_per_s=rate_per_s)
        experiment = self.experiment
        if duration_s is not None and duration_s != experiment.duration_s:
            experiment = dataclasses.replace(
                experiment, duration_s=duration_s, warmup_s=min(experiment.warmup_s, duration_s / 4)
            )
        return dataclasses.replace(self, jobs=jobs, experiment=experiment)

    def for_architecture(self, arch: str) -> ExperimentConfig:
        """The config one architecture's phase runs: its overrides applied, job durations derived."""
        override = self.overrides.get(arch)
        config = self
        if override is not None:
            config = self.with_rate(
                override.arrival_rate_per_s or self.jobs.arrival_rate_per_s, duration_s=override.duration_s
            )
        return config.resolved_jobs()

    def resolved_jobs(self) -> ExperimentConfig:
        """With ``jobs.utilization`` > 0: ``duration_mean_s`` set so arrivals keep that utilization."""
        jobs = self.jobs
        if jobs.utilization <= 0 or jobs.arrival_rate_per_s <= 0:
            return self
        mean = jobs.utilization * self.slots / jobs.arrival_rate_per_s
        return dataclasses.replace(self, jobs=dataclasses.replace(jobs, duration_mean_s=mean))

    @property
    def needs_proxy(self) -> bool:
        return any(f.needs_proxy for f in self.faults)

    @property
    def needs_server(self) -> bool:
        """Faults that need a server (or cluster) the harness started itself."""
        return any(not f.needs_proxy for f in self.faults)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (TOML-writable) of the resolved config, defaults included."""
        return _plain(self)


_SECTIONS: dict[str, type] = {
    "experiment": ExperimentSection,
    "harness": HarnessSection,
    "nodes": NodesSection,
    "jobs": JobsSection,
    "schedulers": SchedulersSection,
    "baselines": BaselineOptions,
    "sweep": SweepSection,
    "contention": ContentionSection,
    "cluster": ClusterSection,
    "sentinel": SentinelSection,
}


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Build a section dataclass; unknown keys and wrong types name the dotted field."""
    if not isinstance(data, Mapping):
        raise ConfigError(prefix or "config", data, "a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}", data[unknown[0]], f"one of the keys {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _coerce(f"{prefix}.{name}", hints[name], value)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        missing = [
            n
            for n, f in fields.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and n not in data
        ]
        raise ConfigError(f"{prefix}.{missing[0]}" if missing else prefix, None, f"a value ({exc})") from None


def _coerce(name: str, hint: Any, value: Any) -> Any:
    # Type checks that dataclass validation cannot do well (TOML gives int for 5, float for 5.0).
    origin = typing.get_origin(hint)
    if hint is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(name, value, "a number")
        return float(value)
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(name, value, "an integer")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(name, value, "a string")
        return value
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list | tuple):
            raise ConfigError(name, value, "a list")
        if dataclasses.is_dataclass(item):
            return tuple(_build(item, v, name) for v in value)
        return tuple(_coerce(name, item, v) for v in value)
    if origin is Mapping or hint is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(name, value, "a table of name = number")
        return {str(k): _coerce(f"{name}.{k}", float, v) for k, v in value.items()}
    return value


def from_mapping(data: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate an experiment from plain data (a parsed TOML document)."""
    allowed = [*_SECTIONS, "faults", "registry", "overrides"]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(unknown[0], data[unknown[0]], f"one of the sections {', '.join(allowed)}")
    if "experiment" not in data:
        raise ConfigError("experiment", None, "an [experiment] table with at least name")
    kwargs: dict[str, Any] = {
        name: _build(cls, data[name], name) for name, cls in _SECTIONS.items() if name in data
    }
    if "faults" in data:
        kwargs["faults"] = _coerce("faults", tuple[FaultSpec, ...], data["faults"])
    if "overrides" in data:
        overrides = data["overrides"]
        if not isinstance(overrides, Mapping):
            raise ConfigError("overrides", overrides, "a table of [overrides.<architecture>] tables")
        kwargs["overrides"] = {
            str(arch): _build(ArchOverride, table, f"overrides.{arch}") for arch, table in overrides.items()
        }
    registry = dict(data.get("registry", {}))
    if not isinstance(data.get("registry", {}), Mapping):
        raise ConfigError("registry", data["registry"], "a table")
    nodes = kwargs.get("nodes", NodesSection())
    registry.setdefault("pools", list(nodes.pools))
    try:
        kwargs["registry"] = RegistryConfig.from_mapping(registry, prefix="registry.")
    except ConfigError as exc:
        # The library names fields relative to its own root; say where they sit in the file.
        field_name = exc.field if exc.field.startswith("registry") else f"registry.{exc.field}"
        raise ConfigError(field_name, exc.value, exc.allowed) from None
    return ExperimentConfig(**kwargs)


def load_toml(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment file. Raises ConfigError naming the bad field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "(file)", f"valid TOML ({exc})") from None
    except OSError as exc:
        raise ConfigError(str(path), "(file)", f"a readable experiment file ({exc.strerror})") from None
    return from_mapping(data)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {
            f.name: _plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if getattr(value, f.name) is not None
        }
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list | frozenset | set):
        return [_plain(v) for v in value]
    if hasattr(value, "value") and not isinstance(value, int | float | str):
        return value.value  # enums
    return value
