"""The consistency state machine on a real cluster, with failovers (DESIGN.md section 8a).

:class:`ClusterRegistryMachine` is ``machine.RegistryMachine`` (the same writes, reads,
selections, placements, reaps and invariants, held to the same model) with instances on
a local 3+3 cluster, the pools on different shards, and these faults instead of the
single server's stops, pauses and restarts:

* ``failover_graceful`` / ``_kill`` / ``_lossy``: one pool's shard fails over:

  - ``graceful``: ``CLUSTER FAILOVER`` (the replica catches up first): nothing lost;
  - ``kill``: the replica in step (waited for), then the primary SIGKILLed: nothing lost;
  - ``lossy``: the replica cut off (``sim.cluster_loss``), writes made through the
    instances (acknowledged by the primary only), then the primary frozen and the replica
    made primary at once (TAKEOVER), which lacks them; before the instances can notice (their
    commands to the frozen primary must time out first) six more writes go to the new
    primary, so its seq passes what the instances saw and only the writes' marks can tell
    the two histories apart; then the old primary is killed. The model goes back to what
    it was at the cut (plus the six), and the step ends only once every instance holds
    exactly what Redis holds, so the invariants after it check that the loss was detected
    and repaired (versions may go back once, across the step).

  The killed node is started again (it rejoins as a replica) before the step ends, so every
  step leaves 3 primaries with a replica each;
* ``lose_events`` / ``kill_command_connections``: as on one server, on every node;
* ``publish_garbage``: on the pool's shard, with the publish the scripts use.

A ``failover`` takes 1-4 s (the node timeout is 1 s), so the CI-sized run is small.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import rule
from redis import exceptions as redis_exceptions
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from lockless.core.modes import Mode
from lockless.core.snapshot import NodeSpec
from lockless.protocol import Heartbeat
from sim.cluster_loss import cut_off_replica, kill_frozen, take_over_from_frozen, wait_in_sync
from sim.cluster_server import FailoverMode, LocalCluster, LocalNode
from tests.stateful import checks, steps
from tests.stateful.machine import RegistryMachine, logged
from tests.stateful.model import RegistryModel, records_of
from tests.stateful.ops import POOLS, TALLY, Op, write_ops
from tests.stateful.world import World, until

FAILOVER_S = 20.0
#: The node the new primary's first writes go to (see _new_history).
BURST = "burst"


def restore_pools(model: RegistryModel, kept: RegistryModel, pools: list[str]) -> None:
    """Put ``pools`` of ``model`` back to what ``kept`` holds (the other pools stay)."""
    for key in [k for k in model.nodes if k[0] in pools]:
        del model.nodes[key]
    for key, node in kept.nodes.items():
        if key[0] in pools:
            model.nodes[key] = copy.deepcopy(node)
    for pool in pools:
        model.seq[pool] = kept.seq[pool]


class ClusterAdmin:
    """The machine's raw commands on a cluster: redis-py's cluster client, with KEYS sent to the
    primary owning the pattern's hash tag (a replica may lag)."""

    def __init__(self, client: RedisCluster) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    async def keys(self, pattern: str) -> list[str]:
        # redis-py does not retry a command given its target node: once more after a killed connection.
        for attempt in (0, 1):
            await self.client.initialize()  # (idempotent) the slot map, before asking it for a node
            try:
                return await self.client.keys(pattern, target_nodes=self.client.get_node_from_key(pattern))
            except (ConnectionError, redis_exceptions.ConnectionError):
                if attempt:
                    raise
        raise AssertionError("unreachable")


class _ClusterHolder:
    """Stands where the single-server world keeps its server: the URL."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.url = "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in cluster.startup_nodes)


class ClusterWorld(World):
    """The machine's world on a cluster: a cluster URL, a cluster client for raw commands."""

    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__(_ClusterHolder(cluster))  # type: ignore[arg-type]
        self.cluster = cluster
        seeds = [ClusterNode(h, p) for h, p in cluster.startup_nodes]
        # Retried at once (kill_command_connections closes its connections too); redis-py's
        # default backs off for seconds.
        self.admin = ClusterAdmin(
            RedisCluster(
                startup_nodes=seeds, decode_responses=True, socket_timeout=2.0, retry=Retry(NoBackoff(), 3)
            )
        )
        # The scripts as the cluster runs them (SPUBLISH where it has sharded pub/sub): _new_history
        # writes with their bodies.
        self.run(self.truth.load_scripts())

    def revive(self) -> None:
        # Every fault step restores the cluster before it ends; nothing is left to revive.
        pass

    def close(self) -> None:
        try:
            self.run(self.admin.client.aclose())  # on the world's loop, before it closes
        finally:
            super().close()


