"""A replica cut off its primary: the lag that makes a failover lose acknowledged writes.

Replication is asynchronous: a primary acknowledges a write before its replica has it,
and a replica promoted before the write reached it has lost it (DESIGN.md section 8a).
On loopback the window is a fraction of a millisecond, so a primary killed under load
rarely loses anything; a replica that *lags* (cut off by the network, stalled by its
disk or its CPU) is what loses writes in practice. :func:`cut_off` models that lag
exactly: the replica is frozen (SIGSTOP) once in sync and its replication connection
closed, so every write the primary acknowledges from then on reaches no replica. Killing
the primary and resuming the replica then loses precisely those writes.

(Freezing the replica alone would not do: the primary's replication stream would sit in
the frozen replica's socket buffer and be applied when it resumes.)

One rule for both deployments that fail over: a cluster shard (``sim.cluster_loss``) and a
Sentinel group (``sim.sentinel_target``). Every function is synchronous and bounded by a
timeout; call them through ``asyncio.to_thread`` from a loop.
"""

from __future__ import annotations

import time

from sim.redis_server import RedisServer, RedisServerError

__all__ = ["cut_off", "replication_offsets", "wait_in_sync"]

_POLL_S = 0.01


def replication_offsets(primary: RedisServer, replica: RedisServer) -> tuple[int, int]:
    """``(primary's master_repl_offset, replica's slave_repl_offset)`` from ``INFO replication``."""
    ours = primary.info("replication")
    theirs = replica.info("replication")
    return int(ours["master_repl_offset"]), int(theirs.get("slave_repl_offset", -1))


def wait_in_sync(
    primary: RedisServer,
    replica: RedisServer,
    timeout: float = 10.0,
    *,
    names: tuple[str, str] = ("primary", "replica"),
    error: type[RedisServerError] = RedisServerError,
) -> None:
    """Wait until ``replica`` has every byte ``primary`` has sent (offsets equal); else ``error``."""
    deadline = time.monotonic() + timeout
    while True:
        mine, theirs = replication_offsets(primary, replica)
        if mine == theirs:
            return
        if time.monotonic() >= deadline:
            raise error(f"{names[1]} still behind {names[0]} ({theirs} < {mine}) after {timeout} s")
        time.sleep(_POLL_S)  # poll; the deadline bounds the wait


def cut_off(
    primary: RedisServer,
    replica: RedisServer,
    timeout: float = 10.0,
    *,
    names: tuple[str, str] = ("primary", "replica"),
    error: type[RedisServerError] = RedisServerError,
) -> None:
    """Freeze ``replica`` once it is in sync with ``primary`` and close their replication link.

    From the return on, writes ``primary`` acknowledges reach no replica. Undo by killing
    the primary and resuming the replica (it is promoted without those writes), or by
    ``replica.resume()`` alone (it reconnects and catches up: nothing lost)."""
    wait_in_sync(primary, replica, timeout, names=names, error=error)
    replica.pause()
    if primary.kill_clients("replica") < 1:
        replica.resume()
        raise error(f"cut_off_replica: no replication link of {names[0]} to close")
