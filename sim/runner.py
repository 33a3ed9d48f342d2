"""Orchestration: server, proxy, and one phase per architecture on the identical plan.

A run starts its own ``redis-server`` (or uses ``--redis-url``), puts a
:class:`FaultProxy` in front of it when the experiment has link faults, and then runs
the architectures **sequentially**: the same seeded plan is replayed for each, in its own
key namespace, and the server is flushed in between. Sequential is the simple, honest
choice on a 2-core machine: interleaved architectures would compete for the same CPU
and the same Redis, and each would slow the other.

A phase (one architecture):

1. bootstrap - every node is registered (pipelined heartbeats carrying the spec) by the
   checker's own store, before the clock starts, so start-up is not measured;
2. every scheduler instance builds and starts its registry (a lockless one relists);
3. the dispatcher replays the plan; the capacity, mode and loop monitors run alongside;
4. after the plan: in-flight operations get ``quiet_s``, then caches must converge;
5. the registries' own metrics (propagation delay, counters) are merged in.

Two settings move work out of the harness's event loop (see experiments/README.md):
``harness.scheduler_processes`` runs every scheduler instance in a process of its own
(``sim.remote``), and ``harness.heartbeats_via = "harness"`` has the harness write node
heartbeats to Redis itself instead of through the instances.

With ``harness.workers`` > 1, steps 2-5 run in worker processes (spawned), each on its
shard of nodes and instances, pinned to one wall-clock start; the parent bootstraps,
injects the faults, runs the capacity check, and merges the workers' recorders
(encoded HDR histograms: percentiles are never averaged).

With ``[cluster] enabled`` the phases run against a :class:`~sim.cluster_target.ClusterTarget`
instead of one server (a local 3+3 cluster, or ``--redis-url redis+cluster://...``): the
registries' writes are recorded as acknowledged (``sim.acks``) so that each cluster fault
can count the acknowledged writes it lost, and the phase ends with the fault timings
(``ClusterTarget.end_phase``). The probe (commands per operation on one server) is not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import multiprocessing
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from lockless import (
    ConfigError,
    Heartbeat,
    LocklessError,
    RedisStore,
    Registry,
    RegistryConfig,
    cancel_and_wait,
)
from sim.acks import AckingRegistry, AckingSink
from sim.architectures import build
from sim.bridge import Bridge
from sim.checks import ModeWatch, capacity_sweep, capacity_watch, converge, loop_watch
from sim.cluster_target import ClusterTarget
from sim.config import ExperimentConfig, from_mapping
from sim.dispatcher import Dispatcher
from sim.heartbeats import CpuWindow, keep_alive, refresh_liveness
from sim.injector import FaultInjector
from sim.model.plan import Cluster, Planner
from sim.model.prefill import initial_jobs
from sim.probe import phase_commands, run_probe, server_stats
from sim.proxy import FaultProxy
from sim.recorder import Recorder
from sim.redis_server import RedisServer
from sim.remote import SchedulerProcesses
from sim.sentinel_target import SentinelTarget

#: Progress callback: (architecture, elapsed simulated s, duration s, ops sent, lag P99 ms).
Progress = Callable[[str, float, float, int, float], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """Where a phase's clients connect."""

    registry_url: str
    """What the registries use (the proxy's URL when link faults are planned)."""
    checker_url: str
    """What the harness's own checker uses: the server itself, never through the proxy."""
    namespace: str


@dataclass(slots=True)
class RunOutcome:
    """Everything a run produced, before it is written out."""

    config: ExperimentConfig
    recorders: dict[str, Recorder] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)


def registry_config(config: ExperimentConfig, target: Target, instance: int) -> RegistryConfig:
    """The library config of one instance: the run's URL and namespace, a per-instance seed."""
    base = config.registry
    return dataclasses.replace(
        base,
        redis=dataclasses.replace(base.redis, url=target.registry_url, namespace=target.namespace),
        cache=dataclasses.replace(base.cache, seed=config.experiment.seed * 1000 + instance),
    )


