"""The periodic probe: is Redis alive, did a pool lose its data, were events lost silently?

Every ``probe_interval`` the registry reads each pool's ``seq`` and ``epoch`` (and Redis's log
entry at the last seq L1 applied, to tell a rewritten history by its mark). The pure
``PoolSequencer.probe`` judges each position; this class reports what it finds to the
:class:`~lockless.health.HealthMonitor` and queues the repairs on the applier
(:class:`~lockless.sync.PoolSync`), one mode domain at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING

from lockless.core.l1 import L1Store
from lockless.core.modes import Mode
from lockless.core.sequencer import PoolSequencer, Verdict
from lockless.errors import RedisUnavailable
from lockless.health import Fact, HealthMonitor
from lockless.metrics import Metrics
from lockless.redis.pool_reader import PoolPosition
from lockless.work import Recover, RepairPool, Work

if TYPE_CHECKING:
    from lockless.redis.store import RedisStore


class PoolProbe:
    """One probe of the pools; see the module docstring."""

    def __init__(
        self,
        *,
        pools: Iterable[str],
        store: RedisStore,
        l1: L1Store,
        health: HealthMonitor,
        sequencer: PoolSequencer,
        metrics: Metrics,
        request: Callable[[Work], None],
        queue_empty: Callable[[], bool],
        stream_up: Callable[[str], bool],
    ) -> None:
        self._pools = frozenset(pools)
        self._store = store
        self._l1 = l1
        self._health = health
        self.sequencer = sequencer
        self._metrics = metrics
        self.request = request
        self._queue_empty = queue_empty
        self._stream_up = stream_up

    async def run(self, pools: Collection[str] | None = None) -> None:
        """Probe ``pools`` (None: all) and report or queue what the answers call for."""
        probed = sorted(self._pools if pools is None else set(pools) & self._pools)
        high_waters = {pool: self._l1.high_water(pool) for pool in probed}
        # With each position, Redis's log entry at our last seq: is it the write we applied?
        states = await self._store.positions_each({p: self.sequencer.last_seq(p) for p in probed})
        for domain in self._health.domains_of(probed):
            mine = [p for p in probed if p in domain.pools]
            failed = next((s for p in mine if isinstance(s := states[p], RedisUnavailable)), None)
            if failed is not None:
                self._health.report(Fact.REDIS_FAILED, f"probe: {failed}", domain.pools)
                continue
            self._health.report(Fact.REDIS_ANSWERED, pools=domain.pools)
            if domain.mode is not Mode.NORMAL:
                healthy = all(self._stream_up(p) for p in domain.pools) and self._queue_empty()
                if domain.mode is Mode.L2_ONLY and healthy:
                    self.request(Recover("probe found the stream healthy", domain.pools))
                continue
            for pool in mine:
                position = states[pool]
                assert isinstance(position, PoolPosition)
                if self.sequencer.diverged(pool, position.seq, position.mark, position.at):
                    self._metrics.inc("history_diverged")
                verdict = self.sequencer.probe(
                    pool, position.seq, position.epoch, high_waters[pool], position.mark, position.at
                )
                if verdict is Verdict.LOST_DATA:
                    lost = frozenset({pool})
                    self._health.report(
                        Fact.DATA_LOST, f"pool {pool} lost its data (epoch, seq or history went back)", lost
                    )
                    self.request(Recover(f"pool {pool} relisted after a loss of data", lost))
                elif verdict is Verdict.STALLED:
                    self._metrics.inc("gaps")
                    self.request(RepairPool(pool, f"{pool} behind Redis at two probes in a row"))
