"""Shared fixtures: a real redis-server for the whole session, and disposable ones for fault tests.

Tests never fake Redis (STYLE §2.11): the session starts a server itself through
``sim.redis_server`` unless ``REDIS_URL`` names an external server. Tests share that
server safely because each gets its own key namespace (``ns``).

Which server: ``LOCKLESS_SERVER`` (``auto``, the default: a redis-server on ``PATH``, else
``valkey``; or ``valkey``, ``redis``, ``path``; see ``sim.redis_server``) picks the binary
for every server the suite starts, the session's, ``fault_server``, the smoke run's and
the clusters of ``tests/cluster``, so
``LOCKLESS_SERVER=redis pytest`` runs the whole suite against Redis 6.2 and
``LOCKLESS_SERVER=valkey pytest`` against Valkey 9. The header of the run names it.

Tests that stop, pause, restart or flush a server use ``fault_server``: a fresh server
per test, so the damage never reaches other tests. Against an external ``REDIS_URL``
those tests are skipped, since we may not break a server we do not own; every test
that uses ``fault_server`` (directly or through ``proxy``) is marked ``faults``.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from lockless import ConfigError
from sim.proxy import FaultProxy
from sim.redis_server import SERVER_ENV, RedisServer, RedisServerError, ServerBinary, find_server

_EXTERNAL_URL = os.environ.get("REDIS_URL")

# No per-example deadline: how long an example takes depends on what else the shared 2-core
# machine (and coverage tracing) is doing, and speed is measured in benchmarks, never
# asserted by a unit test. Hypothesis still reports a slow example; it no longer fails it.
settings.register_profile("lockless", parent=settings(), deadline=None)  # on top of "ci" when CI is set
settings.load_profile("lockless")


def pytest_configure(config: pytest.Config) -> None:
    # A bad LOCKLESS_SERVER or a missing binary stops the run before any test, as a usage error.
    try:
        find_server()
    except (ConfigError, RedisServerError) as exc:
        raise pytest.UsageError(str(exc)) from exc


def pytest_report_header(config: pytest.Config) -> str:
    found = find_server()
    external = f"; REDIS_URL={_EXTERNAL_URL} for the shared server" if _EXTERNAL_URL else ""
    return f"server: {found} ({SERVER_ENV}={os.environ.get(SERVER_ENV) or 'unset'}: {found.path}){external}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Mark by fixture use, so `-m "not faults"` selects exactly the tests that leave servers alone.
    for item in items:
        if "fault_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.faults)


@pytest.fixture(scope="session")
def server_binary() -> ServerBinary:
    """The server binary every server of this session runs (``LOCKLESS_SERVER``)."""
    return find_server()


@pytest.fixture(scope="session")
def redis_server(server_binary: ServerBinary) -> Iterator[RedisServer | None]:
    """The session's own RedisServer, or ``None`` when ``REDIS_URL`` points at an external server."""
    if _EXTERNAL_URL:
        yield None
        return
    server = RedisServer(server=server_binary)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer | None) -> str:
    """URL of the shared server (``REDIS_URL`` if set). Do not stop, pause or flush it."""
    if redis_server is None:
        assert _EXTERNAL_URL is not None
        return _EXTERNAL_URL
    return redis_server.url


@pytest.fixture
def ns() -> str:
    """A key namespace no other test uses, e.g. ``t-1a2b3c4d``."""
    return f"t-{uuid.uuid4().hex[:8]}"


def _wait_until(condition: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)  # poll interval; the deadline, not this sleep, bounds the wait


@pytest.fixture
def wait_until() -> Callable[..., None]:
    """``wait_until(condition, timeout=5.0, what="...")``: poll until truthy, else fail the test."""
    return _wait_until


@pytest.fixture
def fault_server(server_binary: ServerBinary) -> Iterator[RedisServer]:
    """A fresh RedisServer for this test alone, free to kill, pause or restart; removed afterwards."""
    if _EXTERNAL_URL:
        pytest.skip("needs a server this suite started; REDIS_URL points at an external one")
    server = RedisServer(server=server_binary)
    server.start()
    try:
        yield server
    finally:
        server.resume()  # a SIGSTOPped server would ignore the shutdown
        server.cleanup()


@pytest.fixture
def proxy(fault_server: RedisServer) -> Iterator[FaultProxy]:
    """A FaultProxy in front of ``fault_server``; clients use ``proxy.url``."""
    with FaultProxy(fault_server.host, fault_server.port) as fault_proxy:
        yield fault_proxy


@pytest.fixture(scope="session")
def smoke_result(tmp_path_factory: pytest.TempPathFactory, server_binary: ServerBinary) -> Path:
    """One result folder of ``experiments/smoke.toml`` shortened to 5 s per architecture.

    Shared by the budget and notebook tests (about 30 s to produce, once per session). It
    runs on a server of its own: the smoke plan kills pub/sub connections, which would
    disturb other tests on the session server. Returns the results root; the run is at
    ``<root>/smoke/<run-id>/``.
    """
    import asyncio
    import dataclasses

    from sim.config import load_toml
    from sim.report import write_run
    from sim.runner import run_async

    config = load_toml(Path(__file__).parent.parent / "experiments" / "smoke.toml")
    # 5 s keeps the pub/sub kill (at 4 s) and the warm-up, and the run CI-fast.
    config = dataclasses.replace(config, experiment=dataclasses.replace(config.experiment, duration_s=5.0))
    root = tmp_path_factory.mktemp("smoke-results")
    server = RedisServer(server=server_binary)
    server.start()
    try:
        outcome = asyncio.run(run_async(config, server=server))
    finally:
        server.cleanup()
    write_run(outcome, root)
    return root
