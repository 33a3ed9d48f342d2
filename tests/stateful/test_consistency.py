"""Several LocklessRegistry instances on one real Redis, under faults, held to a model.

The state machine is in ``machine.py``; this module runs it. Each example starts 2-3
instances on a fresh namespace of a redis-server owned by this test (the
``fault_server`` fixture: it is stopped, paused, restarted and flushed here), drives
them with random writes, reads, selections, placements, reaps and faults, and checks
after every step that Redis equals the model, that no node is over capacity, that no
instance's versions go backwards and that no instance holds a record newer than Redis;
after each ``settle`` step every instance's L1 must equal Redis and the model exactly.
A failure prints the shrunk sequence of steps (``state.outage(...)``, ...).

CI-sized run (part of the normal test command; derandomized: the same examples every run)::

    .venv/bin/pytest tests/stateful -q

Long soak, locally (300 examples x 60 steps by default; prints what ran)::

    .venv/bin/pytest -m soak tests/stateful -s
    STATEFUL_EXAMPLES=2000 STATEFUL_STEPS=100 .venv/bin/pytest -m soak tests/stateful -s

``STATEFUL_EXAMPLES`` and ``STATEFUL_STEPS`` override the sizes of either test.
"""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from sim.redis_server import RedisServer
from tests.stateful.machine import TALLY, RegistryMachine

#: CI size: about a minute on a 2-core machine (with the ci profile; see the module docstring).
CI_EXAMPLES = 25
CI_STEPS = 30


def _run(server: RedisServer, examples: int, steps: int, parent: settings | None = None) -> None:
    examples = int(os.environ.get("STATEFUL_EXAMPLES", examples))
    steps = int(os.environ.get("STATEFUL_STEPS", steps))
    explore = parent is not None
    chosen = settings(
        parent,
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
        run_state_machine_as_test(lambda: RegistryMachine(server), settings=chosen)
    finally:
        elapsed = time.monotonic() - started
        lines = [f"stateful: {TALLY['examples']} examples, {TALLY['steps']} steps in {elapsed:.1f} s"]
        groups: dict[str, list[str]] = {}
        for key, count in sorted(TALLY.items()):
            group, _, name = key.rpartition(":")
            if key not in ("examples", "steps"):
                groups.setdefault(group or "other", []).append(f"{name}={count}")
        lines += [f"  {group}: {', '.join(items)}" for group, items in groups.items()]
        print("\n".join(lines))


@pytest.mark.timeout(900)  # the run takes about a minute; shrinking a failure may take minutes more
def test_instances_stay_consistent_with_redis_and_each_other(fault_server: RedisServer) -> None:
    _run(fault_server, CI_EXAMPLES, CI_STEPS)


@pytest.mark.soak
@pytest.mark.timeout(0)
def test_soak_instances_stay_consistent(fault_server: RedisServer) -> None:
    soak = settings.get_profile("soak")
    _run(fault_server, soak.max_examples, soak.stateful_step_count, parent=soak)