class ClusterRegistryMachine(RegistryMachine):
    """RegistryMachine on a cluster, with failovers; see the module docstring."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster  # before the base class makes the world
        super().__init__(_ClusterHolder(cluster))  # type: ignore[arg-type]

    def make_world(self, server: Any) -> World:
        return ClusterWorld(self.cluster)

    # ------------------------------------------------------ single-server faults: off
    # (A plain method of the same name replaces the rule: Hypothesis draws only rules.)
    def restart_server(self) -> None:  # type: ignore[override]
        raise AssertionError("not a rule on a cluster")

    def outage(self) -> None:  # type: ignore[override]
        raise AssertionError("not a rule on a cluster")

    def pause_server(self) -> None:  # type: ignore[override]
        raise AssertionError("not a rule on a cluster")

    # ------------------------------------------------------ faults on every node
    @rule(ops=st.lists(write_ops, min_size=1, max_size=3), trim=st.booleans())
    @logged
    def lose_events(self, ops: list[Op], trim: bool) -> None:
        """Kill every subscription on every node, write while they reconnect; maybe trim the logs."""
        TALLY["fault:kill_pubsub"] += 1
        TALLY["fault:trim_log"] += trim
        for node in self.cluster.all_nodes:
            self.cluster.kill_clients(node, "pubsub")

        async def go() -> None:
            for op in ops:
                await steps.write(self.world, op)
            if trim:
                for pool in POOLS:
                    await self.world.admin.xtrim(self.world.truth.keys.log(pool), maxlen=0, approximate=False)

        self.world.run(go())

    @rule()
    @logged
    def kill_command_connections(self) -> None:
        TALLY["fault:kill_normal"] += 1
        for node in self.cluster.all_nodes:
            self.cluster.kill_clients(node, "normal")

    @rule(
        pool=st.sampled_from(POOLS), garbage=st.sampled_from(("not json", '{"op": "register"}', "[]", "\xff"))
    )
    @logged
    def publish_garbage(self, pool: str, garbage: str) -> None:
        TALLY["fault:garbage_event"] += 1
        channel = self.world.truth.keys.events(pool)
        owner = self.cluster.primary_for_key(channel)
        verb = "SPUBLISH" if self.cluster.server.sharded_pubsub else "PUBLISH"
        with owner.client() as client:
            client.execute_command(verb, channel, garbage)

    # ------------------------------------------------------------------ failover
    # Three rules, not one with a choice: each is drawn as often as any other rule, so a CI-sized
    # run has a few failovers of each kind.
    @rule(pool=st.sampled_from(POOLS), ops=st.lists(write_ops, min_size=1, max_size=3))
    @logged
    def failover_graceful(self, pool: str, ops: list[Op]) -> None:
        self._failover(pool, "graceful", ops)

    @rule(pool=st.sampled_from(POOLS), ops=st.lists(write_ops, min_size=1, max_size=3))
    @logged
    def failover_kill(self, pool: str, ops: list[Op]) -> None:
        self._failover(pool, "kill", ops)

    @rule(pool=st.sampled_from(POOLS), ops=st.lists(write_ops, min_size=1, max_size=3))
    @logged
    def failover_lossy(self, pool: str, ops: list[Op]) -> None:
        self._failover(pool, "lossy", ops)

    def _failover(self, pool: str, how: str, ops: list[Op]) -> None:
        """The pool's shard fails over (see the module docstring); ``ops`` are written through the
        instances meanwhile (lost with the primary when ``how`` is lossy)."""
        TALLY[f"fault:failover_{how}"] += 1
        cluster = self.cluster
        owner = cluster.primary_for_key("{" + pool + "}")

        async def go() -> None:
            if how == "graceful":
                await asyncio.to_thread(cluster.failover, owner, mode=FailoverMode.GRACEFUL)
                for op in ops:
                    await self._write_after_failover(op)
                return
            (replica,) = cluster.replicas_of(owner)
            if how == "kill":
                for op in ops:
                    await steps.write(self.world, op)
                await asyncio.to_thread(wait_in_sync, cluster, owner, replica)
                await asyncio.to_thread(cluster.kill_primary, owner)
            else:
                hit = [p for p in POOLS if cluster.primary_for_key("{" + p + "}") is owner]
                await asyncio.to_thread(cut_off_replica, cluster, owner)
                kept = self.world.model.copy()
                try:
                    for op in ops:
                        await steps.write(self.world, op)  # acknowledged by the primary alone: to be lost
                except BaseException:
                    replica.server.resume()
                    raise
                # No await on the instances' loop from here until the new history is written.
                take_over_from_frozen(cluster, owner, replica)
                restore_pools(self.world.model, kept, hit)  # the shard's pools are back at the cut
                self._new_history(replica, hit)
                await asyncio.to_thread(kill_frozen, cluster, owner, replica, timeout=FAILOVER_S)
                self._history_lost()
            await asyncio.to_thread(cluster.restart, owner)  # rejoins as the new primary's replica
            await self._settle_after_loss(how == "lossy")

        self.world.run(go())

    def _new_history(self, primary: LocalNode, pools: list[str]) -> None:
        """Six changes per pool written straight to the new primary (blocking: no instance runs
        meanwhile), reusing the seqs of the lost writes and passing them; the model follows.

        They go to a node of their own (``burst``, never placeable), so the nodes the lost
        writes touched keep their lost versions in a cache that missed the loss: a new
        version of those nodes would hide it."""
        with primary.client() as client:
            for pool in pools:
                for i in range(6):
                    load = 0.9 if i % 2 == 0 else 0.0  # each one a change: a new version
                    spec = NodeSpec(node_id=BURST, pool=pool, max_jobs=0, load=load)
                    beat = Heartbeat(pool=pool, node_id=BURST, load=load, spec=spec)
                    keys, argv = self.world.truth.args.heartbeats(pool, [beat])  # a batch of one
                    body = self.world.truth.scripts._bodies["heartbeat"]
                    version, outcome = client.execute_command("EVAL", body, len(keys), *keys, *argv)
                    # outcome: 0 quiet, 1 changed, 2 re-created (lockless/redis/scripts.py HEARTBEAT)
                    got = (int(version), int(outcome) != 0, int(outcome) == 2)
                    assert got == self.world.model.heartbeat(pool, BURST, load, None, spec), (
                        f"{pool}/{BURST}: {got}"
                    )
        TALLY["new_history_writes"] += 6 * len(pools)

    async def _write_after_failover(self, op: Op) -> None:
        """A write right after a failover: its first try may meet the old primary demoted."""
        await until(
            lambda: all(r.mode is not Mode.LOCAL_ONLY for r in self.world.instances),
            FAILOVER_S,
            lambda: f"instances out of LOCAL_ONLY: {[r.mode.value for r in self.world.instances]}",
        )
        await steps.write(self.world, op)

    def _history_lost(self) -> None:
        """Writes the instances saw were lost: versions may go back once, after which the
        per-instance monotonic check starts again (seen after the step settled)."""
        self.world.generation += 1
        self.world.seen.clear()

    async def _settle_after_loss(self, lossy: bool) -> None:
        """Every instance back to NORMAL and, after a loss, holding exactly what Redis holds."""
        await until(
            lambda: all(r.mode is Mode.NORMAL and r.caught_up() for r in self.world.instances),
            FAILOVER_S,
            lambda: f"instances caught up after the failover: {[r.mode.value for r in self.world.instances]}",
        )
        if lossy:
            await checks.settle(self.world)  # every instance exactly Redis, Redis exactly the model
            TALLY["loss_repaired"] += 1
            for r in self.world.instances:
                for pool in POOLS:
                    assert records_of(r.cached_nodes(pool)) == self.world.model.records(pool)
