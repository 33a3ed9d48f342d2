"""How cluster nodes see the cluster, as values, and the rule for "the cluster has settled".

``CLUSTER NODES`` gives one node's view of every node it knows::

    <id> <ip:port@cport[,hostname]> <flags> <primary-id|-> <ping-sent> <pong-recv>
        <config-epoch> <link> <slot>...     (one line per node)

where a slot entry is ``0-5460`` or ``5461`` (owned), ``[866->-<id>]`` (migrating to
``<id>``) or ``[866-<-<id>]`` (importing from ``<id>``); flags include ``myself``,
``master``, ``slave``, ``fail?`` (this node suspects it), ``fail`` (the cluster agreed),
``handshake`` and ``noaddr``. Both Redis 6.2 and Valkey 9 still print ``master`` and
``slave`` there; this module speaks of primaries and replicas.

Theory of operation. Faults on a cluster are asynchronous: a killed primary is noticed
after ``cluster-node-timeout``, its replica is elected, and the new configuration spreads
by gossip. The controller (``sim.cluster_server``) therefore never sleeps for a fixed
time; it polls every live node and waits until :func:`settle_problems` finds nothing
wrong: every live node says ``cluster_state:ok``, sees every other live node healthy,
agrees with the others on who owns which slot and who replicates whom, has no slot half
moved, and every live replica's link to its primary is up. The function returns what is
still wrong as sentences, so a timeout can say exactly why the cluster did not settle.

Pure: no I/O and no clock, so the parser and the rule are tested without a server.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "SLOTS",
    "NodeReport",
    "NodeView",
    "SlotRange",
    "parse_cluster_nodes",
    "settle_problems",
    "slot_owners",
]

SLOTS = 16384
"""Hash slots in a Redis/Valkey cluster."""

SlotRange = tuple[int, int]
"""An inclusive range of slots, ``(first, last)``."""

_UNHEALTHY_FLAGS = frozenset({"fail", "fail?", "handshake", "noaddr"})


@dataclass(frozen=True, kw_only=True)
class NodeView:
    """One line of ``CLUSTER NODES``: how the node that answered sees one node."""

    node_id: str
    host: str
    """``""`` while the address is unknown (flag ``noaddr``)."""
    port: int
    """Client port; 0 while the address is unknown."""
    flags: frozenset[str]
    primary_id: str | None
    """The primary this node replicates, or ``None`` for a primary."""
    config_epoch: int
    connected: bool
    """Whether the answering node's cluster-bus link to this node is up."""
    slots: tuple[SlotRange, ...] = ()
    migrating: tuple[tuple[int, str], ...] = ()
    """``(slot, destination id)`` for slots this node is moving out (only in its own line)."""
    importing: tuple[tuple[int, str], ...] = ()
    """``(slot, source id)`` for slots this node is taking in (only in its own line)."""

    @property
    def role(self) -> Literal["primary", "replica"]:
        """``"primary"`` (flag ``master``) or ``"replica"`` (flag ``slave``)."""
        return "primary" if "master" in self.flags else "replica"

    @property
    def myself(self) -> bool:
        """True for the line describing the node that answered."""
        return "myself" in self.flags

    @property
    def healthy(self) -> bool:
        """Not failed, not suspected, not still in handshake, and with a known address."""
        return not (self.flags & _UNHEALTHY_FLAGS)

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    def owns(self, slot: int) -> bool:
        """True if ``slot`` is in one of this node's slot ranges."""
        return any(first <= slot <= last for first, last in self.slots)


def parse_cluster_nodes(text: str) -> list[NodeView]:
    """Parse a ``CLUSTER NODES`` reply into one :class:`NodeView` per line.

    Raises ``ValueError`` naming the line when a line does not have the documented shape.
    """
    views = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) < 8:
            raise ValueError(f"CLUSTER NODES line has {len(fields)} fields, expected at least 8: {line!r}")
        node_id, addr, flags, primary, _ping, _pong, epoch, link = fields[:8]
        # ip:port@cport[,hostname]; ":0@0" while the address is not known yet.
        host, _, port = addr.split("@", 1)[0].rpartition(":")
        slots: list[SlotRange] = []
        migrating: list[tuple[int, str]] = []
        importing: list[tuple[int, str]] = []
        for entry in fields[8:]:
            if entry.startswith("["):
                if "->-" in entry:
                    slot, other = entry[1:-1].split("->-", 1)
                    migrating.append((int(slot), other))
                else:
                    slot, other = entry[1:-1].split("-<-", 1)
                    importing.append((int(slot), other))
            else:
                first, _, last = entry.partition("-")
                slots.append((int(first), int(last or first)))
        views.append(
            NodeView(
                node_id=node_id,
                host=host,
                port=int(port or 0),
                flags=frozenset(flags.split(",")) - {"noflags"},
                primary_id=None if primary == "-" else primary,
                config_epoch=int(epoch),
                connected=link == "connected",
                slots=tuple(slots),
                migrating=tuple(migrating),
                importing=tuple(importing),
            )
        )
    return views


