"""Job arrivals (Poisson) and node reads, as SimPy processes.

Each arrival draws its pool, its kind (``[[jobs.asks]]`` by weight), its duration and
the scheduler instance it goes to. Where the job lands is decided at run time by the
architecture under test; the dispatcher schedules its finish there. ``get`` reads of
random nodes arrive as a second Poisson stream. A shard of several gets its share of
both rates.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Generator

import simpy

from sim.model.ops import Cluster, Kind, Op

Emit = Callable[[Op], None]


def start(env: simpy.Environment, emit: Emit, cluster: Cluster, rng: random.Random) -> None:
    """Start the arrival process and, if configured, the read process."""
    cfg = cluster.config.jobs
    if cfg.arrival_rate_per_s > 0:
        env.process(_arrivals(env, emit, cluster, rng, cfg.arrival_rate_per_s / cluster.shards))
    if cfg.get_rate_per_s > 0:
        env.process(_reads(env, emit, cluster, rng, cfg.get_rate_per_s / cluster.shards))


def duration(rng: random.Random, kind: str, mean: float, sigma: float) -> float:
    """One job duration with the configured distribution and mean."""
    if kind == "fixed":
        return mean
    if kind == "exponential":
        return rng.expovariate(1.0 / mean)
    # lognormal with the requested mean: mu = ln(mean) - sigma^2 / 2
    return rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)


def _arrivals(
    env: simpy.Environment, emit: Emit, cluster: Cluster, rng: random.Random, rate: float
) -> Generator:
    cfg = cluster.config.jobs
    weights = [a.weight for a in cfg.asks]
    asks = range(len(cfg.asks))
    # Job numbers are unique across shards: shard s numbers s, s + shards, ...
    for number in itertools.count(cluster.shard, cluster.shards):
        yield env.timeout(rng.expovariate(rate))
        emit(
            Op(
                env.now,
                Kind.JOB,
                number,
                rng.choice(cluster.instances),
                rng.randrange(len(cluster.pools)),
                rng.choices(asks, weights)[0],
                duration(rng, cfg.duration, cfg.duration_mean_s, cfg.duration_sigma),
            )
        )


def _reads(
    env: simpy.Environment, emit: Emit, cluster: Cluster, rng: random.Random, rate: float
) -> Generator:
    nodes = cluster.node_indexes
    while True:
        yield env.timeout(rng.expovariate(rate))
        emit(Op(env.now, Kind.GET, nodes[rng.randrange(len(nodes))], rng.choice(cluster.instances)))
