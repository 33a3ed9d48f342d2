"""The consistency state machine on a real 3+3 cluster with failovers (``cluster_machine.py``).

One cluster serves every example (each on a namespace of its own); the pools ``p`` and
``q`` are put on different shards first, so a failover of one pool's shard must leave the
other pool's instances alone. Every failover step leaves the cluster as it found it:
3 primaries, each with a replica.

CI-sized run (part of the normal test command, on both servers in CI; derandomized)::

    .venv/bin/pytest tests/stateful/test_cluster_consistency.py -q

Longer, locally: ``STATEFUL_CLUSTER_EXAMPLES=40 STATEFUL_CLUSTER_STEPS=30 pytest -m soak
tests/stateful/test_cluster_consistency.py -s``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from sim.cluster_server import LocalCluster
from sim.redis_server import ServerBinary
from tests.stateful.cluster_machine import ClusterRegistryMachine
from tests.stateful.machine import TALLY

#: CI size: a failover costs 1-4 s; this draws about 20 of them, under a minute on 2 cores.
CI_EXAMPLES = 8
CI_STEPS = 14


@pytest.fixture(scope="module")
def cluster(server_binary: ServerBinary) -> Iterator[LocalCluster]:
    with LocalCluster(server=server_binary, node_timeout_ms=1000) as shared:
        p, q = shared.primary_for_key("{p}"), shared.primary_for_key("{q}")
        if p is q:  # (a fresh 3-primary cluster puts both on its third shard)
            shared.move_key_slot("{q}", next(n for n in shared.primaries() if n is not p))
        yield shared


def _run(cluster: LocalCluster, examples: int, steps: int, *, explore: bool) -> None:
    examples = int(os.environ.get("STATEFUL_CLUSTER_EXAMPLES", examples))
    steps = int(os.environ.get("STATEFUL_CLUSTER_STEPS", steps))
    chosen = settings(
        # The CI-sized run draws the same examples every time (a check, not a search: a
        # failure there is a regression, not the luck of the draw); the soak explores.
        derandomize=not explore,
        database=None if not explore else settings().database,
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    TALLY.clear()
    started = time.monotonic()
    try:
        run_state_machine_as_test(lambda: ClusterRegistryMachine(cluster), settings=chosen)
    finally:
        elapsed = time.monotonic() - started
        faults = {k: v for k, v in sorted(TALLY.items()) if k.startswith(("fault:", "loss"))}
        done = f"{TALLY['examples']} examples, {TALLY['steps']} steps in {elapsed:.1f} s"
        print(f"stateful on a cluster: {done}; {faults}")


@pytest.mark.timeout(900)
def test_instances_on_a_cluster_stay_consistent_through_failovers(cluster: LocalCluster) -> None:
    _run(cluster, CI_EXAMPLES, CI_STEPS, explore=False)


@pytest.mark.soak
@pytest.mark.timeout(0)
def test_soak_instances_on_a_cluster(cluster: LocalCluster) -> None:
    _run(cluster, 60, 30, explore=True)
