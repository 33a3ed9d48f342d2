"""What ``WAIT 1`` after every write costs (``redis.wait_replicas``), on a local 3+3 cluster.

Run: ``python -m tests.bench.wait_bench [--rounds 20] [--per-round 250] [--server valkey]``

Two stores on the same pool of the same cluster, one writing with ``wait_replicas = 1``
(``WAIT 1 <timeout>`` in the pipeline of each write, on the connection that wrote), one
without; each round runs ``per_round`` admissions (``job_start``) and releases
(``job_finish``) on each, the order of the two lanes alternating every round, so that
drift on the shared machine falls on both alike. One sequential caller, per-call
``perf_counter_ns``. Percentiles are exact over every sample; the ratio WAIT / no WAIT of
each percentile comes with a 95% bootstrap interval (both lanes resampled, 2,000 times).
Results go to ``results/bench/wait-<utc>-<git8>.json`` and a table is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lockless import NodeSpec, RedisConfig, RedisStore
from sim.cluster_server import LocalCluster

PERCENTILES = (50, 95, 99)


def summary(samples_us: np.ndarray) -> dict[str, Any]:
    p50, p95, p99 = np.percentile(samples_us, PERCENTILES)
    return {"n": int(samples_us.size), "p50_us": float(p50), "p95_us": float(p95), "p99_us": float(p99)}


def ratio_ci(
    a: np.ndarray, b: np.ndarray, q: float, rng: np.random.Generator, draws: int = 2000
) -> list[float]:
    """95% bootstrap interval of percentile(a, q) / percentile(b, q)."""
    ia = rng.integers(0, a.size, size=(draws, a.size))
    ib = rng.integers(0, b.size, size=(draws, b.size))
    ratios = np.percentile(a[ia], q, axis=1) / np.percentile(b[ib], q, axis=1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return [round(float(low), 3), round(float(high), 3)]


async def run(rounds: int, per_round: int, server: str | None) -> dict[str, Any]:
    cluster = LocalCluster(server=server, node_timeout_ms=1000)
    await asyncio.to_thread(cluster.start)
    try:
        url = "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in cluster.startup_nodes)
        ns = f"waitbench-{os.getpid()}"
        plain = RedisStore(RedisConfig(url=url, namespace=ns))
        waiting = RedisStore(RedisConfig(url=url, namespace=ns, wait_replicas=1, wait_timeout_ms=100))
        lanes = {"no_wait": plain, "wait_1": waiting}
        for store in lanes.values():
            await store.load_scripts()
        nodes = 50
        await plain.register_many(
            [NodeSpec(node_id=f"n{i}", pool="bench", max_jobs=per_round * 2) for i in range(nodes)]
        )
        samples: dict[str, dict[str, list[int]]] = {
            lane: {"job_start": [], "job_finish": []} for lane in lanes
        }
        for r in range(rounds):
            order = list(lanes) if r % 2 == 0 else list(reversed(lanes))
            for lane in order:
                store = lanes[lane]
                for i in range(per_round):
                    node, job = f"n{i % nodes}", f"{lane}-{r}-{i}"
                    t = time.perf_counter_ns()
                    await store.job_start("bench", node, job)
                    samples[lane]["job_start"].append(time.perf_counter_ns() - t)
                    t = time.perf_counter_ns()
                    await store.job_finish("bench", node, job)
                    samples[lane]["job_finish"].append(time.perf_counter_ns() - t)
        unreplicated = waiting.metrics.counters.get("writes_unreplicated", 0)
        for store in lanes.values():
            await store.close()
        version = str(cluster.server)
    finally:
        await asyncio.to_thread(cluster.cleanup)
    rng = np.random.default_rng(1)
    out: dict[str, Any] = {"server": version, "rounds": rounds, "per_round": per_round, "ops": {}}
    for op in ("job_start", "job_finish"):
        a = np.asarray(samples["wait_1"][op], dtype=np.float64) / 1000
        b = np.asarray(samples["no_wait"][op], dtype=np.float64) / 1000
        out["ops"][op] = {
            "wait_1": summary(a),
            "no_wait": summary(b),
            "ratio": {
                f"p{q}": {
                    "value": round(float(np.percentile(a, q) / np.percentile(b, q)), 3),
                    "ci95": ratio_ci(a, b, q, rng),
                }
                for q in PERCENTILES
            },
        }
    out["writes_unreplicated"] = unreplicated
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=250)
    parser.add_argument("--server", default=None, help="LOCKLESS_SERVER kind (default: the environment's)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    result = asyncio.run(run(args.rounds, args.per_round, args.server))
    result["loadavg"] = {
        "before": [round(x, 2) for x in load_before],
        "after": [round(x, 2) for x in os.getloadavg()],
    }
    git = subprocess.run(
        ["git", "rev-parse", "--short=8", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path("results/bench") / f"wait-{stamp}-{git or 'unknown'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"WAIT 1 100 vs none, {result['server']}, load {result['loadavg']}")
    for op, data in result["ops"].items():
        for lane in ("no_wait", "wait_1"):
            s = data[lane]
            print(
                f"  {op:10} {lane:8} n={s['n']:>6}  P50 {s['p50_us']:8.1f}  "
                f"P95 {s['p95_us']:8.1f}  P99 {s['p99_us']:8.1f} us"
            )
        ratios = ", ".join(
            f"{k} {v['value']}x [{v['ci95'][0]}, {v['ci95'][1]}]" for k, v in data["ratio"].items()
        )
        print(f"  {op:10} ratio    {ratios}")
    print(f"  writes WAIT saw unreplicated: {result['writes_unreplicated']}")
    print(out)


if __name__ == "__main__":
    main()
