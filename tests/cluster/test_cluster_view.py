"""The pure half of the cluster controller: CLUSTER NODES parsing and the settle rule (no server)."""

from __future__ import annotations

import dataclasses

import pytest

from sim.cluster_view import NodeReport, NodeView, parse_cluster_nodes, settle_problems, slot_owners

A, B, C, D = ("a" * 40, "b" * 40, "c" * 40, "d" * 40)

# Shaped like real replies (Valkey 9 and Redis 6.2 print the same columns).
NODES_FROM_A = f"""\
{A} 127.0.0.1:10001@20001 myself,master - 0 0 1 connected 0-8191 [8000->-{B}]
{B} 127.0.0.1:10002@20002,host-b master - 0 1700000000000 2 connected 8192-16383
{C} 127.0.0.1:10003@20003 slave {A} 0 1700000000000 1 connected
{D} :0@0 master,fail?,noaddr - 1700000000000 1700000000000 0 disconnected
"""


def test_parse_reads_every_column() -> None:
    a, b, c, d = parse_cluster_nodes(NODES_FROM_A)
    assert (a.node_id, a.host, a.port, a.role, a.myself, a.primary_id) == (
        A,
        "127.0.0.1",
        10001,
        "primary",
        True,
        None,
    )
    assert (a.slots, a.migrating, a.importing) == (((0, 8191),), ((8000, B),), ())
    assert (b.port, b.slots, b.myself, b.config_epoch) == (10002, ((8192, 16383),), False, 2)
    assert (c.role, c.primary_id, c.slots, c.connected, c.healthy) == ("replica", A, (), True, True)
    assert (d.host, d.port, d.connected, d.healthy) == ("", 0, False, False)
    assert a.owns(0) and a.owns(8191) and not a.owns(8192)


def test_parse_single_slots_and_importing() -> None:
    (view,) = parse_cluster_nodes(
        f"{B} 127.0.0.1:10002@20002 myself,master - 0 0 2 connected 5 7-9 [3-<-{A}]\n"
    )
    assert view.slots == ((5, 5), (7, 9))
    assert view.importing == ((3, A),)


def test_parse_rejects_a_short_line_naming_it() -> None:
    with pytest.raises(ValueError, match="expected at least 8"):
        parse_cluster_nodes(f"{A} 127.0.0.1:1@2 master -\n")


def test_slot_owners_is_sorted_by_slot() -> None:
    assert slot_owners(parse_cluster_nodes(NODES_FROM_A)) == ((0, 8191, A), (8192, 16383, B))


def view(
    node_id: str,
    port: int,
    role: str,
    slots: tuple[tuple[int, int], ...] = (),
    primary: str | None = None,
    *,
    me: bool = False,
    flags: tuple[str, ...] = (),
    migrating: tuple[tuple[int, str], ...] = (),
) -> NodeView:
    base = {"master"} if role == "primary" else {"slave"}
    return NodeView(
        node_id=node_id,
        host="127.0.0.1",
        port=port,
        flags=frozenset(base | set(flags) | ({"myself"} if me else set())),
        primary_id=primary,
        config_epoch=1,
        connected=True,
        slots=slots,
        migrating=migrating,
    )


def healthy_cluster() -> dict[str, NodeReport]:
    """Two primaries (A, B) and a replica C of A, each seeing the same thing."""

    def report(me: str, name: str, link: bool | None) -> NodeReport:
        views = (
            view(A, 1, "primary", ((0, 8191),), me=me == A),
            view(B, 2, "primary", ((8192, 16383),), me=me == B),
            view(C, 3, "replica", primary=A, me=me == C),
        )
        return NodeReport(node_id=me, name=name, cluster_state="ok", views=views, primary_link_up=link)

    return {A: report(A, "node-a", None), B: report(B, "node-b", None), C: report(C, "node-c", True)}


def test_a_consistent_cluster_is_settled() -> None:
    assert settle_problems(healthy_cluster(), [A, B, C]) == []


def with_view(reports: dict[str, NodeReport], who: str, **changes: object) -> dict[str, NodeReport]:
    return {**reports, who: dataclasses.replace(reports[who], **changes)}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda r: with_view(r, B, cluster_state="fail"), "node-b says cluster_state:fail"),
        (
            lambda r: with_view(r, C, primary_link_up=False),
            "node-c is a replica whose link to its primary is not up",
        ),
        (
            lambda r: with_view(
                r, B, views=(r[B].views[0], view(B, 2, "primary", ((8192, 16383),), me=True))
            ),
            "node-b does not know live node " + C,
        ),
        (
            lambda r: with_view(
                r, A, views=(*r[A].views[:2], view(C, 3, "replica", primary=A, flags=("fail?",)))
            ),
            "node-a flags live node " + C,
        ),
        (
            lambda r: with_view(r, B, views=(view(A, 1, "primary", ((0, 8190),)), *r[B].views[1:])),
            "nodes disagree on the slot map",
        ),
        (
            lambda r: with_view(r, B, views=(view(A, 1, "primary", ((0, 8190),)), *r[B].views[1:])),
            "node-b sees 16383 of 16384 slots owned",
        ),
        (
            lambda r: with_view(r, B, views=(*r[B].views[:2], view(C, 3, "replica", primary=B))),
            "nodes disagree on roles",
        ),
        (
            lambda r: with_view(
                r,
                A,
                views=(view(A, 1, "primary", ((0, 8191),), me=True, migrating=((5, B),)), *r[A].views[1:]),
            ),
            "node-a has slots half moved",
        ),
    ],
)
def test_each_unsettled_state_is_named(breakage, expected: str) -> None:  # type: ignore[no-untyped-def]
    problems = settle_problems(breakage(healthy_cluster()), [A, B, C])
    assert any(expected in p for p in problems), problems


def test_slots_owned_by_a_dead_node_are_not_settled() -> None:
    # A is down (killed, not yet failed over): everyone still assigns its slots to it.
    reports = healthy_cluster()
    del reports[A]
    problems = settle_problems(reports, [B, C])
    assert any(f"node-b sees slots owned by nodes that are down: ['{A}']" in p for p in problems), problems


def test_a_live_node_without_a_report_is_named() -> None:
    reports = healthy_cluster()
    del reports[C]
    assert f"no report from live node {C}" in settle_problems(reports, [A, B, C])
