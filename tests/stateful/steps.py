"""The state machine's ordinary steps: writes, reads, selections, placements and liveness.

Each step does one thing through a chosen instance (or through the world's own readers)
and applies the same thing to the model; the answer the instance gives must be the answer
the model predicts, because every write is decided by a Lua script in Redis.

Liveness without sleeping: :func:`lapse` writes a node's ``alive`` score an hour into the
past (server time), so ``job_start`` refuses it and :func:`reap` removes it.
"""

from __future__ import annotations

from lockless.core.modes import Mode
from lockless.core.selection import is_placeable, unmet
from lockless.core.snapshot import Requirements
from lockless.protocol import Heartbeat
from tests.stateful.ops import (
    DEAD_AFTER_S,
    POOLS,
    TALLY,
    Beat,
    JobFinish,
    JobStart,
    Op,
    Register,
    Remove,
)
from tests.stateful.world import World
from tests.support import version_in


async def write(world: World, op: Op) -> None:
    """Run ``op`` through its instance and demand the answer the model predicts."""
    registry = world.inst(op.inst)
    await world.ready(registry)
    model = world.model
    if isinstance(op, Register):
        node = model.get(op.pool, op.node)
        spec = op.spec.build(op.pool, op.node, at_least=node.current_jobs if node else 0)
        version = await registry.register_node(spec)
        assert version == model.register(spec), f"{op}: version {version}"
    elif isinstance(op, Beat):
        node = model.get(op.pool, op.node)
        spec = op.spec.build(op.pool, op.node) if op.spec else None
        limit = node.max_jobs if node else (spec.max_jobs if spec else 0)
        running = None if op.running is None else op.running[:limit]
        got = await registry.heartbeat(op.pool, op.node, load=op.load, running_jobs=running, spec=spec)
        expected = model.heartbeat(op.pool, op.node, op.load, running, spec)
        assert not got.journaled, f"{op}: journaled outside an outage"
        assert (got.version, got.changed, got.recreated) == expected, f"{op}: {got} != {expected}"
    elif isinstance(op, Remove):
        existed = await registry.remove_node(op.pool, op.node)
        assert existed == bool(model.remove(op.pool, op.node)), f"{op}: existed={existed}"
    elif isinstance(op, JobStart):
        got = await registry.job_start(op.pool, op.node, op.job)
        want = model.job_start(op.pool, op.node, op.job)
        observed = (got.admitted, got.reason, got.version, got.current_jobs, got.max_jobs)
        expected = (want.admitted, want.reason, want.version, want.current_jobs, want.max_jobs)
        assert observed == expected, f"{op}: admission {observed} != model {expected}"
    elif isinstance(op, JobFinish):
        released = await registry.job_finish(op.pool, op.node, op.job)
        assert released == model.job_finish(op.pool, op.node, op.job)[0], f"{op}: released={released}"
    else:  # pragma: no cover
        raise AssertionError(op)


async def write_unheard(world: World, op: Op) -> None:
    """Run ``op`` through the world's mute store (same semantics, nobody hears the event)."""
    store, model = world.mute, world.model
    if isinstance(op, Register):
        node = model.get(op.pool, op.node)
        spec = op.spec.build(op.pool, op.node, at_least=node.current_jobs if node else 0)
        assert await store.register(spec) == model.register(spec)
    elif isinstance(op, Beat):
        spec = op.spec.build(op.pool, op.node) if op.spec else None
        got = await store.heartbeat(Heartbeat(pool=op.pool, node_id=op.node, load=op.load, spec=spec))
        expected = model.heartbeat(op.pool, op.node, op.load, None, spec)
        assert (got.version, got.changed, got.recreated) == expected
    elif isinstance(op, Remove):
        assert await store.remove(op.pool, op.node) == model.remove(op.pool, op.node)
    elif isinstance(op, JobStart):
        got = await store.job_start(op.pool, op.node, op.job)
        want = model.job_start(op.pool, op.node, op.job)
        assert (got.admitted, got.reason, got.version) == (want.admitted, want.reason, want.version)
    elif isinstance(op, JobFinish):
        assert await store.job_finish(op.pool, op.node, op.job) == model.job_finish(op.pool, op.node, op.job)


