"""Fixtures for the cluster controller's tests: real 3+3 clusters of the session's server kind.

``cluster`` is shared by a module: its tests may fail over, restart a replica or move a
slot, since each of those leaves a settled cluster of 3 primaries with one replica each;
tests therefore ask the controller who owns what instead of assuming the first layout.
``fresh_cluster`` is a new cluster per test, for faults that leave the cluster short of a
node or its data (a killed or paused primary, a primary restarted empty).

Every test under ``tests/cluster`` is marked ``cluster`` (``-m cluster`` selects them,
``-m "not cluster"`` leaves them out); they run by default, and against an external
``REDIS_URL`` too, since they only touch clusters they started.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.cluster_server import LocalCluster
from sim.redis_server import ServerBinary

# A short node timeout keeps failovers at ~2 s; 1 s still leaves a loaded 2-core machine
# room before a busy node is suspected by mistake.
NODE_TIMEOUT_MS = 1000


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="module")
def cluster(server_binary: ServerBinary) -> Iterator[LocalCluster]:
    """A settled cluster shared by the module; leave it settled (3 primaries, 3 replicas)."""
    with LocalCluster(server=server_binary, node_timeout_ms=NODE_TIMEOUT_MS) as shared:
        yield shared


@pytest.fixture
def fresh_cluster(server_binary: ServerBinary) -> Iterator[LocalCluster]:
    """A cluster for this test alone, free to lose nodes and data."""
    with LocalCluster(server=server_binary, node_timeout_ms=NODE_TIMEOUT_MS) as own:
        yield own
