"""What the state machine demands of Redis and of every instance, read through the world's truth reader.

* :func:`check_redis`: Redis holds exactly the model (records, versions, seqs, job sets)
  and no node is over capacity;
* :func:`consistent_with_redis` (the invariant, after every step): that, and no instance's
  versions go backwards, and no instance holds a record newer than Redis;
* :func:`settle` (a rule, and every example's teardown): wait with a deadline until every
  instance has caught up, then demand exact agreement of every L1, every read and every
  selection with Redis and the model.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from lockless.core.snapshot import NodeSnapshot, Requirements
from tests.stateful.model import RegistryModel, records_of, snapshot_record
from tests.stateful.ops import CONVERGE_S, NODE_IDS, POOLS, TALLY
from tests.stateful.world import World


@dataclass
class Truth:
    """One pool as Redis holds it, read after the caches were looked at."""

    seq: int
    epoch: str | None
    nodes: dict[str, NodeSnapshot]
    alive: set[str]
    node_keys: set[str]
    job_sets: dict[str, set[str]]


async def read_truth(world: World) -> dict[str, Truth]:
    """Every pool as Redis holds it now, read through the world's own truth reader."""
    client, keys = world.admin, world.truth.keys
    out: dict[str, Truth] = {}
    for pool in POOLS:
        listing = await world.truth.relist(pool)
        assert not listing.malformed, f"malformed records in Redis: {listing.malformed}"
        node_prefix, jobs_prefix = keys.node_prefix(pool), keys.jobs_prefix(pool)
        names = await client.keys(f"{keys.node_prefix(pool)[: -len('node:')]}*")
        job_sets = {}
        for name in names:
            if name.startswith(jobs_prefix):
                job_sets[name[len(jobs_prefix) :]] = set(await client.smembers(name))
        out[pool] = Truth(
            seq=listing.seq,
            epoch=listing.epoch,
            nodes={n.node_id: n for n in listing.nodes},
            alive=set(await client.zrange(keys.alive(pool), 0, -1)),
            node_keys={n[len(node_prefix) :] for n in names if n.startswith(node_prefix)},
            job_sets=job_sets,
        )
    return out


def check_redis(model: RegistryModel, truth: dict[str, Truth]) -> None:
    """Redis holds exactly the model: records, versions, seqs, job sets; nobody over capacity."""
    for pool, t in truth.items():
        for node_id, node in t.nodes.items():
            assert 0 <= node.current_jobs <= node.max_jobs, f"{pool}/{node_id} over capacity: {node}"
            assert node.current_jobs == len(t.job_sets.get(node_id, ())), f"{pool}/{node_id} job count"
        assert t.node_keys == t.alive == set(t.nodes), (
            f"pool {pool}: node keys {sorted(t.node_keys)}, alive {sorted(t.alive)}, "
            f"listed {sorted(t.nodes)} disagree"
        )
        assert records_of(t.nodes) == model.records(pool), (
            f"pool {pool}: Redis {records_of(t.nodes)} != model {model.records(pool)}"
        )
        assert t.job_sets == model.job_sets(pool), f"pool {pool}: job sets {t.job_sets}"
        assert t.seq == model.seq[pool], f"pool {pool}: seq {t.seq} != model {model.seq[pool]}"
        assert (t.epoch is None) == (t.seq == 0), f"pool {pool}: epoch {t.epoch!r} at seq {t.seq}"


def consistent_with_redis(world: World) -> None:
    """The invariant: Redis equals the model; every cache is behind Redis or equal, never ahead or back."""
    if not world.instances:
        return
    # Caches first, Redis after: a cache may only be behind the Redis read, never ahead of it.
    caches = {
        (k, p): (r.cached_nodes(p), r.state().positions[p][1], r.state().assumed[p])
        for k, r in enumerate(world.instances)
        for p in POOLS
    }
    truth = world.run(read_truth(world))
    check_redis(world.model, truth)
    for (k, pool), (nodes, epoch, assumed) in caches.items():
        name = world.instances[k].instance
        known, seen = world.seen.get((k, pool), (None, {}))
        if known is not None and epoch != known:
            seen = {}  # a new life of the pool's data: versions restart (DESIGN.md section 5.5)
        for node_id, node in nodes.items():
            assert node.version >= seen.get(node_id, 0), (
                f"{name}: {pool}/{node_id} went back from version {seen[node_id]} to {node.version}"
            )
            seen[node_id] = node.version
        world.seen[k, pool] = (epoch, seen)
        t = truth[pool]
        if world.generation and (epoch is None or epoch != t.epoch):
            continue  # has not yet noticed that Redis lost its data: it cannot know better
        for node_id, node in nodes.items():
            held = t.nodes.get(node_id)
            limit = held.version if held is not None else t.seq
            assert node.version <= limit, (
                f"{name}: {pool}/{node_id} at version {node.version}, newer than Redis ({limit})"
            )
            if held is not None and held.version == node.version and node_id not in assumed:
                assert snapshot_record(node) == snapshot_record(held), (
                    f"{name}: {pool}/{node_id} at version {node.version} is {node}, Redis holds {held}"
                )


async def settle(world: World) -> None:
    """Wait until every instance has caught up to every pool's seq, then demand exact agreement."""

    def lagging(states: dict[str, tuple[int, str | None]]) -> list[str]:
        out = []
        for r in world.instances:
            state = r.state()
            positions = dict(state.positions)
            if not r.caught_up() or state.journal_depth or positions != states:
                out.append(f"{r.instance}: {r.mode.value} at {positions}, journal {state.journal_depth}")
        return out

    deadline = time.monotonic() + CONVERGE_S
    while True:
        states = await world.truth.pool_states(list(POOLS))
        behind = lagging(states)
        if not behind:
            break
        if time.monotonic() >= deadline:
            raise AssertionError(f"not caught up within {CONVERGE_S} s to Redis {states}: {behind}")
        await asyncio.sleep(0.01)
    truth = await read_truth(world)
    check_redis(world.model, truth)
    model = world.model
    for pool in POOLS:
        want = model.records(pool)
        for r in world.instances:
            got = records_of(r.cached_nodes(pool))
            assert got == want, f"{r.instance} L1 of {pool} after settling: {got} != Redis/model {want}"
            # The same through the read API, including nodes that do not exist.
            for node_id in NODE_IDS:
                node = await r.get_node(pool, node_id)
                assert (None if node is None else snapshot_record(node)) == want.get(node_id), node_id
            # Unconstrained least-loaded over the whole pool picks exactly the placeable nodes.
            everything = await r.select_nodes(pool, len(NODE_IDS), policy="least_loaded")
            assert set(everything.node_ids) == model.placeable(pool), (
                f"{r.instance} selects {everything.node_ids} in {pool}; placeable: "
                f"{sorted(model.placeable(pool))}"
            )
            assert everything.considered == len(want)
            assert sum(everything.filtered.values()) + len(everything.picks) == len(want), everything
            # Never a removed or full node, whatever the requirements and policy.
            for req in (Requirements(), Requirements(labels={"m1"}), Requirements(resources={"cpu": 4})):
                for policy in ("power_of_two", "least_loaded"):
                    picked = await r.select_nodes(pool, 2, req, policy=policy)
                    fits = model.placeable(pool, req)
                    assert set(picked.node_ids) <= fits, f"{r.instance} picked {picked.node_ids} of {fits}"
                    assert len(picked.picks) == min(2, len(fits)), f"{picked.explain()} with {fits}"
    TALLY["settled"] += 1

