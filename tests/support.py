"""Helpers shared by async tests: build registries on a test's namespace, wait on conditions."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

from lockless import LocklessRegistry, Mode, NodeSpec
from lockless.config import (
    CacheConfig,
    NodeLifecycleConfig,
    RedisConfig,
    RegistryConfig,
    SubscriberConfig,
)
from lockless.core.modes import ModeThresholds
from lockless.redis.store import RedisStore

#: Faults are noticed through the socket timeout (a paused server still accepts connections:
#: the kernel completes the handshake) and refused connects (a stopped one). The connect
#: timeout only has to outlast a stall of the shared 2-core CI machine: at 0.25 s, one such
#: stall made ``start()``'s first PING to a healthy server time out (CI run of 2026-12-01).
CONNECT_TIMEOUT_S = 1.0


async def eventually(condition: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``condition`` on the running loop until truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)  # yields to the tasks under test; the deadline bounds the wait


def fast_config(url: str, ns: str, pools: tuple[str, ...] = ("p",), **cache: object) -> RegistryConfig:
    """A registry config with short timeouts, so fault tests detect faults in well under a second."""
    return RegistryConfig(
        pools=pools,
        redis=RedisConfig(
            url=url,
            namespace=ns,
            socket_timeout_s=0.25,
            connect_timeout_s=CONNECT_TIMEOUT_S,
            pool_timeout_s=0.25,
        ),
        nodes=NodeLifecycleConfig(dead_after_s=30.0, ttl_s=120.0),
        cache=CacheConfig(**cache),  # type: ignore[arg-type]
        subscriber=SubscriberConfig(
            ping_interval_s=0.1, pong_timeout_s=0.25, reconnect_base_s=0.02, reconnect_max_s=0.2
        ),
        modes=ModeThresholds(
            failures_to_local=2, probes_to_recover=2, probe_interval_s=0.05, probe_backoff_max_s=0.2
        ),
    )


def store_for(config: RegistryConfig) -> RedisStore:
    """A bare store on the same namespace: Redis truth, or a writer that is not a cache instance."""
    return RedisStore(config.redis, config.nodes)


async def redis_view(store: RedisStore, pool: str) -> dict[str, tuple[int, int, str]]:
    """Redis truth of a pool as node id -> (version, current_jobs, status)."""
    listing = await store.relist(pool)
    return {n.node_id: (n.version, n.current_jobs, n.status) for n in listing.nodes}


def cache_view(registry, pool: str) -> dict[str, tuple[int, int, str]]:
    return {i: (n.version, n.current_jobs, n.status) for i, n in registry.cached_nodes(pool).items()}


async def eventually_async(
    check: Callable[[], Awaitable[object]], timeout: float = 5.0, what: str = "condition"
) -> None:
    """Like :func:`eventually` for a check that must itself await (e.g. a registry read)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


def version_in(registry, pool: str, node_id: str) -> int:
    """The version of the node in the registry's L1 (0 if it holds none)."""
    node = registry.cached(pool, node_id)
    return node.version if node is not None else 0


class StallMeter:
    """Measures the stretches in which this process could not run Python at all.

    A thread ticks every ``tick_s``; a tick that comes back much later than asked means the
    process was descheduled (a busy shared machine), or something held the GIL (a garbage
    collection of Hypothesis's data). Time bounds on the code under test subtract these
    stalls, which are no fault of the code, and stay strict about everything else: the
    library's own Python gives the GIL up every switch interval, so it does not count here.
    """

    def __init__(self, *, tick_s: float = 0.002, late_s: float = 0.01) -> None:
        self._tick_s = tick_s
        self._late_s = late_s
        self._stalls: list[tuple[float, float]] = []
        self._seen_until = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-meter", daemon=True)

    def __enter__(self) -> StallMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            before = time.monotonic()
            time.sleep(self._tick_s)
            after = time.monotonic()
            with self._lock:
                if after - before - self._tick_s > self._late_s:
                    self._stalls.append((before + self._tick_s, after))
                self._seen_until = after

    def stalled(self, start: float, end: float, *, timeout: float = 1.0) -> float:
        """Seconds of ``[start, end]`` (``time.monotonic``) spent in stalls.

        Blocks (at most ``timeout``) until the meter has ticked past ``end``, so that a stall
        still being measured is counted; meant for the slow path of a bound check.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                seen, stalls = self._seen_until, list(self._stalls)
            if seen >= end or time.monotonic() >= deadline or not self._thread.is_alive():
                break
            time.sleep(self._tick_s)  # the meter thread needs the GIL to record its tick
        return sum(max(0.0, min(end, b) - max(start, a)) for a, b in stalls)


async def two_instances_see_each_other(
    config: RegistryConfig,
    *,
    store: Callable[[], RedisStore] | None = None,
    start_timeout: float = 30.0,
) -> None:
    """Two instances on ``config``: a registration and an admission, each seen by the other through events.

    Both start (connection check, scripts, subscription, relist of an empty pool) before
    ``a`` registers ``n1``: ``b`` can learn of it only from the event stream, or from a
    repair, which the propagation count tells apart. ``b`` places a job on ``n1``; ``a``
    must see the admission through its own subscriber. ``store`` (a factory) replaces each
    instance's store, e.g. with one whose connections are broken on purpose.
    """
    a = LocklessRegistry(config, instance="a", store=store() if store else None)
    b = LocklessRegistry(config, instance="b", store=store() if store else None)
    try:
        await a.start(timeout=start_timeout)
        await b.start(timeout=start_timeout)
        await a.register_node(NodeSpec(node_id="n1", pool="p", max_jobs=2))
        await eventually(lambda: b.cached("p", "n1") is not None, 5.0, "b to see n1 through its subscriber")
        placement = await b.place_job("p", "job-1")
        assert placement.node_id == "n1", placement.reason
        await eventually(
            lambda: (n := a.cached("p", "n1")) is not None and n.current_jobs == 1,
            5.0,
            "a to see the admission through its subscriber",
        )
        for instance in (a, b):
            metrics = instance.metrics()
            # propagation_us is recorded only for events applied live, as they arrive on the
            # subscription (never by a catch-up or a relist): proof the stream carried them.
            assert metrics.histograms["propagation_us"].count >= 1, instance.instance
            assert metrics["gaps"] == 0 and metrics["reconnects"] == 0, metrics.counters
            assert instance.mode is Mode.NORMAL
    finally:
        await a.close()
        await b.close()
