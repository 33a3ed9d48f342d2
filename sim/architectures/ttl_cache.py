"""``ttl-cache``: the first cache everyone writes. Relist the pool every ``refresh_s``; no events.

Each instance keeps every pool it serves in memory, read whole from Redis at start and
then again ``refresh_s`` after the previous relist ended (the same lean read as the other
baselines, :func:`read_pool`, but every node built, since reads are served from it).
Reads (``get_node``, ``select_nodes``) never wait on Redis; writes go through the
library's scripts like every architecture's.

Built as a competent team would, not as a straw man:

* **Assumed admissions.** ``job_start`` and ``job_finish`` replies carry the node's new
  version and job count; the instance puts them into its view at once (what
  kube-scheduler calls "assume"), so one instance does not keep picking a node it has
  just filled. A relist never rolls a node back to an older version than the view holds.
* **Own removals.** A node this instance removed, or that Redis reported unknown at
  admission, leaves the view at once instead of at the next relist.

What it cannot know is what *other* writers did since its last relist: another
instance's admissions (the conflicts the contention experiment counts), nodes that
joined or died. Its data age at a decision (``last_sync_age``) is the age of the oldest
pool's last completed relist; a failed relist keeps serving the last view (reported
``LOCAL_ONLY`` until Redis answers again).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping

from sortedcontainers import SortedList

from lockless import (
    Admission,
    NodeSnapshot,
    RedisUnavailable,
    RegistryConfig,
    Requirements,
    Selection,
    is_placeable,
    placement_key,
    select,
)
from sim.architectures.base import RedisBackedRegistry
from sim.architectures.options import BaselineOptions
from sim.architectures.pool_read import read_pool


class _View:
    """One pool as this instance last saw it: a ``PoolView`` that admissions update in place."""

    __slots__ = ("draining", "nodes", "placeable")

    def __init__(self, nodes: dict[str, NodeSnapshot]) -> None:
        self.nodes = nodes
        self.placeable = SortedList(placement_key(n) for n in nodes.values() if is_placeable(n))
        self.draining = sum(1 for n in nodes.values() if n.status == "draining")

    def put(self, node: NodeSnapshot) -> None:
        self.drop(node.node_id)
        self.nodes[node.node_id] = node
        if is_placeable(node):
            self.placeable.add(placement_key(node))
        elif node.status == "draining":
            self.draining += 1

    def drop(self, node_id: str) -> None:
        old = self.nodes.pop(node_id, None)
        if old is None:
            return
        if is_placeable(old):
            self.placeable.discard(placement_key(old))
        elif old.status == "draining":
            self.draining -= 1


class TtlCacheRegistry(RedisBackedRegistry):
    """See the module docstring."""

    name = "ttl-cache"

    def __init__(
        self, config: RegistryConfig, *, instance: str | None = None, options: BaselineOptions | None = None
    ) -> None:
        super().__init__(config, instance=instance, options=options)
        self._views: dict[str, _View] = {}
        self._synced_at: dict[str, float] = {}
        for name in ("relist_us", "select_us"):
            self._timer(name)

    async def start(self) -> None:
        await super().start()
        for pool in self.config.pools:
            await self._relist(pool)
        self._spawn(self._refresh_loop(), "refresh")

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.refresh_s)
            for pool in self.config.pools:
                with contextlib.suppress(RedisUnavailable):  # keep serving the last view
                    await self._relist(pool)

    async def _relist(self, pool: str) -> None:
        began = time.monotonic()
        read = await self._redis(read_pool(self.store, pool, batch=self.options.read_batch, full=True))
        fresh = {n.node_id: n for n in read.nodes}
        old = self._views.get(pool)
        if old is not None:
            # An admission assumed while the read was in flight is newer than what was read.
            for node_id, mine in old.nodes.items():
                listed = fresh.get(node_id)
                if listed is not None and mine.version > listed.version:
                    fresh[node_id] = mine
        self._views[pool] = _View(fresh)
        # The data is as old as the moment the read began, not the moment it ended.
        self._synced_at[pool] = began
        self._observe("relist_us", time.monotonic() - began)

    # ---------------------------------------------------------------- status
    def last_sync_age(self) -> float:
        """Age (s) of the oldest pool's last completed relist, from when that relist began."""
        if not self._synced_at:
            return 0.0
        return time.monotonic() - min(self._synced_at.values())

    async def cached_view(self, pool: str) -> Mapping[str, NodeSnapshot] | None:
        self._check_pool(pool)
        view = self._views.get(pool)
        return dict(view.nodes) if view is not None else {}

    # ----------------------------------------------------------------- reads
    def _view(self, pool: str) -> _View:
        self._check_pool(pool)
        view = self._views.get(pool)
        if view is None:  # not started, or the first relist failed: nothing known yet
            view = self._views[pool] = _View({})
        return view

    async def get_node(self, pool: str, node_id: str) -> NodeSnapshot | None:
        return self._view(pool).nodes.get(node_id)

    async def select_nodes(
        self,
        pool: str,
        count: int = 1,
        requirements: Requirements | None = None,
        *,
        policy: str | None = None,
    ) -> Selection:
        view = self._view(pool)
        t = time.perf_counter()
        picked = select(
            view,
            pool=pool,
            count=count,
            requirements=requirements,
            policy=policy or self.config.cache.policy,
            rng=self._rng,
        )
        self._observe("select_us", time.perf_counter() - t)
        return picked

    # ---------------------------------------------------------------- writes
    async def job_start(self, pool: str, node_id: str, job_id: str) -> Admission:
        admission = await super().job_start(pool, node_id, job_id)
        view = self._view(pool)
        node = view.nodes.get(node_id)
        if admission.version == 0:
            view.drop(node_id)  # Redis does not know it: gone
        elif node is not None and admission.version >= node.version:
            # Admitted or refused, the reply is the node's count at that version: assume it.
            view.put(node.with_jobs(admission.current_jobs, admission.version))
        return admission

    async def job_finish(self, pool: str, node_id: str, job_id: str) -> bool:
        self._check_pool(pool)
        released, version, current = await self._redis(self.store.job_finish(pool, node_id, job_id))
        view = self._view(pool)
        node = view.nodes.get(node_id)
        if node is not None and released and version > node.version:
            view.put(node.with_jobs(current, version))
        return released

    async def remove_node(self, pool: str, node_id: str) -> bool:
        removed = await super().remove_node(pool, node_id)
        self._view(pool).drop(node_id)
        return removed
