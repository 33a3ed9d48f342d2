"""How long two LocklessRegistry instances take to follow a Sentinel failover (issue 14).

Run: ``python -m tests.bench.sentinel_follow_bench [--failovers 10] [--server valkey] [--fault kill]``

For each server kind (both embedded ones by default) one
:class:`sim.sentinel_server.SentinelGroup` (``down_after_ms`` 1000), and for each fault
(``kill``: SIGKILL, ``pause``: SIGSTOP) ``--failovers`` rounds of
``tests.sentinel.follow.fail_over_and_follow``: two instances on the group's
``redis+sentinel://`` URL with the test suite's fast settings (PING every 0.1 s, PONG
deadline 0.25 s, socket timeouts 0.25 s, reconnect backoff up to 0.2 s); the primary
fails; the time from the fault until each instance is back in NORMAL (commands answered
on the new primary, event stream subscribed there, pools repaired), then checked by an
admission seen live by the other instance. The old primary comes back as a replica after
each round.

Printed per server and fault: the promotion (first sentinel naming the new primary),
the follow time (the later of the two instances), and follow minus promotion (what the
library adds). n is small (each round takes seconds): median and max of n, not percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import statistics
import uuid

from sim.redis_server import ServerKind, find_server
from sim.sentinel_server import SentinelGroup
from tests.sentinel.follow import FAULTS, fail_over_and_follow
from tests.support import fast_config


def _summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s (n={len(values)})"


async def _rounds(group: SentinelGroup, fault: str, failovers: int) -> tuple[list[float], list[float]]:
    promoted, followed = [], []
    for _ in range(failovers):
        config = fast_config(group.url, f"bench-{uuid.uuid4().hex[:8]}")
        result = await fail_over_and_follow(group, config, fault=fault)
        promoted.append(result.failover.first_sentinel_s)
        followed.append(max(result.follow_s.values()))
        await asyncio.to_thread(group.restart_old_primary)
    return promoted, followed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--failovers", type=int, default=10, help="failovers per server and fault (10)")
    kinds = [k.value for k in ServerKind]
    parser.add_argument(
        "--server", choices=kinds, action="append", help="server kind, repeatable (default: redis, valkey)"
    )
    parser.add_argument("--fault", choices=FAULTS, action="append", help="repeatable (default: both)")
    args = parser.parse_args()
    # Each failover logs every mode switch and lost subscription (warnings): the figures are the output.
    logging.getLogger("lockless").setLevel(logging.ERROR)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, load {load}")
    for kind in args.server or [ServerKind.REDIS.value, ServerKind.VALKEY.value]:
        server = find_server(kind)
        with SentinelGroup(server=server) as group:
            for fault in args.fault or list(FAULTS):
                promoted, followed = asyncio.run(_rounds(group, fault, args.failovers))
                added = [f - p for f, p in zip(followed, promoted, strict=True)]
                print(f"{server} {fault}: promoted            {_summary(promoted)}")
                print(f"{server} {fault}: both instances NORMAL {_summary(followed)}")
                print(f"{server} {fault}: follow - promotion   {_summary(added)}")


if __name__ == "__main__":
    main()
