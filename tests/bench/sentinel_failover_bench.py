"""How long a local Sentinel failover takes (issue 14), per server and fault.

Run: ``python -m tests.bench.sentinel_failover_bench [--failovers 10] [--server valkey]``

One :class:`sim.sentinel_server.SentinelGroup` per server kind, both embedded ones by
default (default settings:
``down_after_ms`` 1000, ``failover_timeout_ms`` 2000). For each fault, ``kill``
(SIGKILL) and ``pause`` (SIGSTOP), it fails the primary over ``--failovers`` times,
bringing the old primary back as a replica after each, and prints the time from the
fault until the first sentinel names the new primary (the promotion, as a client can
first see it), until every sentinel does, and what ``restart_old_primary`` took.

n is small (each failover takes seconds): the figures are the median and the max of n,
not percentiles. These are the harness's own failover times, not the library's time to
follow a failover (that is the ``sentinel-failover`` experiment's number).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from sim.redis_server import ServerKind, find_server
from sim.sentinel_server import SentinelGroup


def _summary(values: list[float]) -> str:
    median = statistics.median(values)
    return f"median {median:.2f} s, min {min(values):.2f}, max {max(values):.2f} (n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--failovers", type=int, default=10, help="failovers per flavor and fault (10)")
    kinds = [k.value for k in ServerKind]
    parser.add_argument(
        "--server", choices=kinds, action="append", help="server kind, repeatable (default: redis, valkey)"
    )
    args = parser.parse_args()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, load {load}")
    for kind in args.server or [ServerKind.REDIS.value, ServerKind.VALKEY.value]:
        server = find_server(kind)
        flavor = str(server)
        with SentinelGroup(server=server) as group:
            for fault in ("kill", "pause"):
                first, every, restart = [], [], []
                for _ in range(args.failovers):
                    failover = group.kill_primary() if fault == "kill" else group.pause_primary()
                    first.append(failover.first_sentinel_s)
                    every.append(failover.all_sentinels_s)
                    started = time.monotonic()
                    group.restart_old_primary()
                    restart.append(time.monotonic() - started)
                print(f"{flavor} {fault}: promoted (first sentinel) {_summary(first)}")
                print(f"{flavor} {fault}: every sentinel            {_summary(every)}")
                print(f"{flavor} {fault}: restart_old_primary       {_summary(restart)}")


if __name__ == "__main__":
    main()
