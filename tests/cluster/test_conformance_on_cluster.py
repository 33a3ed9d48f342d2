"""The conformance suite (``tests/conformance``) again, the library on a real cluster.

The tests are the same functions; only the ``registry`` fixture differs: its Redis is a
local 3+3 cluster (``redis+cluster://``), with the suite's pools ``p`` and ``q`` on
different shards, so a behaviour that only holds on one server shows here. (The library
only: the baselines read whole pools through a client of one server.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from lockless.protocol import Registry
from sim.architectures import build
from sim.cluster_server import LocalCluster
from tests.cluster.support import cluster_url
from tests.conformance.test_registry_conformance import *  # noqa: F403 (the suite's tests, collected here)
from tests.support import fast_config


@pytest.fixture(scope="module")
def shards_apart(cluster: LocalCluster) -> LocalCluster:
    """The module's cluster with ``{p}`` and ``{q}`` on different primaries."""
    p, q = cluster.primary_for_key("{p}"), cluster.primary_for_key("{q}")
    if p is q:
        cluster.move_key_slot("{q}", next(n for n in cluster.primaries() if n is not p))
    return cluster


@pytest.fixture(params=["lockless"])
async def registry(
    request: pytest.FixtureRequest, shards_apart: LocalCluster, ns: str
) -> AsyncIterator[Registry]:
    config = fast_config(cluster_url(shards_apart), ns, pools=("p", "q"))
    reg = build(request.param, config, instance=f"{request.param}-0")
    await reg.start()
    yield reg
    await reg.close()
