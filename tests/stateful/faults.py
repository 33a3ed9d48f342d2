"""The state machine's faults, all against the world's own server (never the session's shared one).

* :func:`lose_events`: ``CLIENT KILL TYPE pubsub``, then writes published while the
  subscriptions are down (lost), optionally with the pool logs trimmed to nothing
  (``XTRIM MAXLEN 0``) so that catch-up must relist;
* :func:`silent_writes`: writes whose PUBLISH reaches nobody while every subscription stays
  up (only the health probe can notice);
* :func:`publish_garbage`: an undecodable event on a pool channel;
* :func:`kill_command_connections`: ``CLIENT KILL TYPE normal`` (pooled connections die idle);
* :func:`restart_server`: restart with or without data while the loop is idle (redis-py
  reconnects silently; scripts are gone; an empty restart changes every epoch);
* :func:`outage`: the server stopped while the loop runs, one instance taken to LOCAL_ONLY,
  writes journaled there, then the server started again (empty or with its data) and
  the journal replayed;
* :func:`pause_server`: SIGSTOP for a while with reads running (they must keep answering
  from L1 within a bound), then SIGCONT in the same call.

Each counts itself in ``TALLY`` under ``fault:...``.
"""

from __future__ import annotations

import asyncio
import time

from lockless import RedisUnavailable
from lockless.core.modes import Mode
from lockless.core.selection import is_placeable
from lockless.core.snapshot import NodeSpec
from lockless.registry import LocklessRegistry
from tests.stateful import steps
from tests.stateful.model import RegistryModel
from tests.stateful.ops import (
    CONVERGE_S,
    NODE_IDS,
    PAUSED_READ_BOUND_S,
    POOLS,
    TALLY,
    Beat,
    JobFinish,
    JobStart,
    Op,
    Register,
    Remove,
)
from tests.stateful.world import World, until
from tests.support import StallMeter


def lose_events(world: World, ops: list[Op], trim: bool) -> None:
    """Kill every subscription, write while they reconnect; maybe trim the logs (forces a relist)."""
    TALLY["fault:kill_pubsub"] += 1
    TALLY["fault:trim_log"] += trim
    world.server.kill_clients("pubsub")

    async def go() -> None:
        for op in ops:
            await steps.write(world, op)
        if trim:
            for pool in POOLS:
                await world.admin.xtrim(world.truth.keys.log(pool), maxlen=0, approximate=False)

    world.run(go())


def silent_writes(world: World, ops: list[Op]) -> None:
    """Writes in Redis and its log whose events nobody receives (only the health probe can tell)."""
    TALLY["fault:silent_loss"] += 1

    async def go() -> None:
        for op in ops:
            await steps.write_unheard(world, op)

    world.run(go())


def publish_garbage(world: World, pool: str, garbage: str) -> None:
    """An undecodable message on ``pool``'s event channel."""
    TALLY["fault:garbage_event"] += 1
    world.run(world.admin.publish(world.truth.keys.events(pool), garbage))


def kill_command_connections(world: World) -> None:
    """``CLIENT KILL TYPE normal``: every pooled command connection dies while idle."""
    TALLY["fault:kill_normal"] += 1
    world.server.kill_clients("normal")


def restart_server(world: World, keep_data: bool) -> None:
    """Restart while nothing runs: clients find dead sockets; an empty restart loses everything."""
    TALLY["fault:restart_keep" if keep_data else "fault:restart_empty"] += 1
    world.server.restart(keep_data=keep_data)
    if not keep_data:
        world.data_lost()


