"""Online consistency checks and monitors, each reading Redis or a registry's public API.

* :func:`capacity_watch` / :func:`capacity_sweep` - the invariant admission control must
  keep: no node in Redis has ``current_jobs`` above ``max_jobs`` or below zero. Read
  straight from Redis with the checker's own store, never through a registry under test.
* :func:`mode_watch` - mode switches of every instance onto the timeline: a lockless
  instance's own log (``mode_switches()``, with its reasons and exact times), a baseline's
  polled ``mode``.
* :func:`converge` - after the quiet period, every lockless instance's cached view of
  every pool must equal Redis within ``convergence_s``; any difference left is a violation.
* :func:`loop_watch` - the loop's own lateness, a second view of harness lag.

(Placements onto removed or dead nodes are checked where they happen, in the dispatcher.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from lockless import LocklessError, NodeSnapshot, RedisStore, Registry
from sim.bridge import Bridge
from sim.recorder import Recorder


def _check_capacity(node: NodeSnapshot, rec: Recorder, at: float) -> None:
    if node.current_jobs > node.max_jobs or node.current_jobs < 0:
        rec.violation(
            at, "capacity", f"{node.pool}/{node.node_id}: current_jobs {node.current_jobs} of {node.max_jobs}"
        )


async def capacity_watch(
    store: RedisStore,
    touched: Callable[[], dict[str, set[str]]],
    rec: Recorder,
    bridge: Bridge,
    interval_s: float,
) -> None:
    """Forever: re-read the nodes that admitted jobs since the last look and check their counts.

    Only an admission can push a node over capacity, so only admitted-on nodes are read:
    relisting a 10,000-node pool every second would cost the harness most of a core.
    :func:`capacity_sweep` checks every node once at the end.
    """
    while True:
        await asyncio.sleep(interval_s)
        for pool, ids in touched().items():
            try:
                records = await store.get_nodes(pool, sorted(ids))
            except LocklessError:
                rec.count("checker_errors")  # Redis down: nothing to check against
                continue
            rec.count("capacity_checks", len(ids))
            for node in records.values():
                if isinstance(node, NodeSnapshot):
                    _check_capacity(node, rec, bridge.now())


async def capacity_sweep(store: RedisStore, pools: Sequence[str], rec: Recorder, bridge: Bridge) -> None:
    """Once: every node of every pool, straight from Redis (small batches keep the loop responsive)."""
    for pool in pools:
        try:
            listing = await store.relist(pool, batch=100)
        except LocklessError:
            rec.count("checker_errors")
            continue
        rec.count("capacity_swept", len(listing.nodes))
        for node in listing.nodes:
            _check_capacity(node, rec, bridge.now())


class ModeWatch:
    """Puts every instance's mode switches on the timeline; :meth:`poll` once more at the end."""

    def __init__(self, registries: dict[int, Registry], rec: Recorder, bridge: Bridge) -> None:
        self.registries, self.rec, self.bridge = registries, rec, bridge
        self._seen: dict[int, float] = dict.fromkeys(registries, -1.0)

    def poll(self) -> None:
        for k, reg in self.registries.items():
            # The instance's own log: exact times (same monotonic clock) and reasons.
            for switch in reg.mode_switches():
                if switch.at > self._seen[k]:
                    self.rec.event(
                        switch.at,
                        "mode",
                        f"{switch.from_mode.value}->{switch.to_mode.value}",
                        instance=k,
                        reason=switch.reason,
                    )
                    self._seen[k] = switch.at
                    self.rec.count("mode_switches")

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.poll()


async def loop_watch(rec: Recorder, bridge: Bridge, interval_s: float) -> None:
    """Forever: how late the loop wakes a plain sleep (us)."""
    while True:
        target = bridge.now() + interval_s
        rec.observe("loop_lag", await bridge.sleep_until(target) * 1e6)


def _key(node: NodeSnapshot) -> tuple[int, str, int, int]:
    # Liveness is not part of the record (the alive zset holds it), so it is not compared.
    return (node.version, node.status, node.current_jobs, node.max_jobs)


async def converge(
    registries: dict[int, Registry],
    store: RedisStore,
    pools: Sequence[str],
    rec: Recorder,
    bridge: Bridge,
    timeout_s: float,
) -> None:
    """Wait for every cache to equal Redis; record the time it took, or violations at the deadline."""
    caches = dict(registries)
    began = bridge.now()
    deadline = began + timeout_s
    while True:
        diffs: list[str] = []
        try:
            truth = {pool: {n.node_id: _key(n) for n in (await store.relist(pool)).nodes} for pool in pools}
        except LocklessError as exc:
            truth, diffs = None, [f"redis unreadable: {exc}"]
        if truth is not None:
            for k, reg in caches.items():
                for pool in pools:
                    view = await reg.cached_view(pool)
                    if view is None:  # an architecture without a cache has nothing to converge
                        continue
                    mine = {i: _key(n) for i, n in view.items()}
                    bad = sorted(
                        i for i in truth[pool].keys() | mine.keys() if truth[pool].get(i) != mine.get(i)
                    )
                    if bad:
                        first = bad[0]
                        diffs.append(
                            f"instance {k} pool {pool}: {len(bad)} nodes differ, e.g. {first} "
                            f"cache {mine.get(first)} redis {truth[pool].get(first)}"
                        )
        if not diffs:
            rec.count("converged")
            rec.counters["convergence_ms"] = round((bridge.now() - began) * 1000)
            return
        if bridge.now() >= deadline:
            for diff in diffs:
                rec.violation(bridge.now(), "divergence", diff)
            return
        await asyncio.sleep(0.05)  # poll; the deadline above bounds the wait
