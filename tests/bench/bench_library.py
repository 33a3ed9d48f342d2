"""Latency benchmark of the library's hot paths (issue 2), all in one run on one machine.

Run: ``python -m tests.bench.bench_library [--nodes 10000] [--pools 10] [--flat 1000,10000,100000]``
(``--redis-url URL`` to use a running server instead of starting one; ``--quick`` for a smoke run).

What one run measures, single caller, per-call ``perf_counter_ns`` around each awaited call:

* reads from L1 with 10,000 nodes in 10 pools: ``get_node`` hits, ``select_nodes(count=1)``
  with ``power_of_two`` and ``least_loaded`` (and power-of-two with a label half the nodes have);
* one-round-trip writes through the registry: quiet ``heartbeat``, ``job_start`` and the
  ``job_finish`` that gives the slot back, interleaved in rounds with raw redis-py
  ``PING`` and ``HGETALL`` (same client settings as the library) for calibration, so that
  drift over the run hits every operation alike;
* ``select_nodes`` P99 on one pool of 1,000 / 10,000 / 100,000 nodes (is it flat?).

Percentiles are exact (numpy over every sample, never averaged). The machine is named
(host, CPU model, cores, Python, redis-py, hiredis, redis-server) and the ratios the
targets are stated in (write P99 / PING P99) are computed from the same run. Targets are
reported, not asserted: L1 hit P99 <= 2 us; select P99 <= 50 us and flat from 1k to 100k;
one-round-trip writes P99 <= 2x raw PING P99.

Results go to ``results/bench/library-<utc>-<git8>.json`` and a table is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import numpy as np

from lockless.config import CacheConfig, RedisConfig, RegistryConfig
from lockless.core.l1 import L1Store
from lockless.core.modes import Mode
from lockless.core.snapshot import NodeSpec, Requirements
from lockless.redis.store import RedisStore
from lockless.registry import LocklessRegistry
from sim.redis_server import RedisServer

#: Targets from the issue, in microseconds (or as a ratio to raw PING P99).
TARGET_L1_P99_US = 2.0
TARGET_SELECT_P99_US = 50.0
TARGET_WRITE_OVER_PING = 2.0
#: "Flat" = the largest select P99 across pool sizes is within this factor of the smallest.
TARGET_FLAT_FACTOR = 2.0
#: Yield to the event loop this often in tight loops: an L1 hit never suspends, and a loop
#: that never yields would starve the subscriber's PING/PONG and fake an outage.
_YIELD_EVERY = 1024
_LABEL = "mod-a"


@dataclass(frozen=True)
class Plan:
    """How many samples of each kind one run takes."""

    hits: int = 200_000
    selects: int = 100_000
    rounds: int = 10
    per_round: int = 2_000
    flat_selects: int = 50_000

    @classmethod
    def quick(cls) -> Plan:
        return cls(hits=20_000, selects=10_000, rounds=4, per_round=250, flat_selects=5_000)


# ---------------------------------------------------------------------- machine
def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine(server_version: str) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "redis_py": dist_version("redis"),
        "hiredis": dist_version("hiredis"),
        "redis_server": server_version,
        # Other processes on the machine skew every number: the 1/5/15-minute load is kept with them.
        "loadavg": load_average(),
    }


def git_state() -> tuple[str, bool]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()

    try:
        return git("rev-parse", "--short=8", "HEAD"), bool(git("status", "--porcelain", "--", "lockless"))
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


# ---------------------------------------------------------------------- samples
def summary(samples_ns: np.ndarray) -> dict[str, float]:
    us = samples_ns / 1000.0
    p50, p99, p999 = np.percentile(us, [50, 99, 99.9])
    return {
        "count": int(us.size),
        "p50_us": round(float(p50), 3),
        "p99_us": round(float(p99), 3),
        "p999_us": round(float(p999), 3),
        "max_us": round(float(us.max()), 3),
        "mean_us": round(float(us.mean()), 3),
    }


def timer_overhead(n: int = 100_000) -> np.ndarray:
    out = np.empty(n, dtype=np.int64)
    pc = time.perf_counter_ns
    for i in range(n):
        t0 = pc()
        out[i] = pc() - t0
    return out


async def _noop(pool: str, node_id: str) -> None:
    return None


async def time_await_floor(keys: Sequence[tuple[str, str]]) -> np.ndarray:
    """The cost of awaiting a coroutine that returns at once: the floor under any async read."""
    out = np.empty(len(keys), dtype=np.int64)
    pc, call = time.perf_counter_ns, _noop
    for i, (pool, node_id) in enumerate(keys):
        t0 = pc()
        await call(pool, node_id)
        out[i] = pc() - t0
    return out


def time_l1_get(registry: LocklessRegistry, keys: Sequence[tuple[str, str]]) -> np.ndarray:
    """A bare ``L1Store.get`` (no await, no mode or staleness check, no counter) on a store
    holding the registry's nodes: the floor under any cached read."""
    store = L1Store(entry_ttl_s=3600.0)
    now = time.monotonic()
    for pool in {pool for pool, _ in keys}:
        for node in registry.cached_nodes(pool).values():
            store.apply(node, now)
    out = np.empty(len(keys), dtype=np.int64)
    pc, get = time.perf_counter_ns, store.get
    for i, (pool, node_id) in enumerate(keys):
        t0 = pc()
        get(pool, node_id, now)
        out[i] = pc() - t0
    return out