def outage(world: World, w: int, keep_data: bool, ops: list[Op]) -> None:
    """Stop Redis under running instances; journal writes on one; start it again; replay."""
    TALLY["fault:outage_keep" if keep_data else "fault:outage_empty"] += 1
    registry = world.inst(w)
    # What the journal should hold, as (op, spec sent); and Redis as the replay will find it.
    journal: list[tuple[Op, NodeSpec | None]] = []
    base = world.model.copy()
    if not keep_data:
        base.lose_data()
    registry.take_replay_rejections()  # only this outage's rejections are compared below

    async def go() -> None:
        await world.ready(registry)
        if keep_data:
            await world.admin.save()
        await asyncio.to_thread(world.server.stop)
        try:
            await until(
                lambda: registry.mode is Mode.LOCAL_ONLY,
                CONVERGE_S,
                lambda: f"{registry.instance} to reach LOCAL_ONLY (is {registry.mode})",
            )
            for pool in POOLS:
                for node_id in registry.cached_nodes(pool):
                    started = time.monotonic()
                    read = await registry.read_node(pool, node_id)
                    assert time.monotonic() - started < PAUSED_READ_BOUND_S
                    assert read.stale and read.mode is Mode.LOCAL_ONLY and read.node is not None
            for op in ops:
                await _journal(registry, op, journal, base)
            TALLY["journaled"] += len(journal)
        finally:
            if not keep_data:
                (world.server.workdir / "dump.rdb").unlink(missing_ok=True)
            await asyncio.to_thread(world.server.start)
        await until(
            lambda: (
                all(r.mode is not Mode.LOCAL_ONLY for r in world.instances)
                and not registry.state().journal_depth
            ),
            CONVERGE_S,
            lambda: (
                f"recovery: modes {[r.mode.value for r in world.instances]}, "
                f"journal {registry.state().journal_depth}"
            ),
        )

    world.run(go())
    if not keep_data:
        world.data_lost()
    before = world.model.copy()
    rejected = _replay(world.model, journal)
    for op, _ in journal:
        if isinstance(op, JobStart):
            TALLY[f"replayed_admission:{before.job_start(op.pool, op.node, op.job).reason}"] += 1
    replayed = [(a.job_id, a.node_id, a.reason) for a in registry.take_replay_rejections()]
    assert replayed == rejected, f"replay rejections {replayed} != model {rejected}"


def _replay(model: RegistryModel, journal: list[tuple[Op, NodeSpec | None]]) -> list[tuple[str, str, str]]:
    """Apply journaled writes to ``model`` in order; returns the admissions Redis will refuse."""
    rejected = []
    for op, spec in journal:
        if isinstance(op, Register):
            assert spec is not None
            model.register(spec)
        elif isinstance(op, Beat):
            model.heartbeat(op.pool, op.node, op.load, None, spec)
        elif isinstance(op, Remove):
            model.remove(op.pool, op.node)
        elif isinstance(op, JobStart):
            outcome = model.job_start(op.pool, op.node, op.job)
            if not outcome.admitted:
                rejected.append((op.job, op.node, outcome.reason))
        elif isinstance(op, JobFinish):
            model.job_finish(op.pool, op.node, op.job)
    return rejected


async def _journal(
    registry: LocklessRegistry,
    op: Op,
    journal: list[tuple[Op, NodeSpec | None]],
    base: RegistryModel,
) -> None:
    """One write in LOCAL_ONLY: check its local answer and mirror the journal (heartbeats coalesce)."""
    if isinstance(op, Register):
        # Keep max_jobs at or above the jobs the node will run when this replays.
        at_replay = base.copy()
        _replay(at_replay, journal)
        node = at_replay.get(op.pool, op.node)
        spec = op.spec.build(op.pool, op.node, at_least=node.current_jobs if node else 0)
        assert await registry.register_node(spec) == 0
        journal.append((op, spec))
    elif isinstance(op, Beat):
        spec = op.spec.build(op.pool, op.node) if op.spec else None
        got = await registry.heartbeat(op.pool, op.node, load=op.load, spec=spec)
        assert got.journaled
        same = [k for k, (j, _) in enumerate(journal) if (j.pool, j.node) == (op.pool, op.node)]
        if same and isinstance(journal[same[-1]][0], Beat):
            journal[same[-1]] = (op, spec)  # replaces the node's newest entry in place
        else:
            journal.append((op, spec))
    elif isinstance(op, Remove):
        await registry.remove_node(op.pool, op.node)
        journal.append((op, None))
    elif isinstance(op, JobStart):
        free = sorted(n for n, s in registry.cached_nodes(op.pool).items() if is_placeable(s))
        if free and op.node not in free:
            # Aim at a node with room in the local view: only those are admitted locally.
            op = JobStart(op.inst, op.pool, free[NODE_IDS.index(op.node) % len(free)], op.job)
        local = registry.cached(op.pool, op.node)
        got = await registry.job_start(op.pool, op.node, op.job)
        placeable = local is not None and is_placeable(local)
        TALLY[f"local_admission:{got.reason}"] += 1
        assert got.admitted == placeable, f"{op}: local admission {got} with L1 {local}"
        if got.admitted:
            assert got.reason == "journaled"
            journal.append((op, None))
    elif isinstance(op, JobFinish):
        assert await registry.job_finish(op.pool, op.node, op.job)
        journal.append((op, None))


