"""One example's world: the instances on the machine's server, the model, and the loop they run on.

:class:`World` owns what every step, check and fault works on: a fresh namespace on the
machine's own redis-server, the 2-3 ``LocklessRegistry`` instances under test, the
:class:`~tests.stateful.model.RegistryModel` they are held to, two readers of Redis that
are not the instances (``truth`` for the checks and the faults, ``mute`` for writes whose
events nobody hears), and the ``asyncio.Runner`` that everything runs on.

Rules cannot be coroutines (HypothesisWorks/hypothesis#4107), so the world's runner runs
each rule's coroutine with :meth:`World.run`. Between rules the loop does not run: the
instances' background tasks (subscriber, applier, health probe) advance only while a
rule or an invariant is running, which is also when the test looks at them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from lockless.config import NodeLifecycleConfig, RedisConfig
from lockless.core.modes import Mode
from lockless.redis.keys import KeySpace
from lockless.redis.store import RedisStore
from lockless.registry import LocklessRegistry
from sim.redis_server import RedisServer
from tests.stateful.model import RegistryModel
from tests.stateful.ops import CONVERGE_S, LOAD_TOLERANCE, POOLS, TALLY, instance_config


class MuteKeys(KeySpace):
    """Key names whose event channels nobody subscribes to."""

    def events(self, pool: str) -> str:
        return f"{super().events(pool)}:nobody"


def mute_store(redis: RedisConfig, nodes: NodeLifecycleConfig) -> RedisStore:
    """Writes that reach Redis and its pool log, but PUBLISH on a channel nobody listens to."""
    return RedisStore(redis, nodes, keys=MuteKeys(redis.namespace))


async def until(condition: Callable[[], object], timeout: float, what: Callable[[], str]) -> None:
    """Poll ``condition`` until it holds; after ``timeout`` s fail, saying ``what()`` was awaited."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what()}")
        await asyncio.sleep(0.005)  # lets the instances' tasks run; the deadline bounds the wait


def await_chain(coro: Any) -> str:
    """Where a coroutine is suspended, outermost first (for diagnosing a hang)."""
    where = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            where.append(
                f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_code.co_name}:{frame.f_lineno}"
            )
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return " -> ".join(where)


async def close_registry(registry: LocklessRegistry) -> None:
    """``registry.close()``, working around a hang (see ``test_close.py``).

    On Python 3.11, ``asyncio.wait_for`` (used by redis-py to send a command) swallows a
    cancellation that arrives as the command is sent; ``close()`` cancels its health task
    once and then awaits it forever. Cancelling again until it returns keeps the
    state machine about consistency; the hang itself is pinned by ``test_close.py``.
    """
    closing = asyncio.ensure_future(registry.close())
    while True:
        done, _ = await asyncio.wait({closing}, timeout=1.0)
        if done:
            closing.result()
            return
        TALLY["bug:close_recancelled"] += 1
        for task in registry._tasks:
            task.cancel()


class World:
    """The instances of one example, on a fresh namespace of ``server``, and the model they answer to."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        #: Where the instances connect (a cluster's world: a redis+cluster:// URL).
        self.url = server.url
        self.runner = asyncio.Runner()
        self.ns = f"sm-{uuid.uuid4().hex[:10]}"
        self.model = RegistryModel(POOLS, LOAD_TOLERANCE)
        base = instance_config(server.url, self.ns, 0)
        # Truth reads retry a little more: they must survive the faults the rules inject.
        truth_redis = RedisConfig(url=server.url, namespace=self.ns, socket_timeout_s=2.0, retries=3)
        self.truth = RedisStore(truth_redis, base.nodes)
        self.mute = mute_store(base.redis, base.nodes)
        #: A client for the rules' own raw commands (a cluster's world: a cluster client).
        self.admin: Any = self.truth.client
        self.instances: list[LocklessRegistry] = []
        #: (instance, pool) -> (epoch the instance knew, node -> highest version it has shown).
        self.seen: dict[tuple[int, str], tuple[str | None, dict[str, int]]] = {}
        #: Number of times Redis lost its data in this example.
        self.generation = 0

    def run(self, coro: Awaitable[Any]) -> Any:
        """Run ``coro`` on the world's loop (the instances' tasks run meanwhile) and return its result."""
        return self.runner.run(coro)  # type: ignore[arg-type]

    def inst(self, i: int) -> LocklessRegistry:
        """Instance ``i`` (modulo how many this example started)."""
        return self.instances[i % len(self.instances)]

    async def start_instances(self, count: int) -> None:
        """Start ``count`` instances, ``i0``, ``i1``, ..., each with its own selection seed."""
        for i in range(count):
            cfg = instance_config(self.url, self.ns, seed=i)
            registry = LocklessRegistry(cfg, instance=f"i{i}")
            await registry.start()
            self.instances.append(registry)

    async def ready(self, registry: LocklessRegistry) -> None:
        """A write through ``registry`` must reach Redis now, not a journal: wait out LOCAL_ONLY."""
        if registry.mode is Mode.LOCAL_ONLY or registry.state().journal_depth:
            await until(
                lambda: registry.mode is not Mode.LOCAL_ONLY and not registry.state().journal_depth,
                CONVERGE_S,
                lambda: (
                    f"{registry.instance} to leave LOCAL_ONLY ({registry.mode}, "
                    f"journal {registry.state().journal_depth})"
                ),
            )

    def data_lost(self) -> None:
        """Redis restarted empty: seqs restart, so versions seen under an unknown epoch mean nothing."""
        self.model.lose_data()
        self.generation += 1
        for key, (epoch, _) in list(self.seen.items()):
            if epoch is None:
                del self.seen[key]

    def revive(self) -> None:
        """Whatever a failed step left broken is running again, so that closing can talk to it."""
        self.server.resume()
        if not self.server.running:
            self.server.start()

    def close(self) -> None:
        """Bring the server back if a fault left it down, tally the instances' metrics, close everything."""
        try:
            self.revive()

            async def close() -> None:
                for r in self.instances:
                    m = r.metrics()
                    for key in ("relists", "gaps", "catchups", "epoch_changes", "events_malformed"):
                        TALLY[f"metric:{key}"] += m[key]
                    for key in ("reconnects", "journal_replays", "version_checks", "stale_reads"):
                        TALLY[f"metric:{key}"] += m[key]
                    for (a, b), n in m.mode_switches.items():
                        TALLY[f"switch:{a}->{b}"] += n
                    await close_registry(r)
                await self.truth.close()
                await self.mute.close()

            self.run(close())
        finally:
            self.runner.close()