def slot_owners(views: Collection[NodeView]) -> tuple[tuple[int, int, str], ...]:
    """The slot map of one view: ``(first, last, owner id)`` sorted by slot."""
    return tuple(
        sorted((first, last, v.node_id) for v in views if v.role == "primary" for first, last in v.slots)
    )


@dataclass(frozen=True, kw_only=True)
class NodeReport:
    """What one live node answered in one poll."""

    node_id: str
    name: str
    """How errors name the node, e.g. ``node-2 (127.0.0.1:23001)``."""
    cluster_state: str
    """``ok`` or ``fail``, from ``CLUSTER INFO``."""
    views: tuple[NodeView, ...]
    primary_link_up: bool | None
    """For a replica, whether ``INFO replication`` says ``master_link_status:up``; ``None`` for a primary."""


def settle_problems(reports: Mapping[str, NodeReport], live: Collection[str]) -> list[str]:
    """What keeps the cluster from being settled, as sentences; empty when it is settled.

    ``reports`` holds one :class:`NodeReport` per live node (by node id) and ``live`` the
    ids of the nodes that should be up (running, not paused). Settled means: every live node
    says ``cluster_state:ok``, sees every live node healthy, agrees with every other live
    node on the slot map and on each live node's role and primary, and has no slot
    migrating or importing; every slot is owned by a live node; and every live replica's
    link to its primary is up.
    """
    problems: list[str] = []
    live_ids = set(live)
    missing = live_ids - set(reports)
    problems += [f"no report from live node {node_id}" for node_id in sorted(missing)]
    maps: dict[tuple[tuple[int, int, str], ...], list[str]] = {}
    roles: dict[tuple[tuple[str, str, str | None], ...], list[str]] = {}
    for node_id, report in sorted(reports.items()):
        if report.cluster_state != "ok":
            problems.append(f"{report.name} says cluster_state:{report.cluster_state}")
        seen = {v.node_id: v for v in report.views}
        for other in sorted(live_ids):
            view = seen.get(other)
            if view is None:
                problems.append(f"{report.name} does not know live node {other}")
            elif not view.healthy:
                problems.append(f"{report.name} flags live node {other} {','.join(sorted(view.flags))}")
        mine = seen.get(node_id)
        if mine is not None and (mine.migrating or mine.importing):
            problems.append(
                f"{report.name} has slots half moved: migrating {list(mine.migrating)}, "
                f"importing {list(mine.importing)}"
            )
        if mine is not None and mine.role == "replica" and report.primary_link_up is not True:
            problems.append(f"{report.name} is a replica whose link to its primary is not up")
        owners = slot_owners(report.views)
        maps.setdefault(owners, []).append(report.name)
        role_key = tuple(
            sorted((v.node_id, v.role, v.primary_id) for v in report.views if v.node_id in live_ids)
        )
        roles.setdefault(role_key, []).append(report.name)
        covered = sum(last - first + 1 for first, last, _ in owners)
        if covered != SLOTS:
            problems.append(f"{report.name} sees {covered} of {SLOTS} slots owned")
        dead_owners = sorted({owner for _, _, owner in owners} - live_ids)
        if dead_owners:
            problems.append(f"{report.name} sees slots owned by nodes that are down: {dead_owners}")
    if len(maps) > 1:
        problems.append(
            f"nodes disagree on the slot map: {len(maps)} versions, held by {list(maps.values())}"
        )
    if len(roles) > 1:
        problems.append(f"nodes disagree on roles: {len(roles)} versions, held by {list(roles.values())}")
    return problems
