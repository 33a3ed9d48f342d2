"""Jobs already running when the clock starts, so a run begins at its target utilization.

Real fleets run hot, and admission races only happen when nodes fill (DESIGN.md section
8, "Load"). Filling a cluster from empty takes about one mean job duration, longer than
most phases, so a run with ``jobs.utilization`` > 0 starts full instead: every node gets
``utilization * max_jobs`` jobs (rounded up or down at random, so the total is right on
average and nodes differ by at most one), registered with the node at bootstrap (its job
set and ``current_jobs``), each finishing after a remaining duration drawn from the job
duration distribution. For exponential durations that is exactly the steady state
(memoryless); for the others it is an approximation, and the run's measured utilization
(``utilization`` distribution) says what it really was.

The draw covers every node of the cluster in order, whatever the shard, so each worker
finds the same jobs on its nodes as the bootstrap put there.
"""

from __future__ import annotations

import math
import random

from sim.config import ExperimentConfig
from sim.model.jobs import duration
from sim.model.plan import Cluster


def initial_jobs(config: ExperimentConfig, cluster: Cluster) -> dict[int, list[tuple[str, float]]]:
    """Node index -> [(job id, finishes at simulated s)] for the shard's nodes; empty if utilization is 0."""
    jobs_cfg, nodes = config.jobs, config.nodes
    if jobs_cfg.utilization <= 0:
        return {}
    rng = random.Random(f"{config.experiment.seed}-prefill")
    per_node = jobs_cfg.utilization * nodes.max_jobs
    whole, frac = math.floor(per_node), per_node - math.floor(per_node)
    out: dict[int, list[tuple[str, float]]] = {}
    for i in range(nodes.count):
        k = min(nodes.max_jobs, whole + (1 if rng.random() < frac else 0))
        jobs = [
            (f"p{i}-{j}", duration(rng, jobs_cfg.duration, jobs_cfg.duration_mean_s, jobs_cfg.duration_sigma))
            for j in range(k)
        ]
        if i in cluster.specs and jobs:
            out[i] = jobs
    return out
