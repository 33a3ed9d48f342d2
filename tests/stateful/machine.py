"""A Hypothesis state machine: 2-3 LocklessRegistry instances, one real redis-server, faults, and a model.

Shape (after Hypothesis's ``DatabaseComparison``): every rule does one thing through a
randomly chosen instance and applies the same thing to :class:`RegistryModel`; the answer
the instance gives must be the answer the model predicts, because every write is decided
by a Lua script in Redis. Invariants run after every step; ``settle`` waits (with a
deadline) until every instance has caught up and then demands exact agreement.

The machine is the thin part: it draws the steps (values and strategies in ``ops.py``),
keeps the example's bookkeeping (the steps so far, travelling with a failure as a note)
and hands each step to a part that takes the example's :class:`~tests.stateful.world.World`
(``world.py``: the server, the instances, the model, the truth reader, the event loop):

* ``steps.py``: writes, reads, selections, placements, and liveness (``lapse``, ``reap``);
* ``faults.py``: ``lose_events``, ``silent_writes``, ``publish_garbage``,
  ``kill_command_connections``, ``restart_server``, ``outage`` and ``pause_server``, all
  against the machine's own server (never the session's shared one); its docstring says
  what each one does;
* ``checks.py``: the invariant, ``settle``, and Redis held to the model.

Rules cannot be coroutines (HypothesisWorks/hypothesis#4107), so the world owns an
``asyncio.Runner`` and each step runs its coroutine on it with ``world.run(...)``.
Between rules the loop does not run: the instances' background tasks (subscriber,
applier, health probe) advance only while a rule or an invariant is running, which is
also when the test looks at them.

Liveness without sleeping: ``lapse`` writes a node's ``alive`` score an hour into the
past (server time), so ``job_start`` refuses it and ``reap`` removes it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from lockless.core.snapshot import Requirements
from sim.redis_server import RedisServer
from tests.stateful import checks, faults, steps
from tests.stateful.ops import (
    NODE_IDS,
    TALLY,
    Beat,
    JobFinish,
    JobStart,
    Op,
    Register,
    Remove,
    SpecArgs,
    beats,
    instances,
    job_finishes,
    job_starts,
    journal_ops,
    node_ids,
    pools,
    quiet_beats,
    registers,
    removes,
    requirements,
    spec_args,
    write_ops,
)
from tests.stateful.world import World

__all__ = ["TALLY", "RegistryMachine"]


def logged(step: Callable[..., None]) -> Callable[..., None]:
    """Count the step, and on failure note every step of the example so far.

    Hypothesis prints the shrunk steps when a failure replays; a failure that depends on
    timing may not, so the steps that led to it travel with the exception as a note.
    """

    @functools.wraps(step)
    def run(self: RegistryMachine, **kwargs: Any) -> None:
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        if step.__name__ != "consistent_with_redis":
            TALLY["steps"] += 1
            TALLY[f"rule:{step.__name__}"] += 1
            self.history.append(f"state.{step.__name__}({args})")
        try:
            step(self, **kwargs)
        except BaseException as exc:
            self.failed = True
            if not isinstance(exc, Exception):
                raise
            exc.add_note("steps of this example, up to the failure:\n  " + "\n  ".join(self.history))
            raise

    return run


class RegistryMachine(RuleBasedStateMachine):
    """Several cache instances on one Redis, kept to a model, with faults."""

    def __init__(self, server: RedisServer) -> None:
        super().__init__()
        self.world = self.make_world(server)
        self.jobs_placed = 0
        self.history: list[str] = []
        #: Set by a failing step: teardown then only cleans up.
        self.failed = False
        TALLY["examples"] += 1

    def make_world(self, server: RedisServer) -> World:
        """The world this machine's examples run in (a cluster's machine makes its own)."""
        return World(server)

    def teardown(self) -> None:
        """Every example ends settled (unless a step already failed), then everything is closed."""
        try:
            if self.world.instances and not self.failed:
                self.history.append("(teardown) state.settle()")
                try:
                    self.world.run(checks.settle(self.world))
                except Exception as exc:
                    exc.add_note("steps of this example, up to the failure:\n  " + "\n  ".join(self.history))
                    raise
        finally:
            self.world.close()

    # ------------------------------------------------------------ steps
    @initialize(count=st.integers(2, 3), nodes=st.lists(st.tuples(pools, node_ids, spec_args), max_size=6))
    @logged
    def start_instances(self, count: int, nodes: list[tuple[str, str, SpecArgs]]) -> None:
        """Start the instances, then register some nodes (node-creating rules may be off in an example)."""

        async def start() -> None:
            await self.world.start_instances(count)
            for pool, node_id, spec in nodes:
                await steps.write(self.world, Register(0, pool, node_id, spec))

        self.world.run(start())

    @rule(op=registers)
    @logged
    def register(self, op: Register) -> None:
        self.world.run(steps.write(self.world, op))

    @rule(op=beats)
    @logged
    def heartbeat(self, op: Beat) -> None:
        self.world.run(steps.write(self.world, op))

    @rule(i=instances, batch=st.lists(quiet_beats, min_size=1, max_size=4))
    @logged
    def heartbeat_many(self, i: int, batch: list[Beat]) -> None:
        steps.heartbeat_many(self.world, i, batch)

    @rule(op=removes)
    @logged
    def remove(self, op: Remove) -> None:
        self.world.run(steps.write(self.world, op))

    @rule(op=job_starts)
    @logged
    def job_start(self, op: JobStart) -> None:
        self.world.run(steps.write(self.world, op))

    @rule(op=job_finishes)
    @logged
    def job_finish(self, op: JobFinish) -> None:
        self.world.run(steps.write(self.world, op))

    @rule(i=instances, pool=pools, req=requirements, policy=st.sampled_from(("power_of_two", "least_loaded")))
    @logged
    def place_job(self, i: int, pool: str, req: Requirements, policy: str) -> None:
        self.jobs_placed += 1
        steps.place_job(self.world, i, pool, f"x{self.jobs_placed}", req, policy)

    @rule(
        i=instances,
        pool=pools,
        count=st.integers(1, 4),
        req=requirements,
        policy=st.sampled_from(("power_of_two", "least_loaded")),
    )
    @logged
    def select(self, i: int, pool: str, count: int, req: Requirements, policy: str) -> None:
        steps.select(self.world, i, pool, count, req, policy)

    @rule(i=instances, pool=pools, node_id=node_ids)
    @logged
    def read(self, i: int, pool: str, node_id: str) -> None:
        steps.read(self.world, i, pool, node_id)

    @rule(pool=pools, k=st.integers(0, len(NODE_IDS) - 1), reap_with=st.none() | instances)
    @logged
    def lapse(self, pool: str, k: int, reap_with: int | None) -> None:
        """A node's heartbeat is now an hour old (server time); with ``reap_with``, that instance reaps."""
        steps.lapse(self.world, pool, k, reap_with)

    @rule(i=instances)
    @logged
    def reap(self, i: int) -> None:
        steps.reap(self.world, i)

    # ------------------------------------------------------------ faults
    @rule(ops=st.lists(write_ops, min_size=1, max_size=3), trim=st.booleans())
    @logged
    def lose_events(self, ops: list[Op], trim: bool) -> None:
        """Kill every subscription, write while they reconnect; maybe trim the logs (forces a relist)."""
        faults.lose_events(self.world, ops, trim)

    @rule(
        ops=st.lists(
            st.one_of(registers, quiet_beats, removes, job_starts, job_finishes), min_size=1, max_size=2
        )
    )
    @logged
    def silent_writes(self, ops: list[Op]) -> None:
        """Writes in Redis and its log whose events nobody receives (only the health probe can tell)."""
        faults.silent_writes(self.world, ops)

    @rule(pool=pools, garbage=st.sampled_from(("not json", '{"op": "register"}', "[]", "\xff")))
    @logged
    def publish_garbage(self, pool: str, garbage: str) -> None:
        faults.publish_garbage(self.world, pool, garbage)

    @rule()
    @logged
    def kill_command_connections(self) -> None:
        faults.kill_command_connections(self.world)

    @rule(keep_data=st.booleans())
    @logged
    def restart_server(self, keep_data: bool) -> None:
        """Restart while nothing runs: clients find dead sockets; an empty restart loses everything."""
        faults.restart_server(self.world, keep_data)

    @rule(w=instances, keep_data=st.booleans(), ops=st.lists(journal_ops, max_size=4))
    @logged
    def outage(self, w: int, keep_data: bool, ops: list[Op]) -> None:
        """Stop Redis under running instances; journal writes on one; start it again; replay."""
        faults.outage(self.world, w, keep_data, ops)

    @rule(duration=st.sampled_from((0.05, 0.3, 0.8)))
    @logged
    def pause_server(self, duration: float) -> None:
        """SIGSTOP with reads running: every read answers from L1 within the bound; then SIGCONT."""
        faults.pause_server(self.world, duration)

    # ------------------------------------------------------------ settle
    @precondition(lambda self: bool(self.world.instances))
    @rule()
    @logged
    def settle(self) -> None:
        """Wait until every instance has caught up to every pool's seq, then demand exact agreement."""
        self.world.run(checks.settle(self.world))

    # --------------------------------------------------------- invariants
    @invariant()
    @logged
    def consistent_with_redis(self) -> None:
        checks.consistent_with_redis(self.world)
