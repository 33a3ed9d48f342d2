"""Sentinel fixtures: a live primary + replica + three sentinels of the session's server kind.

``sentinel_group`` is module-scoped (starting one takes ~2-3 s): tests that fail it over
must leave it as they found it, one primary and one healthy replica, by calling
``restart_old_primary()`` (the ``restore`` fixture of the tests does). The server is the
session's (``LOCKLESS_SERVER``), as for ``tests/cluster``: CI's server matrix runs these
once on Valkey 9 and once on Redis 6.2.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sim.redis_server import ServerBinary
from sim.sentinel_server import SentinelGroup


@pytest.fixture(scope="module")
def sentinel_group(server_binary: ServerBinary) -> Iterator[SentinelGroup]:
    """A started :class:`SentinelGroup`; leave it with one primary and one replica."""
    with SentinelGroup(server=server_binary) as group:
        yield group
