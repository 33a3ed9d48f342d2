"""Benchmark of the invalidation path and of outage handling (issue 3).

Run: ``python -m tests.bench.invalidation_bench [--nodes 10000] [--rate 2000] [--seconds 10]``

One run, on the embedded redis-server:

1. ``--nodes`` nodes in 10 pools; 3 ``LocklessRegistry`` instances subscribed to all.
2. A writer in a separate process sends ``--rate`` changing heartbeats per second, open
   loop, for ``--seconds``; each is a versioned event. Reported: event propagation delay
   (Redis ``TIME`` at the write to applied in each instance's L1), P50/P99 per instance.
   Redis ``TIME`` is stamped in whole milliseconds, so delays carry up to 1 ms of rounding.
3. While readers call ``get_node`` on random nodes, the server is stopped, then started
   again (data kept): reported are the time from stop to LOCAL_ONLY, from start to
   NORMAL, the share of reads answered, and read P99 in NORMAL vs during the outage.

Results are printed and written to ``results/bench/invalidation-<utc>-<git8>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing as mp
import os
import platform
import random
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from hdrh.histogram import HdrHistogram

from lockless.config import RedisConfig, RegistryConfig
from lockless.core.modes import Mode
from lockless.core.snapshot import NodeSpec
from lockless.protocol import Heartbeat
from lockless.redis.store import RedisStore
from lockless.registry import LocklessRegistry
from sim.redis_server import RedisServer

POOLS = tuple(f"pool{i}" for i in range(10))


def machine() -> dict[str, object]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short=8", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _writer(url: str, ns: str, nodes: int, rate: int, seconds: float) -> None:
    """Open-loop heartbeats with a changed load (so each one is an event), in batches per ms tick."""

    async def run() -> None:
        store = RedisStore(RedisConfig(url=url, namespace=ns))
        rng = random.Random(7)
        start = time.monotonic()
        sent = 0
        while (now := time.monotonic() - start) < seconds:
            due = int(now * rate) - sent
            if due > 0:
                beats = []
                for _ in range(due):
                    i = rng.randrange(nodes)
                    beats.append(
                        Heartbeat(
                            pool=POOLS[i % len(POOLS)], node_id=f"n{i}", load=rng.choice((0.0, 0.5, 1.0))
                        )
                    )
                await store.heartbeat_many(beats)
                sent += due
            await asyncio.sleep(0.001)
        await store.close()

    asyncio.run(run())


async def bench(nodes: int, rate: int, seconds: float) -> dict[str, object]:
    server = RedisServer()
    server.start()
    ns = "bench"
    cfg = RegistryConfig(pools=POOLS, redis=RedisConfig(url=server.url, namespace=ns, max_connections=32))
    store = RedisStore(cfg.redis)
    for start in range(0, nodes, 1000):
        specs = [
            NodeSpec(node_id=f"n{i}", pool=POOLS[i % len(POOLS)], max_jobs=8)
            for i in range(start, min(nodes, start + 1000))
        ]
        await store.register_many(specs)
    instances = [LocklessRegistry(cfg, instance=f"i{k}") for k in range(3)]
    for inst in instances:
        await inst.start()
    print(f"{nodes} nodes cached by 3 instances; writing {rate}/s for {seconds} s ...", flush=True)

    writer = mp.get_context("spawn").Process(target=_writer, args=(server.url, ns, nodes, rate, seconds))
    writer.start()
    while writer.is_alive():
        await asyncio.sleep(0.1)
    propagation = {i.instance: i.metrics().histograms["propagation_us"] for i in instances}

    # Outage: readers keep reading while the server is stopped and started again.
    phase = {"name": "normal"}
    hists = {"normal": HdrHistogram(1, 60_000_000, 3), "outage": HdrHistogram(1, 60_000_000, 3)}
    answered = {"normal": 0, "outage": 0}
    failed = {"normal": 0, "outage": 0}
    stop_reading = asyncio.Event()

    async def reader(inst: LocklessRegistry) -> None:
        rng = random.Random(inst.instance)
        while not stop_reading.is_set():
            i = rng.randrange(nodes)
            t0 = time.perf_counter_ns()
            try:
                node = await inst.get_node(POOLS[i % len(POOLS)], f"n{i}")
                ok = node is not None
            except Exception:
                ok = False
            name = phase["name"]
            hists[name].record_value(max(1, (time.perf_counter_ns() - t0) // 1000))
            answered[name] += ok
            failed[name] += not ok
            await asyncio.sleep(0.001)

    readers = [asyncio.create_task(reader(i)) for i in instances]
    await asyncio.sleep(2.0)
    await store.client.save()
    phase["name"] = "outage"
    t_stop = time.monotonic()
    await asyncio.to_thread(server.stop)
    while not all(i.mode is Mode.LOCAL_ONLY for i in instances):
        await asyncio.sleep(0.001)
    to_local = time.monotonic() - t_stop
    await asyncio.sleep(2.0)
    t_start = time.monotonic()
    await asyncio.to_thread(server.start)
    while not all(i.mode is Mode.NORMAL for i in instances):
        await asyncio.sleep(0.001)
    to_normal = time.monotonic() - t_start
    stop_reading.set()
    await asyncio.gather(*readers)
    for inst in instances:
        await inst.close()
    await store.close()
    server.cleanup()

    cfg_detect = cfg.subscriber.ping_interval_s + cfg.modes.failures_to_local * cfg.redis.socket_timeout_s
    return {
        "machine": machine() | {"redis": server.version},
        "commit": git_commit(),
        "utc": datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"),
        "nodes": nodes,
        "write_rate": rate,
        "seconds": seconds,
        "propagation_us": {
            k: {"count": h.count, "p50": h.p50, "p99": h.p99, "max": h.max} for k, h in propagation.items()
        },
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
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    result = asyncio.run(bench(args.nodes, args.rate, args.seconds))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"invalidation-{result['utc']}-{result['commit']}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