def pause_server(world: World, duration: float) -> None:
    """SIGSTOP with reads running: every read answers from L1 within the bound; then SIGCONT."""
    TALLY["fault:pause"] += 1
    before = {(k, p): r.cached_nodes(p) for k, r in enumerate(world.instances) for p in POOLS}
    epochs = {(k, p): r.state().positions[p][1] for k, r in enumerate(world.instances) for p in POOLS}

    async def reads(meter: StallMeter) -> None:
        def within_bound(started: float, what: str) -> None:
            took = time.monotonic() - started
            if took >= PAUSED_READ_BOUND_S:  # not the library's fault if the process could not run
                stalled = meter.stalled(started, started + took)
                assert took - stalled < PAUSED_READ_BOUND_S, (
                    f"{what} blocked {took:.3f} s ({stalled:.3f} s of it a process stall)"
                )

        end = time.monotonic() + duration
        while time.monotonic() < end:
            for (k, pool), nodes in before.items():
                registry = world.instances[k]
                for node_id, old in nodes.items():
                    started = time.monotonic()
                    try:
                        node = await registry.get_node(pool, node_id)
                    except RedisUnavailable:
                        # A repair under way when the server froze (a relist after Redis lost its
                        # data) may land and drop the node from L1; a miss then asks the frozen
                        # server. Right only if neither L1 nor Redis holds the node any more.
                        in_l1 = registry.cached(pool, node_id) is not None
                        in_redis = world.model.get(pool, node_id) is not None
                        assert not (in_l1 or in_redis), f"{node_id}: read failed; L1 {in_l1} Redis {in_redis}"
                        continue  # (a miss waits out the socket timeout: the L1 bound is not its)
                    within_bound(started, f"read of {node_id} in {registry.mode}")
                    if registry.state().positions[pool][1] == epochs[k, pool]:
                        # (An instance still catching up on a data loss may relist with reset.)
                        # A catch-up already under way when the server froze may still land and
                        # bring a removal the instance had not heard of (a silent write): gone is
                        # right then, and only then.
                        removed = world.model.get(pool, node_id) is None
                        assert (node is None and removed) or (
                            node is not None and node.version >= old.version
                        ), f"{node_id}: {node} (removed in Redis: {removed})"
                started = time.monotonic()
                await registry.select_nodes(pool, 2)
                within_bound(started, f"select in {registry.mode}")
                TALLY["paused_reads"] += len(nodes)
            await asyncio.sleep(0.02)  # pacing of the read loop, not a synchronisation

    world.server.pause()
    try:
        with StallMeter() as meter:
            world.run(reads(meter))
    finally:
        world.server.resume()
    world.run(
        until(
            lambda: all(r.mode is not Mode.LOCAL_ONLY for r in world.instances),
            CONVERGE_S,
            lambda: f"instances to leave LOCAL_ONLY after SIGCONT: {[r.mode.value for r in world.instances]}",
        )
    )