def heartbeat_many(world: World, i: int, batch: list[Beat]) -> None:
    """One batch of quiet heartbeats through instance ``i``; each answer as the model predicts."""

    async def go() -> None:
        registry = world.inst(i)
        await world.ready(registry)
        specs = [b.spec.build(b.pool, b.node) if b.spec else None for b in batch]
        got = await registry.heartbeat_many(
            [
                Heartbeat(pool=b.pool, node_id=b.node, load=b.load, spec=s)
                for b, s in zip(batch, specs, strict=True)
            ]
        )
        for b, s, result in zip(batch, specs, got, strict=True):
            expected = world.model.heartbeat(b.pool, b.node, b.load, None, s)
            assert (result.version, result.changed, result.recreated) == expected, f"{b}: {result}"

    world.run(go())


def place_job(world: World, i: int, pool: str, job_id: str, req: Requirements, policy: str) -> None:
    """Select-then-admit through instance ``i``: every rejection and the placement as the model says."""

    async def go() -> None:
        registry = world.inst(i)
        await world.ready(registry)
        placement = await registry.place_job(pool, job_id, req, policy=policy)
        tried = set(placement.selection.node_ids) if placement.selection else set()
        assert set(placement.rejected) <= tried
        for node_id in placement.rejected:
            outcome = world.model.admission(pool, node_id, job_id)
            assert not outcome.admitted, f"{node_id} rejected {job_id} but the model admits it"
        if placement.placed:
            assert placement.node_id in tried
            outcome = world.model.job_start(pool, placement.node_id, job_id)
            assert outcome.reason == "admitted", f"placed on {placement.node_id}: model says {outcome}"
            assert placement.version == outcome.version

    world.run(go())


def select(world: World, i: int, pool: str, count: int, req: Requirements, policy: str) -> None:
    """A selection picks distinct placeable nodes that meet ``req``, exactly as L1 holds them."""
    registry = world.inst(i)
    selection = world.run(registry.select_nodes(pool, count, req, policy=policy))
    cached = registry.cached_nodes(pool)
    ids = selection.node_ids
    assert len(ids) == len(set(ids)) <= count, f"picks {ids} not distinct or over {count}"
    for pick in selection.picks:
        assert is_placeable(pick) and unmet(pick, req) is None, f"{pick} cannot take {req}"
        assert cached.get(pick.node_id) == pick, f"{pick.node_id} is not what L1 holds"


def read(world: World, i: int, pool: str, node_id: str) -> None:
    """A read answers the node asked for, and (while Redis kept its data) never an older version."""
    registry = world.inst(i)
    before = version_in(registry, pool, node_id)

    async def go() -> None:
        node = await registry.get_node(pool, node_id)
        if node is not None:
            assert node.node_id == node_id and node.pool == pool
            if world.generation == 0:
                assert node.version >= before, f"read went back from {before} to {node.version}"

    world.run(go())


def lapse(world: World, pool: str, k: int, reap_with: int | None) -> None:
    """A node's heartbeat is now an hour old (server time): dead to job_start and the reaper.

    With ``reap_with``, that instance's reaper runs right after.
    """
    existing = sorted(world.model.pool_nodes(pool))
    if not existing:
        return
    node_id = existing[k % len(existing)]

    async def go() -> None:
        seconds, micros = await world.admin.time()
        past = int(seconds) * 1000 + int(micros) // 1000 - int(6 * DEAD_AFTER_S * 1000)
        await world.admin.zadd(world.truth.keys.alive(pool), {node_id: past}, xx=True)

    world.run(go())
    world.model.lapse(pool, node_id)
    TALLY["lapsed"] += 1
    if reap_with is not None:
        reap(world, reap_with)


def reap(world: World, i: int) -> None:
    """Instance ``i``'s reaper removes exactly the lapsed nodes, and nothing unless NORMAL."""
    registry = world.inst(i)
    # reap_once decides before its first await, per pool, whether it may reap (the pool's mode
    # NORMAL, no grace); on one server every pool has the instance's mode.
    active = [p for p in sorted(POOLS) if registry.mode_of(p) is Mode.NORMAL]
    reaped = world.run(registry.reap_once())
    if not active:
        TALLY["reap:not_normal"] += 1
        assert reaped == [], f"reaped {reaped} while {registry.mode}"
        return
    TALLY["reap:reaped_nodes"] += len(reaped)
    at = 0
    for pool in active:
        lapsed = world.model.lapsed(pool)
        order = reaped[at : at + len(lapsed)]
        at += len(lapsed)
        assert set(order) == lapsed, f"pool {pool}: reaped {order}, lapsed {sorted(lapsed)}"
        world.model.reap(pool, order)
    assert at == len(reaped), f"reaped {reaped}: more than the lapsed nodes"