def time_cached(registry: LocklessRegistry, keys: Sequence[tuple[str, str]]) -> np.ndarray:
    """``registry.cached``: the synchronous read for hot loops (never awaits, never I/O)."""
    out = np.empty(len(keys), dtype=np.int64)
    pc, cached = time.perf_counter_ns, registry.cached
    for i, (pool, node_id) in enumerate(keys):
        t0 = pc()
        node = cached(pool, node_id)
        out[i] = pc() - t0
        if node is None:
            raise AssertionError(f"{pool}/{node_id} missing from the cache")
    return out


async def time_get_node(registry: LocklessRegistry, keys: Sequence[tuple[str, str]]) -> np.ndarray:
    out = np.empty(len(keys), dtype=np.int64)
    pc, get = time.perf_counter_ns, registry.get_node
    for i, (pool, node_id) in enumerate(keys):
        t0 = pc()
        node = await get(pool, node_id)
        out[i] = pc() - t0
        if node is None:
            raise AssertionError(f"{pool}/{node_id} missing from the cache")
        if not i % _YIELD_EVERY:
            await asyncio.sleep(0)
    return out


async def time_select(
    registry: LocklessRegistry, pools: Sequence[str], policy: str, requirements: Requirements | None = None
) -> np.ndarray:
    out = np.empty(len(pools), dtype=np.int64)
    pc, select = time.perf_counter_ns, registry.select_nodes
    for i, pool in enumerate(pools):
        t0 = pc()
        selection = await select(pool, 1, requirements, policy=policy)
        out[i] = pc() - t0
        if not selection.picks:
            raise AssertionError(f"select found nothing in {pool}: {selection.explain()}")
        if not i % _YIELD_EVERY:
            await asyncio.sleep(0)
    return out


# ------------------------------------------------------------------------ setup
def specs(pool: str, start: int, stop: int, rng: random.Random) -> list[NodeSpec]:
    return [
        NodeSpec(
            node_id=f"n{i:06d}",
            pool=pool,
            max_jobs=8,
            load=round(rng.uniform(0.0, 0.9), 2),
            labels={_LABEL} if i % 2 else set(),
            resources={"cpu": 16 if i % 3 else 32, "mem_gb": 64},
        )
        for i in range(start, stop)
    ]


async def register_all(store: RedisStore, all_specs: Sequence[NodeSpec], batch: int = 1000) -> None:
    for start in range(0, len(all_specs), batch):
        await store.register_many(all_specs[start : start + batch])


def registry_config(url: str, ns: str, pools: Sequence[str]) -> RegistryConfig:
    return RegistryConfig(
        pools=tuple(pools),
        redis=RedisConfig(url=url, namespace=ns),
        # Entries must not expire during the run, or some "hits" would be Redis reads.
        cache=CacheConfig(seed=1, entry_ttl_s=3600.0),
    )


async def start_registry(cfg: RegistryConfig, expected: int) -> LocklessRegistry:
    registry = LocklessRegistry(cfg, instance="bench")
    await registry.start(timeout=60.0)
    cached = sum(len(registry.cached_nodes(p)) for p in cfg.pools)
    if cached != expected:
        raise AssertionError(f"cache holds {cached} nodes after start, expected {expected}")
    return registry


