"""What one heartbeat costs Redis and its client (issue 12), measured on a real server.

Run: ``python -m tests.bench.heartbeat_bench [--server redis,valkey] [--nodes 100000]
[--beats 200000] [--batch 100] [--subscribers 2] [--quick]``.

For each server and each mode, a fresh server holds ``--nodes`` registered nodes in one pool
(the ``alive`` zset at fleet size: a ZADD costs log N), and the library's production call,
:meth:`RedisStore.heartbeat_many`, sends ``--beats`` heartbeats in pipelines of ``--batch``,
round-robin over the nodes. Three figures per mode:

* **server us per beat, commandstats**: ``INFO commandstats`` ``usec`` of ``evalsha`` over the
  beats sent (one call per beat, or one per batch where the script takes batches). Redis
  times a script call whole, its inner commands included (they are also listed one by one,
  which shows where the time goes): the issue's yardstick.
* **server CPU us per beat**: the server process's CPU (user + system, psutil) over the pass,
  per beat: commandstats plus what it leaves out (reading and parsing the request, writing the
  reply, the event loop, pub/sub fan-out to subscribers).
* **client CPU us per beat**: this process's CPU per beat inside ``heartbeat_many`` (argument
  building, packing, the pipeline, reply parsing), the library's share of a node agent's cost.

Modes:

* ``quiet`` - the beat carries the load the node registered with: liveness only;
* ``quiet_ttl`` - the same, on a store whose TTL is always due (``ttl_s`` just above
  ``dead_after_s``), so every beat also refreshes the TTL: the dearest quiet beat. With the
  default 60 s TTL, 15 s dead_after and a 5 s interval, one beat in nine is such a beat;
* ``quiet_jobs`` - the beat carries the node's running jobs (4), unchanged since the last beat;
* ``publish`` - ``publish_every_heartbeat`` (the seed's design): every beat a version, a log
  entry and a PUBLISH, with ``--subscribers`` subscribers (separate processes that drain
  their socket) on the pool's channel, as scheduler instances would be.

Results go to ``results/bench/heartbeat-<utc>-<git8>.json`` and a table is printed. The
machine's load average is recorded: numbers taken while other work ran are not reference numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from lockless.config import NodeLifecycleConfig, RedisConfig
from lockless.core.commands import Heartbeat
from lockless.core.snapshot import NodeSpec
from lockless.redis.store import RedisStore
from sim.redis_server import RedisServer
from tests.bench.bench_library import git_state, load_average, machine

MODES = ("quiet", "quiet_ttl", "quiet_jobs", "publish")
POOL = "default"
JOBS_PER_NODE = 4


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of one run."""

    nodes: int = 100_000
    beats: int = 200_000
    batch: int = 100
    subscribers: int = 2
    #: "random": each round beats the nodes in a fresh random order, as jittered beats arrive;
    #: "sequential": in creation order (kind to the server's caches: a lower bound).
    order: str = "random"

    @classmethod
    def quick(cls) -> Plan:
        return cls(nodes=2_000, beats=10_000, batch=100, subscribers=2)


def _specs(n: int) -> list[NodeSpec]:
    return [
        NodeSpec(
            node_id=f"n{i:06d}", pool=POOL, max_jobs=8, load=0.25, resources={"cpu": 16.0}, labels={"gpu"}
        )
        for i in range(n)
    ]


def _store(url: str, ns: str, mode: str) -> RedisStore:
    lifecycle = NodeLifecycleConfig(publish_every_heartbeat=mode == "publish")
    if mode == "quiet_ttl":
        # The TTL is due again one millisecond after each refresh: every beat refreshes it.
        lifecycle = NodeLifecycleConfig(dead_after_s=600.0, ttl_s=600.001)
    redis = RedisConfig(url=url, namespace=ns, socket_timeout_s=10.0, pool_timeout_s=10.0)
    return RedisStore(redis, lifecycle)


def _drainers(url: str, channel: str, n: int) -> list[subprocess.Popen[bytes]]:
    """``n`` subscriber processes on ``channel`` that read and discard what arrives."""
    procs = []
    for _ in range(n):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.heartbeat_bench", "--drain", url, channel],
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"subscribed":
            raise RuntimeError("a subscriber process did not subscribe")
        procs.append(proc)
    return procs


def drain(url: str, channel: str) -> None:
    """A subscriber that costs its publisher what a real one does and does nothing else."""
    host, port = url.removeprefix("redis://").split("/")[0].split(":")
    sock = socket.create_connection((host, int(port)))
    name = channel.encode()
    sock.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(name), name))
    sock.recv(4096)
    print("subscribed", flush=True)
    while sock.recv(1 << 20):
        pass


