"""Heartbeats in batches: the calls of the ``HEARTBEAT`` script and the results of their beats.

:class:`HeartbeatWriter` turns the heartbeats due together into as few script calls as the
script allows (one per pool and :data:`~lockless.redis.scripts.HEARTBEATS_PER_CALL` beats,
pipelined into one round trip; on a cluster the runner sends each pool's calls to the
primary owning its slot) and hands back one result per beat, in the beats' order.
:class:`~lockless.redis.store.RedisStore` owns one.
"""

from __future__ import annotations

from collections.abc import Sequence

from lockless.core.commands import Heartbeat
from lockless.protocol import HeartbeatResult
from lockless.redis.runner import ScriptRunner
from lockless.redis.scripts import HEARTBEATS_PER_CALL, ScriptArgs

__all__ = ["QUIET_RESULTS_MAX", "HeartbeatWriter"]

#: Quiet results remembered at most (one per node; see :meth:`HeartbeatWriter._results`).
QUIET_RESULTS_MAX = 1_000_000


class HeartbeatWriter:
    """Sends batches of heartbeats through ``scripts`` with arguments from ``args``."""

    def __init__(self, scripts: ScriptRunner, args: ScriptArgs) -> None:
        self._scripts = scripts
        self._args = args
        #: The last quiet result per node, handed out again while it holds.
        self._quiet: dict[str, HeartbeatResult] = {}

    async def send(self, beats: Sequence[Heartbeat]) -> list[HeartbeatResult]:
        """Heartbeats due together, in one round trip: per pool, batches of up to
        ``HEARTBEATS_PER_CALL`` beats per script call (pipelined when more than one).
        Results in ``beats``' order."""
        if not beats:
            return []
        pool = beats[0].pool
        if len(beats) <= HEARTBEATS_PER_CALL and all(b.pool == pool for b in beats):
            # The common case (a node agent's tick): one call, no pipeline, no reordering.
            reply = await self._scripts.call("heartbeat", *self._args.heartbeats(pool, beats))
            return self._results(beats, range(len(beats)), [reply])
        by_pool: dict[str, list[int]] = {}
        for i, beat in enumerate(beats):
            by_pool.setdefault(beat.pool, []).append(i)
        calls, order = [], []
        for pool, indexes in by_pool.items():
            for start in range(0, len(indexes), HEARTBEATS_PER_CALL):
                part = indexes[start : start + HEARTBEATS_PER_CALL]
                calls.append(self._args.heartbeats(pool, [beats[i] for i in part]))
                order.extend(part)
        return self._results(beats, order, await self._scripts.call_many("heartbeat", calls))

    def _results(
        self, beats: Sequence[Heartbeat], order: Sequence[int], replies: Sequence[Sequence[int]]
    ) -> list[HeartbeatResult]:
        """Each beat's result from the script replies: two integers per beat (version, outcome),
        the beats in ``order``. Strict: a reply of the wrong length is a bug, not a result.

        A node's quiet beats answer the same value beat after beat (its version, nothing
        changed), so the last one is kept per node and handed out again: results are
        immutable, and building one costs more than the rest of a beat's client-side work.
        """
        results: list[HeartbeatResult] = [None] * len(beats)  # type: ignore[list-item]
        quiet = self._quiet
        if len(quiet) > QUIET_RESULTS_MAX:
            quiet.clear()  # bounded: nodes that left are forgotten in one sweep
        outcomes = (pair for reply in replies for pair in zip(reply[::2], reply[1::2], strict=True))
        for i, (version, outcome) in zip(order, outcomes, strict=True):
            node_id = beats[i].node_id
            if outcome == 0:
                known = quiet.get(node_id)
                if known is None or known.version != version:
                    known = quiet[node_id] = HeartbeatResult(node_id=node_id, version=version, changed=False)
                results[i] = known
            else:
                results[i] = HeartbeatResult(
                    node_id=node_id, version=version, changed=True, recreated=outcome == 2
                )
        return results