# ------------------------------------------------------------------------- runs
async def main_run(
    url: str, server_version: str, *, nodes: int, pools: int, flat_sizes: Sequence[int], plan: Plan
) -> dict[str, Any]:
    load_at_start = load_average()
    rng = random.Random(20260)
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    pool_names = [f"pool{i}" for i in range(pools)]
    per_pool = nodes // pools
    writer = RedisStore(RedisConfig(url=url, namespace=ns))
    raw = RedisStore.make_client(RedisConfig(url=url, namespace=ns))
    results: dict[str, Any] = {}
    counters: dict[str, int] = {}
    try:
        all_specs = [s for p in pool_names for s in specs(p, 0, per_pool, rng)]
        load_of = {(s.pool, s.node_id): s.load for s in all_specs}
        await register_all(writer, all_specs)
        registry = await start_registry(registry_config(url, ns, pool_names), len(all_specs))
        try:
            gc.collect()
            gc.freeze()  # the 10k snapshots are long-lived: keep them out of every collection
            switches_before = len(registry.mode_switches())

            keys = [(s.pool, s.node_id) for s in rng.choices(all_specs, k=plan.hits)]
            for pool in pool_names:  # warm-up, untimed: builds each pool's positional index once
                await time_select(registry, [pool] * 100, "power_of_two")
            await time_get_node(registry, keys[:1000])
            before = registry.metrics()
            results["timer_overhead"] = summary(timer_overhead())
            results["await_floor"] = summary(await time_await_floor(keys))
            results["l1_store_get"] = summary(time_l1_get(registry, keys))
            results["cached_sync"] = summary(time_cached(registry, keys))
            results["get_node_l1_hit"] = summary(await time_get_node(registry, keys))
            picks = rng.choices(pool_names, k=plan.selects)
            results["select_power_of_two"] = summary(await time_select(registry, picks, "power_of_two"))
            results["select_least_loaded"] = summary(await time_select(registry, picks, "least_loaded"))
            results["select_power_of_two_label"] = summary(
                await time_select(
                    registry, picks[: plan.selects // 2], "power_of_two", Requirements(labels={_LABEL})
                )
            )
            after_reads = registry.metrics()
            counters["l1_hits"] = after_reads["l1_hits"] - before["l1_hits"]
            counters["misses"] = after_reads["misses"] - before["misses"]

            samples: dict[str, list[np.ndarray]] = {
                k: [] for k in ("ping", "hgetall", "heartbeat_quiet", "job_start", "job_finish")
            }
            changed = rejected = 0
            pc = time.perf_counter_ns
            job = 0
            for _ in range(plan.rounds):
                targets = rng.choices(all_specs, k=plan.per_round)
                out = np.empty(plan.per_round, dtype=np.int64)
                for i in range(plan.per_round):
                    t0 = pc()
                    await raw.ping()
                    out[i] = pc() - t0
                samples["ping"].append(out)
                out = np.empty(plan.per_round, dtype=np.int64)
                for i, s in enumerate(targets):
                    key = writer.keys.node(s.pool, s.node_id)
                    t0 = pc()
                    await raw.hgetall(key)
                    out[i] = pc() - t0
                samples["hgetall"].append(out)
                out = np.empty(plan.per_round, dtype=np.int64)
                for i, s in enumerate(targets):
                    load = load_of[(s.pool, s.node_id)]
                    t0 = pc()
                    beat = await registry.heartbeat(s.pool, s.node_id, load=load)
                    out[i] = pc() - t0
                    changed += beat.changed
                samples["heartbeat_quiet"].append(out)
                starts = np.empty(plan.per_round, dtype=np.int64)
                finishes = np.empty(plan.per_round, dtype=np.int64)
                for i, s in enumerate(targets):
                    job += 1
                    job_id = f"bench-{job}"
                    t0 = pc()
                    admission = await registry.job_start(s.pool, s.node_id, job_id)
                    t1 = pc()
                    await registry.job_finish(s.pool, s.node_id, job_id)
                    t2 = pc()
                    starts[i], finishes[i] = t1 - t0, t2 - t1
                    rejected += not admission.admitted
                samples["job_start"].append(starts)
                samples["job_finish"].append(finishes)
            for name, parts in samples.items():
                results[name] = summary(np.concatenate(parts))
            counters["heartbeats_not_quiet"] = changed
            counters["job_starts_rejected"] = rejected
            counters["mode_switches"] = len(registry.mode_switches()) - switches_before
            counters["mode_at_end_normal"] = int(registry.mode is Mode.NORMAL)
        finally:
            gc.unfreeze()
            await registry.close()

        # One pool per size, all served by one registry and sampled in interleaved rounds,
        # so that load from elsewhere on the machine falls on every size alike.
        sizes = sorted(flat_sizes)
        flat_pools = {size: f"flat{size}" for size in sizes}
        for size, pool in flat_pools.items():
            await register_all(writer, specs(pool, 0, size, rng))
        registry = await start_registry(registry_config(url, ns, list(flat_pools.values())), sum(sizes))
        flat_samples: dict[tuple[int, str], list[np.ndarray]] = {
            (size, policy): [] for size in sizes for policy in ("power_of_two", "least_loaded")
        }
        try:
            gc.collect()
            gc.freeze()
            per_round = max(1, plan.flat_selects // plan.rounds)
            for pool in flat_pools.values():  # warm-up: first positional access builds the index
                for policy in ("power_of_two", "least_loaded"):
                    await time_select(registry, [pool] * 100, policy)
            for _ in range(plan.rounds):
                for (size, policy), parts in flat_samples.items():
                    parts.append(await time_select(registry, [flat_pools[size]] * per_round, policy))
        finally:
            gc.unfreeze()
            await registry.close()
        flat: dict[str, dict[str, Any]] = {str(size): {} for size in sizes}
        for (size, policy), parts in flat_samples.items():
            flat[str(size)][policy] = summary(np.concatenate(parts))
    finally:
        await writer.close()
        await raw.aclose()

    commit, dirty = git_state()
    ping_p99 = results["ping"]["p99_us"]
    ratios = {
        f"{op}_p99_over_ping_p99": round(results[op]["p99_us"] / ping_p99, 2)
        for op in ("heartbeat_quiet", "job_start", "job_finish", "hgetall")
    }
    flat_factor = {
        policy: round(
            max(v[policy]["p99_us"] for v in flat.values()) / min(v[policy]["p99_us"] for v in flat.values()),
            2,
        )
        for policy in ("power_of_two", "least_loaded")
    }
    verdicts = {
        "l1_hit_p99_le_2us": results["get_node_l1_hit"]["p99_us"] <= TARGET_L1_P99_US,
        "cached_sync_p99_le_2us": results["cached_sync"]["p99_us"] <= TARGET_L1_P99_US,
        "select_p99_le_50us": all(
            results[k]["p99_us"] <= TARGET_SELECT_P99_US
            for k in ("select_power_of_two", "select_least_loaded")
        )
        and all(v[p]["p99_us"] <= TARGET_SELECT_P99_US for v in flat.values() for p in v),
        "select_flat_1k_to_100k": all(f <= TARGET_FLAT_FACTOR for f in flat_factor.values()),
        "writes_p99_le_2x_ping_p99": all(
            ratios[f"{op}_p99_over_ping_p99"] <= TARGET_WRITE_OVER_PING
            for op in ("heartbeat_quiet", "job_start", "job_finish")
        ),
    }
    return {
        "benchmark": "library",
        "utc": datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"),
        "loadavg_at_start": load_at_start,
        "commit": commit,
        "lockless_dirty": dirty,
        "machine": machine(server_version),
        "setup": {
            "nodes": nodes,
            "pools": pools,
            "flat_sizes": list(flat_sizes),
            "plan": plan.__dict__,
            "redis_url": url,
            "gc": "collected and frozen after setup",
            "caller": "one coroutine, sequential awaited calls; per-call perf_counter_ns",
        },
        "results": results,
        "flat_select": flat,
        "flat_factor": flat_factor,
        "ratios": ratios,
        "counters": counters,
        "targets": {
            "l1_hit_p99_us": TARGET_L1_P99_US,
            "select_p99_us": TARGET_SELECT_P99_US,
            "select_flat_factor": TARGET_FLAT_FACTOR,
            "write_p99_over_ping_p99": TARGET_WRITE_OVER_PING,
        },
        "verdicts": verdicts,
    }


# ------------------------------------------------------------------------ report
_ROWS = [
    ("get_node_l1_hit", "get_node (L1 hit)", f"P99 <= {TARGET_L1_P99_US:g} us"),
    ("cached_sync", "cached() sync read (L1 hit)", f"P99 <= {TARGET_L1_P99_US:g} us"),
    ("select_power_of_two", "select_nodes count=1 power_of_two", f"P99 <= {TARGET_SELECT_P99_US:g} us"),
    ("select_least_loaded", "select_nodes count=1 least_loaded", f"P99 <= {TARGET_SELECT_P99_US:g} us"),
    ("select_power_of_two_label", "select_nodes p2c, label on 50%", "(info)"),
    ("ping", "raw redis-py PING", "calibration"),
    ("hgetall", "raw redis-py HGETALL", "calibration"),
    ("heartbeat_quiet", "heartbeat (quiet)", f"P99 <= {TARGET_WRITE_OVER_PING:g}x PING P99"),
    ("job_start", "job_start (admitted)", f"P99 <= {TARGET_WRITE_OVER_PING:g}x PING P99"),
    ("job_finish", "job_finish", f"P99 <= {TARGET_WRITE_OVER_PING:g}x PING P99"),
    ("timer_overhead", "perf_counter_ns pair (overhead)", "(info)"),
    ("await_floor", "await of a no-op coroutine", "(info: floor of any async call)"),
    ("l1_store_get", "L1Store.get, sync, no await", "(info)"),
]


def table(result: dict[str, Any]) -> str:
    m = result["machine"]
    dirty = " (lockless/ modified)" if result["lockless_dirty"] else ""
    setup = result["setup"]
    lines = [
        f"library benchmark  commit {result['commit']}{dirty}  {result['utc']}",
        f"machine: {m['host']} | {m['cpu']} | {m['cores']} cores | Python {m['python']}"
        f" | redis-py {m['redis_py']} | hiredis {m['hiredis']} | redis-server {m['redis_server']}",
        f"load average at start {result['loadavg_at_start']}, at end {m['loadavg']}",
        f"setup: {setup['nodes']:,} nodes in {setup['pools']} pools, one sequential caller",
        "",
        f"{'operation':36} {'samples':>8} {'P50 us':>9} {'P99 us':>9} {'P99.9 us':>9} {'max us':>9}  target",
    ]
    for key, label, target in _ROWS:
        r = result["results"][key]
        lines.append(
            f"{label:36} {r['count']:>8,} {r['p50_us']:>9.2f} {r['p99_us']:>9.2f} {r['p999_us']:>9.2f}"
            f" {r['max_us']:>9.1f}  {target}"
        )
    lines += ["", "P99 / raw PING P99 (same run):"]
    lines += [f"  {k.removesuffix('_p99_over_ping_p99'):16} {v:.2f}x" for k, v in result["ratios"].items()]
    lines += ["", "select_nodes(count=1) P99 on one pool, by size:"]
    sizes = list(result["flat_select"])
    lines.append(f"  {'policy':14}" + "".join(f"{int(s):>12,}" for s in sizes) + "   max/min")
    for policy in ("power_of_two", "least_loaded"):
        cells = "".join(f"{result['flat_select'][s][policy]['p99_us']:>9.2f} us" for s in sizes)
        lines.append(f"  {policy:14}{cells}   {result['flat_factor'][policy]:.2f}x")
    lines += ["", "counters: " + ", ".join(f"{k}={v}" for k, v in result["counters"].items())]
    lines += [
        "targets (reported, not asserted): "
        + ", ".join(f"{k}={'met' if ok else 'MISSED'}" for k, ok in result["verdicts"].items())
    ]
    return "\n".join(lines)


async def run(
    *,
    url: str | None = None,
    nodes: int = 10_000,
    pools: int = 10,
    flat_sizes: Sequence[int] = (1_000, 10_000, 100_000),
    plan: Plan | None = None,
    out: Path | None = Path("results/bench"),
) -> tuple[dict[str, Any], Path | None]:
    """One full run; starts its own redis-server unless ``url`` is given. Returns (result, JSON path)."""
    plan = plan or Plan()
    server: RedisServer | None = None
    if url is None:
        server = RedisServer()
        await asyncio.to_thread(server.start)
        url, version = server.url, server.version
    else:
        version = str(
            (await RedisStore.make_client(RedisConfig(url=url)).info("server")).get("redis_version")
        )
    try:
        result = await main_run(url, version, nodes=nodes, pools=pools, flat_sizes=flat_sizes, plan=plan)
    finally:
        if server is not None:
            await asyncio.to_thread(server.cleanup)
    path = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"library-{result['utc']}-{result['commit']}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
    return result, path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--pools", type=int, default=10)
    parser.add_argument("--flat", default="1000,10000,100000", help="pool sizes for the flatness check")
    parser.add_argument("--redis-url", default=None, help="use this server instead of starting one")
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run, not a result)")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args(argv)
    flat_sizes = [int(x) for x in args.flat.split(",") if x]
    result, path = asyncio.run(
        run(
            url=args.redis_url,
            nodes=args.nodes,
            pools=args.pools,
            flat_sizes=flat_sizes,
            plan=Plan.quick() if args.quick else Plan(),
            out=args.out,
        )
    )
    print(table(result))
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
