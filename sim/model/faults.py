"""The fault schedule as a SimPy process: each fault's start and end land in the plan.

Faults are not random: an experiment names them (``[[faults]]``) so that every
architecture meets the same outage at the same moment. Instant faults (restart_empty,
kill_pubsub, cut) have a start only.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence

import simpy

from sim.config import INSTANT_FAULTS, FaultSpec
from sim.model.ops import Kind, Op

Emit = Callable[[Op], None]


def start(env: simpy.Environment, emit: Emit, faults: Sequence[FaultSpec]) -> None:
    """One process per fault."""
    for index, fault in enumerate(faults):
        env.process(_fault(env, emit, index, fault))


def _fault(env: simpy.Environment, emit: Emit, index: int, fault: FaultSpec) -> Generator:
    yield env.timeout(fault.at_s)
    emit(Op(env.now, Kind.FAULT_START, index))
    if fault.kind not in INSTANT_FAULTS:
        yield env.timeout(fault.duration_s)
        emit(Op(env.now, Kind.FAULT_END, index))
