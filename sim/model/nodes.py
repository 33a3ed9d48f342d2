"""Node processes: heartbeats with jitter, crashes, graceful leaves and rejoins.

One SimPy process per node. A node heartbeats every ``heartbeat_interval_s`` spread
by +- ``heartbeat_jitter``, starting at a uniform offset so that a cluster registered
in one go does not heartbeat in lockstep. Crash and leave are Poisson (exponential
waits); either is followed, after an exponential ``rejoin_after_s``, by a register,
which keeps the population steady over a long run.

All randomness comes from the one seeded ``random.Random`` given to :func:`start`;
SimPy resumes processes in a deterministic order, so sharing it is reproducible, and
one generator costs far less than one per node at 100,000 nodes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Generator

import simpy

from sim.model.ops import Cluster, Kind, Op

Emit = Callable[[Op], None]


def start(env: simpy.Environment, emit: Emit, cluster: Cluster, rng: random.Random) -> None:
    """Start one life process per node of the shard."""
    for idx in cluster.node_indexes:
        env.process(_life(env, emit, cluster, rng, idx))


def _next_failure(rng: random.Random, rate_per_s: float) -> float:
    return rng.expovariate(rate_per_s) if rate_per_s > 0 else math.inf


def _life(env: simpy.Environment, emit: Emit, cluster: Cluster, rng: random.Random, idx: int) -> Generator:
    cfg = cluster.config.nodes
    interval, jitter = cfg.heartbeat_interval_s, cfg.heartbeat_jitter
    crash_rate, leave_rate = cfg.crash_rate_per_hour / 3600, cfg.leave_rate_per_hour / 3600
    instance = cluster.instance_of(idx)
    crash_at = env.now + _next_failure(rng, crash_rate)
    leave_at = env.now + _next_failure(rng, leave_rate)
    # Registered before the clock started; the first heartbeat comes somewhere in the first interval.
    next_beat = env.now + rng.uniform(0, interval)
    while True:
        fail_at = min(crash_at, leave_at)
        if fail_at < next_beat:
            yield env.timeout(fail_at - env.now)
            emit(Op(env.now, Kind.CRASH if crash_at <= leave_at else Kind.LEAVE, idx, instance))
            yield env.timeout(rng.expovariate(1.0 / cfg.rejoin_after_s))
            emit(Op(env.now, Kind.REGISTER, idx, instance))
            crash_at = env.now + _next_failure(rng, crash_rate)
            leave_at = env.now + _next_failure(rng, leave_rate)
            next_beat = env.now + interval * (1.0 + jitter * rng.uniform(-1.0, 1.0))
            continue
        yield env.timeout(next_beat - env.now)
        load = -1.0
        if cfg.load_change_probability and rng.random() < cfg.load_change_probability:
            load = round(rng.random(), 3)
        emit(Op(env.now, Kind.HEARTBEAT, idx, instance, value=load))
        next_beat = env.now + interval * (1.0 + jitter * rng.uniform(-1.0, 1.0))