async def _one_mode(server: RedisServer, mode: str, plan: Plan) -> dict[str, Any]:
    await asyncio.to_thread(server.flushall)
    ns = f"hb-{uuid.uuid4().hex[:6]}"
    store = _store(server.url, ns, mode)
    specs = _specs(plan.nodes)
    drainers: list[subprocess.Popen[bytes]] = []
    try:
        await store.load_scripts()
        for i in range(0, len(specs), 1000):
            await store.register_many(specs[i : i + 1000])
        if mode == "quiet_jobs":
            beats = [
                Heartbeat(
                    pool=POOL,
                    node_id=s.node_id,
                    load=s.load,
                    running_jobs=[f"{s.node_id}-j{k}" for k in range(JOBS_PER_NODE)],
                )
                for s in specs
            ]
        else:
            beats = [Heartbeat(pool=POOL, node_id=s.node_id, load=s.load) for s in specs]
        # One unmeasured round: job sets written, connections open, every node beaten once.
        for i in range(0, len(beats), plan.batch):
            await store.heartbeat_many(beats[i : i + plan.batch])
        if mode == "publish":
            channel = store.keys.events(POOL)
            drainers = await asyncio.to_thread(_drainers, server.url, channel, plan.subscribers)
        sequence: list[Heartbeat] = []
        rng = random.Random(1)
        while len(sequence) < plan.beats:
            round_ = list(beats)
            if plan.order == "random":
                rng.shuffle(round_)
            sequence += round_
        batches = [sequence[start : start + plan.batch] for start in range(0, plan.beats, plan.batch)]
        redis_proc = psutil.Process(server.pid)
        await asyncio.to_thread(server.reset_stats)
        r0 = redis_proc.cpu_times()
        c0, w0 = time.process_time(), time.perf_counter()
        changed = 0
        for batch in batches:
            changed += sum(r.changed for r in await store.heartbeat_many(batch))
        c1, w1 = time.process_time(), time.perf_counter()
        r1 = redis_proc.cpu_times()
        stats = await asyncio.to_thread(server.info, "commandstats")
    finally:
        for proc in drainers:
            proc.kill()
            proc.wait()
        await store.close()
    sent = len(batches) * plan.batch
    if changed != (sent if mode == "publish" else 0):
        raise AssertionError(f"{mode}: {changed} of {sent} beats changed the record")
    commands = {
        name.removeprefix("cmdstat_").lower(): {"calls": int(v["calls"]), "usec": int(v["usec"])}
        for name, v in stats.items()
        if isinstance(v, dict) and "calls" in v and not name.endswith(("info", "config|resetstat", "config"))
    }
    evalsha = commands.get("evalsha", {"calls": 0, "usec": 0})
    if not 0 < evalsha["calls"] <= sent:
        raise AssertionError(f"{mode}: {evalsha['calls']} EVALSHA for {sent} beats")
    return {
        "beats": sent,
        # One call per beat (a pipeline of single-beat scripts) or per batch (batched scripts).
        "evalsha_calls": evalsha["calls"],
        "server_us_per_beat_commandstats": round(evalsha["usec"] / sent, 2),
        "server_cpu_us_per_beat": round(1e6 * (r1.user + r1.system - r0.user - r0.system) / sent, 2),
        "client_cpu_us_per_beat": round(1e6 * (c1 - c0) / sent, 2),
        "beats_per_s": round(sent / (w1 - w0)),
        "inner_commands_per_beat": {
            name: round(v["calls"] / sent, 3) for name, v in sorted(commands.items()) if name != "evalsha"
        },
        "inner_usec_per_beat": {
            name: round(v["usec"] / sent, 3) for name, v in sorted(commands.items()) if name != "evalsha"
        },
    }


async def run(
    servers: Sequence[str], plan: Plan, modes: Sequence[str], out: Path | None, label: str = ""
) -> dict[str, Any]:
    commit, dirty = git_state()
    result: dict[str, Any] = {
        "benchmark": "heartbeat",
        "label": label,
        "utc": datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"),
        "commit": commit,
        "dirty": dirty,
        "plan": dataclasses.asdict(plan),
        "loadavg_start": load_average(),
        "servers": {},
    }
    for kind in servers:
        server = RedisServer(server=kind)
        await asyncio.to_thread(server.start)
        try:
            result.setdefault("machine", machine(server.version))
            entry: dict[str, Any] = {"version": server.version, "modes": {}}
            for mode in modes:
                entry["modes"][mode] = await _one_mode(server, mode, plan)
                print(f"{server.version:>14}  {mode:<10}  {_line(entry['modes'][mode])}", flush=True)
            result["servers"][kind] = entry
        finally:
            await asyncio.to_thread(server.cleanup)
    result["loadavg_end"] = load_average()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"heartbeat-{result['utc']}-{label or commit}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        result["path"] = str(path)
    return result


def _line(m: dict[str, Any]) -> str:
    inner = sum(m["inner_commands_per_beat"].values())
    return (
        f"commandstats {m['server_us_per_beat_commandstats']:6.2f} us  "
        f"server CPU {m['server_cpu_us_per_beat']:6.2f} us  "
        f"client CPU {m['client_cpu_us_per_beat']:6.2f} us  "
        f"inner commands {inner:.2f}  ({m['beats']:,} beats)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="redis,valkey", help="comma-separated LOCKLESS_SERVER kinds")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--nodes", type=int, default=Plan.nodes)
    parser.add_argument("--beats", type=int, default=Plan.beats)
    parser.add_argument("--batch", type=int, default=Plan.batch)
    parser.add_argument("--subscribers", type=int, default=Plan.subscribers)
    parser.add_argument("--order", choices=("random", "sequential"), default=Plan.order)
    parser.add_argument("--quick", action="store_true", help="a smoke run, not a result")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--label", default="", help="names the code measured (e.g. before-4c50ad9)")
    parser.add_argument("--drain", nargs=2, metavar=("URL", "CHANNEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drain:
        drain(*args.drain)
        return
    plan = (
        Plan.quick()
        if args.quick
        else Plan(
            nodes=args.nodes,
            beats=args.beats,
            batch=args.batch,
            subscribers=args.subscribers,
            order=args.order,
        )
    )
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            parser.error(f"--modes: got {m!r}; allowed: {', '.join(MODES)}")
    result = asyncio.run(run([s for s in args.server.split(",") if s], plan, modes, args.out, args.label))
    print(f"load average {result['loadavg_start']} -> {result['loadavg_end']}; written: {result.get('path')}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
