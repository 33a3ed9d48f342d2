"""Benchmark of the invalidation path and of outage handling (issue 3).

Run: ``python -m tests.bench.invalidation_bench [--nodes 10000] [--rate 2000] [--seconds 10]``

One run, on the embedded redis-server:

1. ``--nodes`` nodes in 10 pools; ``--instances`` (3) ``LocklessRegistry`` instances
   subscribed to all, each in a process of its own as in a deployment.
2. A writer in a separate process sends ``--rate`` changing heartbeats per second, open
   loop, for ``--seconds``; each is a versioned event. Reported: event propagation delay
   (Redis ``TIME`` in microseconds as the event is published, ``ts_us``, to applied in each
   instance's L1; both clocks are this machine's), P50/P99 per instance and merged.
3. While every instance calls ``get_node`` on random nodes, the server is stopped, then
   started again (data kept): reported are the time from stop to LOCAL_ONLY (slowest
   instance), from start to NORMAL, the share of reads answered, and read P50/P99 by the
   mode the instance was in (NORMAL; LOCAL_ONLY = the outage; L2_ONLY = recovery, where
   each read is checked against Redis by design).

Results are printed and written to ``results/bench/invalidation-<utc>-<git8>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing as mp
import queue
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from lockless.config import RedisConfig, RegistryConfig
from lockless.core.modes import Mode
from lockless.core.snapshot import NodeSpec
from lockless.protocol import Heartbeat
from lockless.redis.store import RedisStore
from lockless.registry import LocklessRegistry
from sim.redis_server import RedisServer
from sim.report import git_commit
from tests.bench.bench_library import machine

POOLS = tuple(f"pool{i}" for i in range(10))


def _writer(url: str, ns: str, nodes: int, rate: int, seconds: float) -> None:
    """Open-loop heartbeats with a changed load (so each one is an event), in batches per ms tick."""

    async def run() -> None:
        store = RedisStore(RedisConfig(url=url, namespace=ns))
        rng = random.Random(7)
        loads = [0.0] * nodes  # registered at load 0; every beat moves it, so every beat is an event
        start = time.monotonic()
        sent = 0
        while (now := time.monotonic() - start) < seconds:
            due = int(now * rate) - sent
            if due > 0:
                beats = []
                for _ in range(due):
                    i = rng.randrange(nodes)
                    loads[i] = 0.5 if loads[i] != 0.5 else 1.0
                    beats.append(Heartbeat(pool=POOLS[i % len(POOLS)], node_id=f"n{i}", load=loads[i]))
                await store.heartbeat_many(beats)
                sent += due
            await asyncio.sleep(0.001)
        await store.close()

    asyncio.run(run())


def _instance(name: str, url: str, ns: str, nodes: int, control: Any, results: Any) -> None:
    """One scheduler instance in a process of its own, as in a deployment.

    Reports ``("mode", name, mode, monotonic)`` on every mode change (CLOCK_MONOTONIC is
    system-wide, so the parent can subtract its own stop/start times), and at the end
    ``("done", name, payload)`` with the encoded propagation histogram and every read.
    """

    async def run() -> None:
        cfg = RegistryConfig(pools=POOLS, redis=RedisConfig(url=url, namespace=ns))
        registry = LocklessRegistry(cfg, instance=name)
        await registry.start()
        loop = asyncio.get_running_loop()
        reads: list[tuple[str, int, bool]] = []
        reading = asyncio.Event()
        stop = asyncio.Event()

        async def watch_mode() -> None:
            await reading.wait()  # (polling only in the outage part: no extra wake-ups meanwhile)
            seen = registry.mode
            while not stop.is_set():
                if registry.mode is not seen:
                    seen = registry.mode
                    results.put(("mode", name, seen.value, time.monotonic()))
                await asyncio.sleep(0.0005)

        async def read() -> None:
            rng = random.Random(name)
            await reading.wait()
            while not stop.is_set():
                i = rng.randrange(nodes)
                mode = registry.mode.value
                t0 = time.perf_counter_ns()
                try:
                    ok = await registry.get_node(POOLS[i % len(POOLS)], f"n{i}") is not None
                except Exception:
                    ok = False
                reads.append((mode, (time.perf_counter_ns() - t0) // 1000, ok))
                await asyncio.sleep(0.001)

        tasks = [asyncio.create_task(watch_mode()), asyncio.create_task(read())]
        results.put(("ready", name, None))
        while True:
            command = await loop.run_in_executor(None, control.get)
            if command == "read":
                reading.set()
            elif command == "stop":
                break
        stop.set()
        reading.set()
        await asyncio.gather(*tasks)
        metrics = registry.metrics()
        await registry.close()
        results.put(("done", name, {"propagation": metrics.encoded.get("propagation_us"), "reads": reads}))

    logging.basicConfig(level=logging.ERROR)
    asyncio.run(run())


async def bench(nodes: int, rate: int, seconds: float, instances: int = 3) -> dict[str, object]:
    server = RedisServer()
    server.start()
    ns = "bench"
    cfg = RegistryConfig(pools=POOLS, redis=RedisConfig(url=server.url, namespace=ns))
    store = RedisStore(cfg.redis)
    for start in range(0, nodes, 1000):
        specs = [
            NodeSpec(node_id=f"n{i}", pool=POOLS[i % len(POOLS)], max_jobs=8)
            for i in range(start, min(nodes, start + 1000))
        ]
        await store.register_many(specs)
    ctx = mp.get_context("spawn")
    results: Any = ctx.Queue()
    controls = {f"i{k}": ctx.Queue() for k in range(instances)}
    procs = [
        ctx.Process(target=_instance, args=(name, server.url, ns, nodes, q, results))
        for name, q in controls.items()
    ]
    for proc in procs:
        proc.start()
    modes: dict[str, list[tuple[str, float]]] = {name: [] for name in controls}
    done: dict[str, dict[str, Any]] = {}

    async def expect(kind: str, mode: str = "", timeout: float = 60.0) -> None:
        """Consume reports until every instance has sent ``kind`` (for "mode": reached ``mode``)."""
        deadline = time.monotonic() + timeout
        reported: set[str] = set()
        while len(reported) < instances:
            if time.monotonic() > deadline:
                raise TimeoutError(f"instances did not report {kind} {mode} within {timeout} s")
            try:
                msg_kind, name, payload, *at = await asyncio.to_thread(results.get, True, 0.5)
            except queue.Empty:
                continue
            if msg_kind == "mode":
                modes[name].append((payload, at[0]))
            elif msg_kind == "done":
                done[name] = payload
            if msg_kind == kind and (kind != "mode" or payload == mode):
                reported.add(name)

    await expect("ready")
    print(f"{nodes} nodes cached by {instances} instance processes; writing {rate}/s for {seconds} s ...")

    writer = ctx.Process(target=_writer, args=(server.url, ns, nodes, rate, seconds))
    writer.start()
    while writer.is_alive():
        await asyncio.sleep(0.1)

    # Outage: every instance keeps reading while the server is stopped and started again.
    for q in controls.values():
        q.put("read")
    await asyncio.sleep(2.0)
    await store.client.save()
    t_stop = time.monotonic()
    await asyncio.to_thread(server.stop)
    await expect("mode", Mode.LOCAL_ONLY.value)
    await asyncio.sleep(2.0)
    t_start = time.monotonic()
    await asyncio.to_thread(server.start)
    await expect("mode", Mode.NORMAL.value)
    await asyncio.sleep(0.5)
    for q in controls.values():
        q.put("stop")
    await expect("done")
    for proc in procs:
        proc.join(10)
    await store.close()
    server.cleanup()

    def first(name: str, mode: str, after: float) -> float:
        return min(at for m, at in modes[name] if m == mode and at >= after)

    to_local = max(first(n, Mode.LOCAL_ONLY.value, t_stop) for n in controls) - t_stop
    to_normal = max(first(n, Mode.NORMAL.value, t_start) for n in controls) - t_start
    propagation: dict[str, dict[str, float]] = {}
    merged = HdrHistogram(1, 60_000_000, 3)
    # Reads by the mode the instance was in: LOCAL_ONLY is the outage (served from L1),
    # L2_ONLY the recovery (each read checked against Redis's version: one round trip).
    phases = [m.value for m in (Mode.NORMAL, Mode.LOCAL_ONLY, Mode.L2_ONLY)]
    hists = {m: HdrHistogram(1, 60_000_000, 3) for m in phases}
    answered = dict.fromkeys(phases, 0)
    failed = dict.fromkeys(phases, 0)
    for name, payload in sorted(done.items()):
        h = HdrHistogram.decode(payload["propagation"])
        merged.add(h)
        propagation[name] = {
            "count": h.total_count,
            "p50": h.get_value_at_percentile(50),
            "p99": h.get_value_at_percentile(99),
            "max": h.get_max_value(),
        }
        for phase, latency_us, ok in payload["reads"]:
            hists[phase].record_value(max(1, latency_us))
            answered[phase] += ok
            failed[phase] += not ok
    propagation["all"] = {
        "count": merged.total_count,
        "p50": merged.get_value_at_percentile(50),
        "p99": merged.get_value_at_percentile(99),
        "max": merged.get_max_value(),
    }
    cfg_detect = cfg.subscriber.ping_interval_s + cfg.modes.failures_to_local * cfg.redis.socket_timeout_s
    return {
        "machine": machine(server.version),
        "commit": git_commit(),
        "utc": datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"),
        "nodes": nodes,
        "write_rate": rate,
        "seconds": seconds,
        "instances": f"{instances}, each in a process of its own",
        "propagation_us": propagation,
        "stop_to_local_only_s": round(to_local, 3),
        "start_to_normal_s": round(to_normal, 3),
        "configured_detection_s": cfg_detect,
        "reads": {
            k: {
                "answered": answered[k],
                "failed": failed[k],
                "p50_us": hists[k].get_value_at_percentile(50),
                "p99_us": hists[k].get_value_at_percentile(99),
            }
            for k in hists
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    result = asyncio.run(bench(args.nodes, args.rate, args.seconds, args.instances))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"invalidation-{result['utc']}-{str(result['commit'])[:8]}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
