"""Batches of heartbeats on a cluster: the library's router (one pipeline per pool's slot, sent at
once) against redis-py's ``ClusterPipeline`` (one pipeline per node), same commands.

Run: ``python -m tests.bench.cluster_pipeline_bench [--batches 200] [--batch 500] [--pools 6]``

Both send the same ``EVALSHA`` calls of the heartbeat script (one call per pool and up to
``HEARTBEATS_PER_CALL`` beats, as ``heartbeat_many`` builds them; changed loads, so every
beat writes and publishes) for batches of ``batch`` nodes spread over ``pools`` pools, on one
local 3+3 cluster, the two lanes alternating batch by batch. Reported: per-batch wall
time percentiles (n = batches per lane) and client CPU per heartbeat (process time over
the lane's batches), and their ratios. The router's per-pool grouping is what gives the
library failures per pool (a shard down fails only its pools' beats); this measures what
that grouping costs or saves against grouping per node.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

import numpy as np
import redis.asyncio.cluster as aiocluster

from lockless import Heartbeat, NodeSpec, RedisConfig, RedisStore
from lockless.redis.scripts import HEARTBEATS_PER_CALL
from sim.cluster_server import LocalCluster

POOLS = ("batch", "mem", "cpu", "etl", "gpu", "train", "infer", "web", "ml")


async def run(batches: int, batch: int, pools: int, server: str | None) -> dict[str, Any]:
    cluster = LocalCluster(server=server, node_timeout_ms=1000)
    await asyncio.to_thread(cluster.start)
    try:
        url = "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in cluster.startup_nodes)
        store = RedisStore(RedisConfig(url=url, namespace=f"pipebench-{os.getpid()}", max_connections=64))
        await store.load_scripts()
        names = POOLS[:pools]
        specs = [NodeSpec(node_id=f"n{i}", pool=names[i % pools], max_jobs=4) for i in range(batch)]
        await store.register_many(specs)
        rc = aiocluster.RedisCluster(
            startup_nodes=[aiocluster.ClusterNode(h, p) for h, p in cluster.startup_nodes],
            decode_responses=True,
        )
        await rc.initialize()
        sha = store.scripts._shas["heartbeat"]
        lanes: dict[str, list[float]] = {"router_per_pool": [], "redis_py_per_node": []}
        cpu = dict.fromkeys(lanes, 0.0)
        for b in range(2 * batches):
            load = 0.9 if b % 4 < 2 else 0.1  # every beat a change (load moves past the tolerance)
            beats = [Heartbeat(pool=s.pool, node_id=s.node_id, load=load) for s in specs]
            lane = list(lanes)[b % 2]
            c0, t0 = time.process_time(), time.perf_counter()
            if lane == "router_per_pool":
                await store.heartbeat_many(beats)
            else:
                pipe = rc.pipeline()
                for pool in names:
                    mine = [beat for beat in beats if beat.pool == pool]
                    for start in range(0, len(mine), HEARTBEATS_PER_CALL):
                        keys, argv = store.args.heartbeats(pool, mine[start : start + HEARTBEATS_PER_CALL])
                        # (pipe.evalsha is refused in a cluster pipeline; the raw command is routed by keys)
                        pipe.execute_command("EVALSHA", sha, len(keys), *keys, *argv)
                await pipe.execute()
            lanes[lane].append(time.perf_counter() - t0)
            cpu[lane] += time.process_time() - c0
        await rc.aclose()
        await store.close()
        version = str(cluster.server)
    finally:
        await asyncio.to_thread(cluster.cleanup)
    out: dict[str, Any] = {"server": version, "batch": batch, "pools": pools, "lanes": {}}
    for lane, times in lanes.items():
        ms = np.asarray(times) * 1000
        p50, p99 = np.percentile(ms, [50, 99])
        out["lanes"][lane] = {
            "n": len(times),
            "p50_ms": round(float(p50), 2),
            "p99_ms": round(float(p99), 2),
            "client_cpu_us_per_beat": round(cpu[lane] / (len(times) * batch) * 1e6, 1),
        }
    r, p = out["lanes"]["router_per_pool"], out["lanes"]["redis_py_per_node"]
    out["router_over_redis_py"] = {
        "p50": round(r["p50_ms"] / p["p50_ms"], 3),
        "cpu_per_beat": round(r["client_cpu_us_per_beat"] / p["client_cpu_us_per_beat"], 3),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--pools", type=int, default=6)
    parser.add_argument("--server", default=None)
    args = parser.parse_args()
    before = os.getloadavg()
    result = asyncio.run(run(args.batches, args.batch, args.pools, args.server))
    print(f"{result['server']}, batches of {result['batch']} over {result['pools']} pools, load {before}")
    for lane, s in result["lanes"].items():
        print(
            f"  {lane:18} n={s['n']:>4}  P50 {s['p50_ms']:7.2f} ms  P99 {s['p99_ms']:7.2f} ms  "
            f"client CPU {s['client_cpu_us_per_beat']:5.1f} us/beat"
        )
    print(f"  router / redis-py: {result['router_over_redis_py']}")


if __name__ == "__main__":
    main()
