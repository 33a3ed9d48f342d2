"""One node of a local cluster: its process, and the admin connection that speaks to it alone.

A :class:`LocalNode` wraps a :class:`~sim.redis_server.RedisServer` started with cluster
mode on; :mod:`sim.cluster_server` composes six of them into a cluster. Every command
goes to this node only, without retries or redirections, so a failure names the node and
the step it was for (:class:`ClusterError`).
"""

from __future__ import annotations

import contextlib
import random
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from sim.cluster_view import NodeReport, NodeView, parse_cluster_nodes
from sim.redis_server import _NO_SETINFO, RedisServer, RedisServerError, ServerBinary

__all__ = ["ClusterError", "LocalNode", "spawn_node"]

HOST = "127.0.0.1"
_BUS_OFFSET = 10000  # the cluster bus listens on port + 10000 (fixed in Redis 6.2)
# Client ports 10000-22767 put bus ports at 20000-32767: both below the ephemeral range
# (32768+), where the kernel hands out the ports of outgoing connections.
_PORT_RANGE = (10000, 22767)


class ClusterError(RedisServerError):
    """The cluster could not be formed, or a fault or query on it failed; names the node and the step."""


class LocalNode:
    """One node process of a ``LocalCluster``; the same port, workdir and node id across restarts."""

    def __init__(self, index: int, server: RedisServer) -> None:
        self.index = index
        self.server = server
        self._node_id = ""

    @property
    def node_id(self) -> str:
        """The 40-hex cluster node id (kept in the workdir's ``nodes.conf``)."""
        if not self._node_id:
            raise ClusterError(f"{self.name}: node id unknown before the cluster is started")
        return self._node_id

    @property
    def name(self) -> str:
        """``node-<index> (127.0.0.1:<port>)``, as errors and logs name it."""
        return f"node-{self.index} ({self.address})"

    @property
    def host(self) -> str:
        """``127.0.0.1``."""
        return HOST

    @property
    def port(self) -> int:
        """Client port (its cluster-bus port is this + 10000)."""
        return self.server.port

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``, as ``CLUSTER NODES`` and MOVED redirections spell it."""
        return f"{HOST}:{self.server.port}"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``: a plain (non-cluster) connection to this node alone."""
        return self.server.url

    @property
    def pid(self) -> int | None:
        """Process id while running, else ``None`` (for CPU accounting)."""
        return self.server.pid

    @property
    def up(self) -> bool:
        """Running and not paused: expected to answer."""
        return self.server.running and not self.server.paused

    def command(self, *args: Any, step: str = "command", timeout: float = 5.0) -> Any:
        """One command to this node alone (no retries, no redirection); raises :class:`ClusterError`.

        ``step`` names what the command was for in the error, e.g. ``"move_slot 866"``.
        """
        try:
            with self.client(timeout) as c:
                return c.execute_command(*args)
        except (redis.RedisError, OSError) as exc:
            shown = " ".join(str(a) for a in args[:4]) + (" ..." if len(args) > 4 else "")
            raise ClusterError(f"{step}: {shown} on {self.name} failed: {exc}") from exc

    def views(self) -> list[NodeView]:
        """``CLUSTER NODES`` as this node sees the cluster."""
        return parse_cluster_nodes(_text(self.command("CLUSTER", "NODES", step="cluster nodes")))

    def report(self, timeout: float = 1.0) -> NodeReport:
        """This node's view, ``cluster_state`` and replication link in one round trip (for settling)."""
        with self.client(timeout) as c:
            pipe = c.pipeline(transaction=False)
            pipe.execute_command("CLUSTER", "NODES")
            pipe.execute_command("CLUSTER", "INFO")
            pipe.execute_command("INFO", "replication")
            nodes_raw, info_raw, repl_raw = pipe.execute()
        # redis-py parses INFO into a dict; CLUSTER INFO comes back as text.
        repl = repl_raw if isinstance(repl_raw, dict) else _fields(_text(repl_raw))
        return NodeReport(
            node_id=self.node_id,
            name=self.name,
            cluster_state=_fields(_text(info_raw)).get("cluster_state", "?"),
            views=tuple(parse_cluster_nodes(_text(nodes_raw))),
            primary_link_up=None if repl.get("role") == "master" else repl.get("master_link_status") == "up",
        )

    @contextlib.contextmanager
    def client(self, timeout: float = 5.0) -> Iterator[redis.Redis]:
        """A short-lived plain connection to this node without retries: admin calls fail fast."""
        client = redis.Redis(
            host=HOST,
            port=self.port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            **_NO_SETINFO,
        )
        try:
            yield client
        finally:
            client.close()

    def __repr__(self) -> str:
        state = "paused" if self.server.paused else "running" if self.server.running else "down"
        return f"<LocalNode {self.name} {self._node_id[:8] or '?'} {state}>"


def spawn_node(index: int, binary: ServerBinary, args: Sequence[str], deadline: float) -> LocalNode:
    """Start node ``index`` with cluster ``args`` and return it once it answers with its node id.

    The port is our own pick (port and bus port free), so a lost race for it is retried here.
    """
    last: Exception | None = None
    for _ in range(10):
        server = RedisServer(port=_free_port_pair(), server=binary, extra_args=args)
        try:
            server.start(timeout=max(1.0, deadline - time.monotonic()))
        except RedisServerError as exc:
            server.cleanup()
            if "in use" not in str(exc):
                raise ClusterError(f"node-{index} did not start: {exc}") from exc
            last = exc
            continue
        node = LocalNode(index, server)
        node._node_id = str(node.command("CLUSTER", "MYID", step="start"), "ascii")
        return node
    raise ClusterError(f"node-{index}: no free port pair after 10 tries: {last}")


def _free_port_pair() -> int:
    # A port and its bus port (+10000) that are both free right now; the server may still
    # lose the race for them, which _spawn_node retries.
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randint(*_PORT_RANGE)
        if _port_free(port) and _port_free(port + _BUS_OFFSET):
            return port
    raise ClusterError(f"no free port pair in {_PORT_RANGE} after 200 tries")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _fields(text: str) -> dict[str, str]:
    # "key:value" lines of CLUSTER INFO / INFO; section headers start with '#'.
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}
