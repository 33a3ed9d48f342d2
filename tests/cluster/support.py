"""Clients for the cluster tests: redis-py's cluster client, and a plain connection to one node."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import MovedError, ResponseError
from redis.retry import Retry

from sim.cluster_server import LocalCluster, LocalNode


def cluster_client(cluster: LocalCluster) -> RedisCluster:
    """redis-py's cluster client seeded with every node (follows MOVED/ASK and failovers)."""
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster.startup_nodes],
        socket_timeout=5.0,
        socket_connect_timeout=5.0,
    )


def node_client(node: LocalNode, timeout: float = 5.0) -> redis.Redis:
    """A plain connection to one node, no retries: answers (or MOVED) come from that node alone."""
    return redis.Redis(
        host=node.host,
        port=node.port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        single_connection_client=True,
    )


def cluster_url(cluster: LocalCluster, seeds: int = 2) -> str:
    """The library's URL of ``cluster``: ``redis+cluster://`` with its first ``seeds`` nodes as seeds."""
    return "redis+cluster://" + ",".join(f"{host}:{port}" for host, port in cluster.startup_nodes[:seeds])


def pools_on_distinct_shards(cluster: LocalCluster, count: int = 3, prefix: str = "p") -> list[str]:
    """Pool names whose slots are owned by ``count`` different primaries now (first found)."""
    chosen: dict[str, str] = {}
    for i in range(1000):
        name = f"{prefix}{i}"
        owner = cluster.primary_for_key("{" + name + "}").node_id
        if owner not in chosen.values():
            chosen[name] = owner
        if len(chosen) == count:
            return sorted(chosen)
    raise AssertionError(f"no {count} pools on distinct shards among 1000 names")


@contextlib.contextmanager
def raises_moved() -> Iterator[None]:
    """Expect the server's MOVED redirect on a plain connection, whatever redis-py calls it.

    redis-py 6.0 and later raise ``MovedError`` for it; 5.x (the library's lowest supported
    redis-py, tested in CI's lowest-versions step) raises a plain ``ResponseError`` reading
    ``MOVED <slot> <host:port>``. What these tests pin is the server's answer.
    """
    with pytest.raises(ResponseError) as caught:
        yield
    assert isinstance(caught.value, MovedError) or str(caught.value).startswith("MOVED "), caught.value