async def bootstrap(
    store: RedisStore,
    cluster: Cluster,
    batch: int = 1000,
    jobs: dict[int, list[tuple[str, float]]] | None = None,
) -> None:
    """Register every node of ``cluster`` (pipelined heartbeats with the spec re-create unknown nodes).

    ``jobs`` (``sim.model.prefill``): node index -> jobs already running there, registered
    as the node's job set (so ``current_jobs`` starts at their count).
    """
    await store.load_scripts()
    jobs = jobs or {}
    items = list(cluster.specs.items())
    for i in range(0, len(items), batch):
        await store.heartbeat_many(
            [
                Heartbeat(
                    pool=s.pool,
                    node_id=s.node_id,
                    spec=s,
                    running_jobs=[job_id for job_id, _ in jobs[idx]] if idx in jobs else None,
                )
                for idx, s in items[i : i + batch]
            ]
        )


async def shard_phase(
    config: ExperimentConfig,
    arch: str,
    target: Target,
    *,
    shard: int = 0,
    shards: int = 1,
    server: RedisServer | ClusterTarget | SentinelTarget | None = None,
    proxy: FaultProxy | None = None,
    start_wall: float | None = None,
    progress: Progress | None = None,
) -> Recorder:
    """Run one architecture on one shard (the whole cluster when ``shards`` is 1)."""
    harness = config.harness
    bridge = Bridge(scale=harness.time_scale, spin_s=harness.spin_ms / 1000)
    owns_faults = shards == 1
    checker = RedisStore(
        dataclasses.replace(config.registry.redis, url=target.checker_url, namespace=target.namespace),
        config.registry.nodes,
    )
    planner = Planner(config, shard=shard, shards=shards, faults=owns_faults)
    prefill = initial_jobs(config, planner.cluster)
    if shards == 1:
        await bootstrap(checker, planner.cluster, jobs=prefill)
    schedulers: SchedulerProcesses | None = None
    registries: dict[int, Registry] = {}
    agents: RedisStore | None = None
    if harness.heartbeats_via == "harness":
        # The node agents' own client: straight to the server (a link fault is the schedulers' link).
        agents = RedisStore(
            dataclasses.replace(config.registry.redis, url=target.checker_url, namespace=target.namespace),
            config.registry.nodes,
        )
    monitors: list[asyncio.Task[Any]] = []
    rec: Recorder | None = None
    # A deployment that fails over (a cluster, a Sentinel group): writes acknowledged are recorded.
    cluster = server if isinstance(server, ClusterTarget | SentinelTarget) else None
    try:
        if harness.scheduler_processes:
            # The system under test in processes of its own: see sim/remote.py.
            schedulers = SchedulerProcesses(
                arch,
                {k: registry_config(config, target, k) for k in planner.cluster.instances},
                nice=harness.scheduler_nice,
                options=config.baselines,
            )
            registries = dict(await schedulers.start())
        else:
            registries = {
                k: build(
                    arch, registry_config(config, target, k), instance=f"{arch}-{k}", options=config.baselines
                )
                for k in planner.cluster.instances
            }
        await asyncio.gather(*(r.start() for r in registries.values()))
        if agents is not None:
            await agents.load_scripts()
        # The nodes heartbeat while the schedulers start (at 100,000 nodes that takes longer
        # than dead_after): without this the reapers would start by reaping the cluster.
        await refresh_liveness(checker, planner.cluster)
        heartbeat_sink: Any = agents
        if cluster is not None:
            # Every write Redis acknowledges is recorded: each cluster fault counts what it lost.
            ledger = cluster.begin_phase(target.namespace, config.nodes.pools)
            registries = {k: AckingRegistry(r, ledger) for k, r in registries.items()}
            heartbeat_sink = AckingSink(agents, ledger) if agents is not None else None
        # Everything built so far lives for the whole phase: move it out of the collector's
        # reach, so a full collection does not walk 100,000 nodes' worth of objects mid-run.
        gc.collect()
        gc.freeze()
        t0 = bridge.begin(bridge.now() + 0.05) if start_wall is None else bridge.begin_at_wall(start_wall)
        rec = Recorder(arch, t0=t0, warmup_s=config.experiment.warmup_s * harness.time_scale)
        if schedulers is not None:
            for remote in schedulers.registries.values():
                remote.on_ipc = _ipc_recorder(rec, bridge)
        injector = None
        if owns_faults and config.faults:
            injector = FaultInjector(
                config.faults, server=server, proxy=proxy, recorders=[rec], clock=bridge.now
            )
        dispatcher = Dispatcher(
            config=config,
            planner=planner,
            registries=registries,
            bridge=bridge,
            recorder=rec,
            on_fault=injector,
            heartbeat_sink=heartbeat_sink,
            initial_jobs=prefill,
        )
        modes = ModeWatch(registries, rec, bridge)
        monitors = [
            asyncio.create_task(modes.run(harness.monitor_interval_s)),
            asyncio.create_task(loop_watch(rec, bridge, harness.monitor_interval_s)),
            asyncio.create_task(
                _utilization_watch(
                    dispatcher, rec, bridge, len(planner.cluster.specs) * config.nodes.max_jobs,
                    harness.monitor_interval_s,
                )
            ),
        ]
        monitors.append(
            asyncio.create_task(
                capacity_watch(checker, dispatcher.take_touched, rec, bridge, harness.check_interval_s)
            )
        )
        if progress is not None:
            monitors.append(
                asyncio.create_task(_report_progress(progress, arch, dispatcher, rec, bridge, config))
            )
        me, cpu0, wall0 = psutil.Process(), psutil.Process().cpu_times(), bridge.now()
        redis_proc = _process(server)
        redis_cpu0 = _cpu(redis_proc)
        if cluster is not None:
            cluster.cpu_mark()
        if schedulers is not None:
            schedulers.cpu_mark()
        rec.event(t0, "phase_start", arch)
        window = None
        if shards == 1:  # the steady state's CPU per heartbeat (sim/heartbeats.py)
            # One server's CPU and commandstats; a cluster's nodes are summed phase-wide instead
            # (redis_cpu_pct below), so its window holds the harness and the schedulers only.
            window = CpuWindow(
                redis_pid=redis_proc.pid if redis_proc is not None else None,
                scheduler_pids=[p.pid for p in schedulers.procs.values()] if schedulers else (),
                redis_url=target.checker_url if cluster is None else None,
            )
            monitors.append(asyncio.create_task(_open_window(window, dispatcher, rec, bridge)))
        await dispatcher.run()
        if window is not None:
            rec.counters.update(await window.stop(bridge.now(), dispatcher.heartbeats.sent))
        rec.event(bridge.now(), "plan_end", arch)
        if planner.nodes is not None:  # the nodes live on through the checks (sim/heartbeats.py)
            monitors.append(asyncio.create_task(keep_alive(checker, planner.cluster, planner.nodes.up())))
        # Socket timeouts bound every call; the extra second covers one reconnect.
        abandoned = await dispatcher.drain(harness.quiet_s + config.registry.redis.socket_timeout_s + 1.0)
        rec.count("abandoned", abandoned)
        if owns_faults:
            # One full sweep per phase, right away: once the plan has ended nodes stop
            # heartbeating and, dead_after later, the reaper empties the pools.
            await capacity_sweep(checker, config.nodes.pools, rec, bridge)
        await asyncio.sleep(harness.quiet_s)  # the quiet period is part of the experiment, not a sync
        await converge(registries, checker, config.nodes.pools, rec, bridge, harness.convergence_s)
        modes.poll()
        if cluster is not None:
            await cluster.end_phase(registries, rec)
        cpu1 = me.cpu_times()
        wall = bridge.now() - wall0
        rec.counters["harness_cpu_pct"] = round(
            100 * (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall
        )
        if redis_proc is not None:
            rec.counters["redis_cpu_pct"] = round(100 * (_cpu(redis_proc) - redis_cpu0) / wall)
        if cluster is not None:  # every node's CPU, summed (in % of one core)
            rec.counters["redis_cpu_pct"] = round(100 * cluster.cpu_seconds() / wall)
        if schedulers is not None:
            used = schedulers.cpu_seconds()
            # Sum over the scheduler processes, in % of one core (like the other CPU figures).
            rec.counters["scheduler_cpu_pct"] = round(100 * sum(used.values()) / wall)
            rec.counters["scheduler_processes"] = len(used)
        for reg in registries.values():
            encoded, counters = await _registry_metrics(reg)
            rec.add_encoded("propagation", encoded.get("propagation_us", b""))
            for name, extra in _BREAKDOWN_EXTRA.items():  # where a baseline's time went
                rec.add_encoded(extra, encoded.get(name, b""))
            for name, value in counters.items():
                if value:
                    rec.count(f"registry.{name}", value)
        rec.event(bridge.now(), "phase_end", arch)
        return rec
    finally:
        await cancel_and_wait(monitors)  # a single cancel() can be swallowed by redis-py's wait_for
        closed = await asyncio.gather(*(_close(r) for r in registries.values()), return_exceptions=True)
        if rec is not None:
            rec.count("close_timeouts", sum(1 for ok in closed if ok is not True))
        await checker.close()
        if agents is not None:
            await agents.close()
        if schedulers is not None:
            await schedulers.stop()
        gc.unfreeze()


async def _open_window(window: CpuWindow, dispatcher: Dispatcher, rec: Recorder, bridge: Bridge) -> None:
    """Start the CPU window when recording starts (the end of the warm-up)."""
    await bridge.sleep_until(rec.record_from)
    await window.start(bridge.now(), dispatcher.heartbeats.sent)


#: A baseline's breakdown histograms (sim.architectures.BREAKDOWN) -> the run's distributions.
_BREAKDOWN_EXTRA = {
    "lock_wait_us": "lock_wait",
    "redis_read_us": "redis_read",
    "parse_us": "parse",
    "select_us": "select_cpu",
    "relist_us": "relist",
}


async def _utilization_watch(
    dispatcher: Dispatcher, rec: Recorder, bridge: Bridge, slots: int, interval_s: float
) -> None:
    """Forever: busy slots per 1,000 slots (the harness's count), after the warm-up."""
    while True:
        await asyncio.sleep(interval_s)
        if slots and bridge.now() >= rec.record_from:
            rec.observe("utilization", max(1.0, dispatcher.busy * 1000 / slots))


def _ipc_recorder(rec: Recorder, bridge: Bridge) -> Callable[[float], None]:
    def record(overhead_s: float) -> None:
        if bridge.now() >= rec.record_from:
            rec.observe("ipc", overhead_s * 1e6)

    return record


async def _registry_metrics(registry: Registry) -> tuple[Any, Any]:
    """A registry's encoded histograms and counters, in this process or from its own."""
    fetch = getattr(registry, "fetch_metrics", None)
    if fetch is not None:
        return await fetch()
    snap = registry.metrics()
    return snap.encoded, snap.counters


async def _close(registry: Registry, timeout_s: float = 5.0) -> bool:
    """Close a registry, but never let a close that hangs hang the run (it is counted instead)."""
    # Not wait_for: it would wait for the cancelled close to finish, which is the hang itself.
    task = asyncio.ensure_future(registry.close())
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    return bool(done)


def _process(server: RedisServer | None) -> psutil.Process | None:
    with contextlib.suppress(Exception):
        return psutil.Process(server.pid) if server is not None and server.pid else None
    return None


def _cpu(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    with contextlib.suppress(psutil.Error):
        t = proc.cpu_times()
        return t.user + t.system
    return 0.0


async def _report_progress(
    progress: Progress,
    arch: str,
    dispatcher: Dispatcher,
    rec: Recorder,
    bridge: Bridge,
    config: ExperimentConfig,
) -> None:
    while True:
        await asyncio.sleep(0.25)
        lag = rec.extra["lag"]
        lag_ms = lag.get_value_at_percentile(99) / 1000 if lag.get_total_count() else 0.0
        progress(
            arch, max(0.0, bridge.sim(bridge.now())), config.experiment.duration_s, dispatcher.sent, lag_ms
        )


# ------------------------------------------------------------------ workers
def _worker_main(
    config_data: dict[str, Any],
    arch: str,
    target: Target,
    shard: int,
    shards: int,
    start_wall: float,
    results: Any,
) -> None:
    """Entry of a spawned worker: run the shard, send back the recorder's plain data."""
    config = from_mapping(config_data)
    try:
        rec = asyncio.run(
            shard_phase(config, arch, target, shard=shard, shards=shards, start_wall=start_wall)
        )
        results.put((shard, rec.to_data(), None))
    except BaseException as exc:  # report, never hang the parent
        results.put((shard, None, f"{type(exc).__name__}: {exc}"))


async def _parent_phase(
    config: ExperimentConfig,
    arch: str,
    target: Target,
    server: RedisServer | None,
    proxy: FaultProxy | None,
    progress: Progress | None,
) -> Recorder:
    """Scale-out: bootstrap, spawn the shards, inject faults and check capacity here, merge."""
    harness = config.harness
    bridge = Bridge(scale=harness.time_scale, spin_s=harness.spin_ms / 1000)
    checker = RedisStore(
        dataclasses.replace(config.registry.redis, url=target.checker_url, namespace=target.namespace),
        config.registry.nodes,
    )
    try:
        cluster = Cluster(config)
        await bootstrap(checker, cluster, jobs=initial_jobs(config, cluster))
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        # Workers import, connect and (lockless) relist before the start; give them time for it.
        start_wall = bridge.wall() + 5.0 + config.nodes.count / 20_000
        procs = [
            ctx.Process(
                target=_worker_main,
                args=(_raw(config), arch, target, s, harness.workers, start_wall, results),
                daemon=True,
            )
            for s in range(harness.workers)
        ]
        for p in procs:
            p.start()
        t0 = bridge.begin_at_wall(start_wall)
        rec = Recorder(arch, t0=t0, warmup_s=config.experiment.warmup_s * harness.time_scale)
        redis_proc = _process(server)
        await asyncio.sleep(max(0.0, t0 - bridge.now()))  # CPU is counted from the workers' start
        redis_cpu0, wall0 = _cpu(redis_proc), bridge.now()
        planner = Planner(config, shard=0, shards=1, nodes=False, jobs=False)
        injector = FaultInjector(config.faults, server=server, proxy=proxy, recorders=[rec], clock=bridge.now)
        dispatcher = Dispatcher(
            config=config, planner=planner, registries={}, bridge=bridge, recorder=rec, on_fault=injector
        )
        await dispatcher.run()
        await dispatcher.drain(30.0)
        if redis_proc is not None:
            used = _cpu(redis_proc) - redis_cpu0
            rec.counters["redis_cpu_pct"] = round(100 * used / (bridge.now() - wall0))
        errors = []
        for _ in procs:
            shard, data, error = await asyncio.to_thread(results.get)
            if error:
                errors.append(f"worker {shard}: {error}")
            else:
                rec.merge_data(data)
        for p in procs:
            await asyncio.to_thread(p.join, 10)
        await capacity_sweep(checker, config.nodes.pools, rec, bridge)
        if errors:
            raise LocklessError("; ".join(errors))
        return rec
    finally:
        await checker.close()


def _raw(config: ExperimentConfig) -> dict[str, Any]:
    data = config.to_dict()
    data["registry"].pop("pools", None)
    return data


# --------------------------------------------------------------------- run
async def run_async(
    config: ExperimentConfig,
    *,
    redis_url: str | None = None,
    server: RedisServer | None = None,
    progress: Progress | None = None,
) -> RunOutcome:
    """Run every architecture of ``config`` and return what was recorded.

    Redis: ``server`` (a running server the caller owns and lets us break), else
    ``redis_url`` (external: server faults are refused), else a server started here.
    """
    outcome = RunOutcome(config=config)
    if config.cluster.enabled:
        return await _run_on_cluster(config, outcome, redis_url=redis_url, progress=progress)
    if config.sentinel.enabled:
        return await _run_on_sentinel(config, outcome, redis_url=redis_url, progress=progress)
    proxy: FaultProxy | None = None
    owns_server = server is None and redis_url is None
    if owns_server:
        server = RedisServer()
        await asyncio.to_thread(server.start)
    if server is not None:
        server_url = server.url
    else:
        assert redis_url is not None
        if config.needs_server:
            kinds = sorted({f.kind for f in config.faults if not f.needs_proxy})
            raise ConfigError(
                "faults.kind",
                ", ".join(kinds),
                "link faults only with --redis-url (the harness will not stop, pause or restart "
                "a server it does not own)",
            )
        server_url = redis_url
    try:
        if config.needs_proxy:
            host, port = _host_port(server_url)
            proxy = FaultProxy(host, port)
            proxy.start()
        outcome.machine["redis_version"] = server.version if server else await _server_version(server_url)
        # The machine may be shared: what else was running is part of the result.
        outcome.machine["loadavg_start"] = _loadavg()
        token = uuid.uuid4().hex[:6]
        for arch in config.experiment.architectures:
            phase_config = config.for_architecture(arch)
            outcome.phases.setdefault(arch, {})["workload"] = workload(phase_config)
            target = Target(
                registry_url=proxy.url if proxy else server_url,
                checker_url=server_url,
                namespace=f"sim-{config.experiment.name}-{arch}-{token}",
            )
            stats0 = await server_stats(server_url)
            if config.harness.workers > 1:
                rec = await _parent_phase(phase_config, arch, target, server, proxy, progress)
            else:
                rec = await shard_phase(
                    phase_config, arch, target, server=server, proxy=proxy, progress=progress
                )
            outcome.recorders[arch] = rec
            await _forget(target, server)
            # What the server executed for this phase (INFO commandstats delta; sim/probe.py).
            outcome.phases.setdefault(arch, {})["commands"] = phase_commands(
                stats0, await server_stats(server_url)
            )
        # Every architecture side by side on a quiet pool: commands per operation, and
        # interleaved latencies with a raw PING as the round-trip yardstick (sim/probe.py).
        outcome.phases["probe"] = await run_probe(config, server_url)
        outcome.machine["loadavg_end"] = _loadavg()
    finally:
        if proxy is not None:
            proxy.stop()
        if server is not None and owns_server:
            await asyncio.to_thread(server.cleanup)
    return outcome


async def _run_on_cluster(
    config: ExperimentConfig, outcome: RunOutcome, *, redis_url: str | None, progress: Progress | None
) -> RunOutcome:
    """:func:`run_async` on a cluster: a local one (faults allowed), or the one ``redis_url`` names."""
    if redis_url is not None:
        if not redis_url.startswith(("redis+cluster://", "rediss+cluster://")):
            raise ConfigError(
                "--redis-url", redis_url, "a redis+cluster:// URL (the experiment has [cluster])"
            )
        if config.faults:
            raise ConfigError(
                "faults.kind",
                ", ".join(sorted({f.kind for f in config.faults})),
                "none with --redis-url (the harness breaks only the cluster it started)",
            )
    cluster = ClusterTarget(config.cluster, url=redis_url)
    await asyncio.to_thread(cluster.start)
    try:
        outcome.machine["redis_version"] = (
            cluster.version if redis_url is None else await _server_version(redis_url)
        ) + f" (cluster of {config.cluster.primaries} primaries)"
        outcome.machine["loadavg_start"] = _loadavg()
        token = uuid.uuid4().hex[:6]
        for arch in config.experiment.architectures:
            phase_config = config.for_architecture(arch)
            outcome.phases.setdefault(arch, {})["workload"] = workload(phase_config)
            target = Target(
                registry_url=cluster.url,
                checker_url=cluster.url,
                namespace=f"sim-{config.experiment.name}-{arch}-{token}",
            )
            rec = await shard_phase(phase_config, arch, target, server=cluster, progress=progress)
            outcome.recorders[arch] = rec
            outcome.phases.setdefault(arch, {})["cluster"] = {
                **cluster.report,
                "wait_replicas": config.registry.redis.wait_replicas,
            }
            await asyncio.to_thread(cluster.reset, target.namespace)
        outcome.machine["loadavg_end"] = _loadavg()
    finally:
        await asyncio.to_thread(cluster.cleanup)
    return outcome


async def _run_on_sentinel(
    config: ExperimentConfig, outcome: RunOutcome, *, redis_url: str | None, progress: Progress | None
) -> RunOutcome:
    """:func:`run_async` on a local Sentinel group (``sim.sentinel_target``), which it starts."""
    if redis_url is not None:
        raise ConfigError(
            "--redis-url", redis_url, "none with [sentinel] (the harness starts and fails over its own group)"
        )
    target = SentinelTarget(config.sentinel)
    await asyncio.to_thread(target.start)
    try:
        outcome.machine["redis_version"] = (
            f"{target.version} (primary + replica, {config.sentinel.sentinels} sentinels)"
        )
        outcome.machine["loadavg_start"] = _loadavg()
        token = uuid.uuid4().hex[:6]
        for arch in config.experiment.architectures:
            phase_config = config.for_architecture(arch)
            outcome.phases.setdefault(arch, {})["workload"] = workload(phase_config)
            namespace = f"sim-{config.experiment.name}-{arch}-{token}"
            where = Target(registry_url=target.url, checker_url=target.url, namespace=namespace)
            outcome.recorders[arch] = await shard_phase(
                phase_config, arch, where, server=target, progress=progress
            )
            outcome.phases[arch]["sentinel"] = target.report
            await asyncio.to_thread(target.reset, namespace)
        outcome.machine["loadavg_end"] = _loadavg()
    finally:
        await asyncio.to_thread(target.cleanup)
    return outcome


def workload(config: ExperimentConfig) -> dict[str, Any]:
    """What load a phase was given: rate, duration, job length, slots and target utilization."""
    jobs = config.jobs
    return {
        "arrival_rate_per_s": jobs.arrival_rate_per_s,
        "duration_s": config.experiment.duration_s,
        "warmup_s": config.experiment.warmup_s,
        "job_duration_mean_s": round(jobs.duration_mean_s, 3),
        "slots": config.slots,
        "target_utilization": jobs.utilization,
        "instances": config.schedulers.instances,
        "policy": config.registry.cache.policy,
        "api": jobs.api,
    }


async def _forget(target: Target, server: RedisServer | None) -> None:
    """Drop the phase's keys so the next architecture starts from the same empty state."""
    if server is not None:
        if server.paused:
            server.resume()
        if not server.running:
            await asyncio.to_thread(server.start)
        await asyncio.to_thread(server.flushall)
        return
    client = RedisStore.make_client(RegistryConfig().redis.__class__(url=target.checker_url))
    try:
        async for key in client.scan_iter(match=f"{target.namespace}:*", count=1000):
            await client.unlink(key)
    finally:
        await client.aclose()


async def _server_version(url: str) -> str:
    """``"valkey 9.1.2"`` / ``"redis 7.2.4"``, as ``RedisServer.version`` spells it for our own."""
    client = RedisStore.make_client(RegistryConfig().redis.__class__(url=url))
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    # Valkey reports its Redis-compatible version as redis_version and its own as valkey_version.
    name = str(info.get("server_name") or "redis")
    return f"{name} {info.get(f'{name}_version', info.get('redis_version', '?'))}"


def _loadavg() -> list[float]:
    with contextlib.suppress(OSError):
        return [round(x, 2) for x in os.getloadavg()]
    return []


def _host_port(url: str) -> tuple[str, int]:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or 6379
