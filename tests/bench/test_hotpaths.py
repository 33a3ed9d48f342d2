"""pytest-benchmark suite of the library's hot paths, against the session's real redis-server.

Opt in (deselected by the default ``-m 'not benchmark'``)::

    pytest -m benchmark tests/bench/test_hotpaths.py                         # run and print
    pytest -m benchmark tests/bench/test_hotpaths.py \\
        --benchmark-storage=tests/bench/baseline --benchmark-save=baseline    # (re)write the baseline
    pytest -m benchmark tests/bench/test_hotpaths.py \\
        --benchmark-storage=tests/bench/baseline --benchmark-compare \\
        --benchmark-compare-fail=median:100%                                  # compare with it

What is timed, on one 10,000-node pool (setup reused from ``bench_library``):

* group ``l1`` - ``get_node`` on an L1 hit and ``select_nodes(count=1)``. Both are driven
  synchronously (``coroutine.send``) inside the running loop, so the figure is the call
  itself; a call that suspends (it went to Redis) fails the test instead of being timed.
* group ``round-trip`` - a quiet ``heartbeat``, ``job_start`` and a raw redis-py
  ``PING`` with the library's client settings. Each call is one ``Runner.run`` of the
  coroutine, so all three carry the same event-loop overhead: compare them with each
  other (the write/PING ratio), not with numbers from elsewhere.

The baseline under tests/bench/baseline/ is one machine's (named in its JSON); on another
machine the comparison says more about the machine than the code, so re-save it there first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import random
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from lockless.config import RedisConfig, SubscriberConfig
from lockless.core.modes import Mode
from lockless.core.snapshot import NodeSpec
from lockless.redis.store import RedisStore
from lockless.registry import LocklessRegistry
from sim.redis_server import RedisServer
from tests.bench.bench_library import register_all, registry_config, specs, start_registry

T = TypeVar("T")
NODES = 10_000
POOL = "bench"


@dataclass
class Bench:
    """A started registry over one 10k-node pool, a raw client, and the loop they live on."""

    runner: asyncio.Runner
    registry: LocklessRegistry
    raw: Any
    specs: list[NodeSpec]


@pytest.fixture(scope="module")
def bench(redis_server: RedisServer | None) -> Iterator[Bench]:
    url = redis_server.url if redis_server is not None else os.environ["REDIS_URL"]
    ns = f"hot-{uuid.uuid4().hex[:8]}"
    runner = asyncio.Runner()
    nodes = specs(POOL, 0, NODES, random.Random(7))
    # No subscriber PING for an hour: the l1 group blocks the loop for whole benchmark rounds,
    # and a PONG overdue meanwhile would switch the cache to L2_ONLY (reads going to Redis).
    cfg = dataclasses.replace(
        registry_config(url, ns, [POOL]),
        subscriber=SubscriberConfig(ping_interval_s=3600.0, pong_timeout_s=60.0),
    )
    writer = RedisStore(RedisConfig(url=url, namespace=ns))
    raw = RedisStore.make_client(RedisConfig(url=url, namespace=ns))

    async def setup() -> LocklessRegistry:
        await register_all(writer, nodes)
        return await start_registry(cfg, NODES)

    registry = runner.run(setup())
    try:
        yield Bench(runner, registry, raw, nodes)
    finally:

        async def teardown() -> None:
            await registry.close()
            async for key in raw.scan_iter(match=f"{ns}:*", count=1000):
                await raw.unlink(key)
            await writer.close()
            await raw.aclose()

        runner.run(teardown())
        runner.close()


def _drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that must not suspend (an L1 read) to completion, synchronously."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("the call suspended: it waited on Redis instead of reading L1")


def _in_loop(bench: Bench, fn: Callable[[], T]) -> T:
    """Call ``fn`` from inside the running loop (the registry reads the loop's clock)."""

    async def inside() -> T:
        return fn()

    return bench.runner.run(inside())


@pytest.mark.benchmark(group="l1")
def test_get_node_l1_hit(benchmark: Any, bench: Bench) -> None:
    ids = itertools.cycle([s.node_id for s in random.Random(1).sample(bench.specs, 1000)])
    get = bench.registry.get_node
    misses = bench.registry.metrics()["misses"]
    node = _in_loop(bench, lambda: benchmark(lambda: _drive(get(POOL, next(ids)))))
    assert node is not None and node.pool == POOL
    assert bench.registry.metrics()["misses"] == misses and bench.registry.mode is Mode.NORMAL


@pytest.mark.benchmark(group="l1")
def test_select_nodes_10k(benchmark: Any, bench: Bench) -> None:
    select = bench.registry.select_nodes
    _in_loop(bench, lambda: [_drive(select(POOL, 1)) for _ in range(100)])  # builds the index once
    selection = _in_loop(bench, lambda: benchmark(lambda: _drive(select(POOL, 1))))
    assert len(selection.picks) == 1 and len(bench.registry.cached_nodes(POOL)) == NODES


@pytest.mark.benchmark(group="round-trip")
def test_raw_ping(benchmark: Any, bench: Bench) -> None:
    assert benchmark(lambda: bench.runner.run(bench.raw.ping())) is True


@pytest.mark.benchmark(group="round-trip")
def test_heartbeat_quiet(benchmark: Any, bench: Bench) -> None:
    beats = itertools.cycle(bench.specs)
    changed = []

    def beat() -> None:
        s = next(beats)
        result = bench.runner.run(bench.registry.heartbeat(POOL, s.node_id, load=s.load))
        changed.append(result.changed)

    benchmark(beat)
    assert changed and not any(changed), "a heartbeat reporting the same load must be quiet"


@pytest.mark.benchmark(group="round-trip")
def test_job_start(benchmark: Any, bench: Bench) -> None:
    nodes = itertools.cycle(bench.specs)  # 10,000 nodes x 8 slots: room for every call
    serial = itertools.count()
    admitted = []

    def start() -> None:
        s = next(nodes)
        admission = bench.runner.run(bench.registry.job_start(POOL, s.node_id, f"bench-{next(serial)}"))
        admitted.append(admission.admitted)

    benchmark(start)
    assert admitted and all(admitted)
