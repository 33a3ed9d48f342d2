"""Fault actions on the real server and on the link, with their start and end on the timeline.

Server faults (stop, restart_empty, pause, kill_pubsub) act on the :class:`RedisServer`
the harness started; link faults (latency, blackhole, cut, refuse) on the
:class:`FaultProxy` that registries connect through; cluster faults (kill_primary,
pause_primary, failover, move_slot) on the :class:`~sim.cluster_target.ClusterTarget`,
which also records what each cost (``sim/cluster_target.py``), and Sentinel faults
(sentinel_kill_primary, sentinel_pause_primary) on the
:class:`~sim.sentinel_target.SentinelTarget` likewise. The blocking calls (a stop waits
for the process to exit, a restart for the new one to answer PING) run in
``asyncio.to_thread`` so the loop, and with it every measured operation, keeps going.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from lockless import ConfigError
from sim.cluster_target import ClusterTarget
from sim.config import FaultSpec
from sim.model.plan import Kind, Op
from sim.proxy import FaultProxy
from sim.recorder import Recorder
from sim.redis_server import RedisServer
from sim.sentinel_target import SentinelTarget


class FaultInjector:
    """Turns FAULT_START / FAULT_END plan entries into actions (see the module docstring)."""

    def __init__(
        self,
        faults: Sequence[FaultSpec],
        *,
        server: RedisServer | ClusterTarget | SentinelTarget | None,
        proxy: FaultProxy | None,
        recorders: Sequence[Recorder],
        clock,  # () -> loop time; the bridge's, so faults share the operations' timeline
    ) -> None:
        self.faults = tuple(faults)
        self.server = server
        self.proxy = proxy
        self.recorders = list(recorders)
        self.clock = clock
        for fault in self.faults:
            if fault.needs_proxy and proxy is None:
                raise ConfigError(
                    "faults.kind", fault.kind, "server faults only: this run has no fault proxy"
                )
            if not fault.needs_proxy and server is None:
                raise ConfigError(
                    "faults.kind",
                    fault.kind,
                    "link faults only (latency | blackhole | cut | refuse): --redis-url names a server "
                    "the harness does not own, so it will not stop, pause or restart it",
                )

    async def __call__(self, op: Op, intended: float) -> None:
        fault = self.faults[op.idx]
        starting = op.kind is Kind.FAULT_START
        if isinstance(self.server, ClusterTarget | SentinelTarget):
            await self.server.apply(fault, starting, op.idx, self.recorders, self.clock)
            return
        began = self.clock()
        await asyncio.to_thread(self._act, fault, starting)
        finished = self.clock()
        what = "fault_start" if starting else "fault_end"
        detail = fault.kind + (f" {fault.delay_ms:g} ms" if fault.kind == "latency" else "")
        for rec in self.recorders:
            rec.event(began, what, detail, took_s=round(finished - began, 4))

    def _act(self, fault: FaultSpec, starting: bool) -> None:
        server, proxy, kind = self.server, self.proxy, fault.kind
        if kind == "stop":
            server.stop() if starting else server.start()
        elif kind == "restart_empty":
            server.restart(keep_data=False)
        elif kind == "pause":
            server.pause() if starting else server.resume()
        elif kind == "kill_pubsub":
            server.kill_clients("pubsub")
        elif kind == "latency":
            proxy.set_delay(fault.delay_ms / 1000.0 if starting else 0.0)
        elif kind == "blackhole":
            proxy.blackhole(starting)
        elif kind == "cut":
            proxy.cut()
        elif kind == "refuse":
            proxy.refuse(starting)
