"""Properties of version and seq ordering (pure): PoolSequencer and L1Store under any interleaving.

Hypothesis builds a consistent Redis history of one pool (every mutation takes the next
``seq`` and stamps it on the node as its version, DESIGN.md section 3), then feeds an
L1 store what an instance can be told about that history, in any order: late or
duplicated events, removals, its own "assumed" admissions, and relists read at any
past ``seq``. Whatever the order, what L1 shows of a node never moves back in that
history (DESIGN.md section 5, monotonic reads), its placement index agrees with its
snapshots, and a relist of the newest state makes it exactly Redis.

For the sequencer: any delivery of a pool's events (dropped, duplicated, reordered),
handled as the registry handles it (apply, ignore, or catch up from the log), applies
every ``seq`` exactly once and in order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lockless.core.l1 import L1Store, PoolIndex
from lockless.core.selection import placement_key
from lockless.core.sequencer import APPLY, IGNORE, RELIST, CatchUp, PoolSequencer
from lockless.core.snapshot import NodeSnapshot

NODES = ("a", "b", "c")


@dataclass(frozen=True)
class History:
    """Redis state of one pool after each seq: ``states[s]`` is node id -> snapshot at seq ``s``."""

    states: tuple[dict[str, NodeSnapshot], ...]
    #: seq -> (node id, kind) of the mutation with that seq; kind: put | job | remove.
    mutations: dict[int, tuple[str, str]]

    @property
    def last(self) -> int:
        return len(self.states) - 1


@st.composite
def histories(draw: st.DrawFn) -> History:
    state: dict[str, NodeSnapshot] = {}
    states = [dict(state)]
    mutations: dict[int, tuple[str, str]] = {}
    for seq in range(1, draw(st.integers(1, 25)) + 1):
        node_id = draw(st.sampled_from(NODES))
        old = state.get(node_id)
        kinds = ["put"] if old is None else ["put", "remove", "job"]
        kind = draw(st.sampled_from(kinds))
        if kind == "remove":
            del state[node_id]
        elif kind == "job" and old is not None:
            state[node_id] = old.with_jobs(draw(st.integers(0, old.max_jobs)), seq)
        else:
            state[node_id] = NodeSnapshot(
                node_id=node_id,
                pool="p",
                version=seq,
                status=draw(st.sampled_from(["up", "draining"])),
                max_jobs=draw(st.integers(0, 3)),
                current_jobs=old.current_jobs if old else 0,
                load=draw(st.sampled_from([0.0, 0.5])),
            )
        mutations[seq] = (node_id, kind)
        states.append(dict(state))
    return History(states=tuple(states), mutations=mutations)


# What an instance can be told, each naming a point of the history:
#   ("event", s)   the event of mutation s (a late, duplicated or reordered delivery, or an L2 read)
#   ("assume", s)  its own admission answered with version s (only for "job" mutations)
#   ("relist", s)  a relist that read the pool as it was at seq s
tellings = st.lists(
    st.tuples(st.sampled_from(["event", "event", "assume", "relist"]), st.integers(0, 10**6)), max_size=40
)


def index_consistent(index: PoolIndex) -> None:
    expected = sorted(
        placement_key(n) for n in index.nodes.values() if n.status == "up" and n.current_jobs < n.max_jobs
    )
    assert list(index.placeable) == expected
    assert index.draining == sum(n.status == "draining" for n in index.nodes.values())
    assert index.assumed <= set(index.nodes)


# A relist may be read at a point of history older than what L1 already knows (the
# instance's own writes land while it is in flight); events a relist covered are not told
# afterwards, as the registry's sequencer ignores them.


class Told:
    """Where the relists told so far read the pool."""

    relisted_at = 0


def tell(l1: L1Store, history: History, what: str, at: int, now: float, told: Told) -> None:
    if what == "relist":
        # Relists run one after another in the applier task, each reading a later seq.
        at = told.relisted_at = max(told.relisted_at, at)
        l1.replace_pool("p", history.states[at].values(), now, seq=at)
        return
    if at == 0 or at <= told.relisted_at:
        return  # in the registry the sequencer ignores events a relist covered
    node_id, kind = history.mutations[at]
    if kind == "remove":
        l1.remove("p", node_id, at)
    elif what == "assume" and kind == "job":
        mine = history.states[at][node_id]  # our write's answer: the same values, our own object
        l1.assume(mine.with_jobs(mine.current_jobs, mine.version), now)
    else:
        l1.apply(history.states[at][node_id], now)


@given(histories(), tellings)
def test_what_l1_shows_of_a_node_never_moves_back_in_history(history: History, plan) -> None:
    """No interleaving makes a node reappear older than a removal or snapshot L1 already knew."""
    l1 = L1Store(ttl_jitter=0.0, rng=random.Random(0))
    told = Told()
    known: dict[str, int] = {}  # node -> the newest point of history L1 has shown for it
    for step, (what, raw) in enumerate(plan):
        at = raw % (history.last + 1)
        tell(l1, history, what, at, float(step), told)
        index = l1.pool("p")
        index_consistent(index)
        for node_id in NODES:
            node = index.nodes.get(node_id)
            if node is not None:
                assert node.version >= known.get(node_id, 0), (
                    f"after {what} at seq {at}: {node_id} shows version {node.version}, "
                    f"but L1 already knew it at {known[node_id]}"
                )
                # What L1 holds at a version is what Redis held at that version.
                assert node == history.states[node.version][node_id]
            known[node_id] = max(known.get(node_id, 0), l1.version_of("p", node_id))


def test_a_relist_read_before_a_removal_does_not_resurrect_the_node() -> None:
    """A relist listing a node at v1, installed after L1 applied its removal at v2, revives it.

    lockless/core/l1.py ``L1Store.replace_pool`` keeps cached snapshots newer than the
    listing (the relist "read them before an event we already applied") but not
    tombstones, which it drops: a removal newer than the listing is forgotten and the
    removed node is installed again. In the registry the relist runs in the applier task
    while the instance's own ``remove_node`` (``self.l1.remove`` after the script) or a
    ``_fill`` that found the node gone can apply a removal concurrently; until the removal
    event is judged again, reads and ``select_nodes`` serve the removed node.
    Fix: in ``replace_pool`` (without ``reset``), skip a listed node whose tombstone is
    newer than its listed version, and keep such tombstones.
    """
    c1 = NodeSnapshot(node_id="c", pool="p", version=1, status="up", max_jobs=1, current_jobs=0)
    l1 = L1Store(ttl_jitter=0.0)
    l1.apply(c1, 0.0)
    l1.remove("p", "c", 2)  # removed at seq 2
    l1.replace_pool("p", [c1], 1.0)  # a relist that read the pool at seq 1
    assert l1.peek("p", "c") is None


@given(histories(), tellings)
def test_a_relist_of_the_newest_state_makes_l1_exactly_redis(history: History, plan) -> None:
    l1 = L1Store(ttl_jitter=0.0, rng=random.Random(0))
    told = Told()
    for step, (what, raw) in enumerate(plan):
        tell(l1, history, what, raw % (history.last + 1), float(step), told)
    l1.replace_pool("p", history.states[history.last].values(), 1e6)
    assert l1.pool("p").nodes == history.states[history.last]
    assert not l1.pool("p").assumed
    index_consistent(l1.pool("p"))


@given(histories(), tellings, st.integers(0, 10**6))
def test_a_reset_relist_trusts_only_the_listing(history: History, plan, raw: int) -> None:
    """After data loss versions restart: a reset relist installs the listing as it is."""
    l1 = L1Store(ttl_jitter=0.0, rng=random.Random(0))
    told = Told()
    for step, (what, r) in enumerate(plan):
        tell(l1, history, what, r % (history.last + 1), float(step), told)
    listing = history.states[raw % (history.last + 1)]
    l1.replace_pool("p", listing.values(), 1e6, reset=True)
    assert l1.pool("p").nodes == listing
    index_consistent(l1.pool("p"))


# ------------------------------------------------------------------ sequencer
deliveries = st.lists(st.integers(1, 30), max_size=60)


@given(st.integers(0, 5), st.integers(1, 30), deliveries)
def test_any_delivery_applies_every_seq_exactly_once_in_order(start: int, produced: int, delivered) -> None:
    """Events arrive dropped, duplicated or reordered; the log fills every gap (DESIGN.md 5.1-5.2)."""
    seqr = PoolSequencer()
    seqr.synced("p", start, "e1")
    applied: list[int] = []
    log = range(start + 1, start + produced + 1)  # what XRANGE can return

    def judge(seq: int) -> None:
        last = seqr.last_seq("p")
        decision = seqr.on_event("p", seq)
        if decision == APPLY:
            assert seq == last + 1
            applied.append(seq)
        elif decision == IGNORE:
            assert seq <= last
        else:
            assert decision == CatchUp(from_seq=last + 1, to_seq=seq)
            assert seqr.last_seq("p") == last  # deciding changed nothing
            for entry in log:  # the registry's _catch_up: log entries through on_event
                if entry >= decision.from_seq and seqr.on_event("p", entry) == APPLY:
                    applied.append(entry)
                if entry >= seq:
                    break

    for raw in delivered:
        judge(start + 1 + (raw - 1) % produced)
        assert seqr.last_seq("p") >= start
    judge(start + produced)  # the last event, or the health probe noticing Redis is ahead
    assert applied == list(log)
    assert seqr.last_seq("p") == start + produced


@given(
    st.lists(st.tuples(st.sampled_from(["event", "probe", "synced", "invalidate"]), st.integers(0, 40)))
)
def test_last_seq_only_moves_back_by_a_relist_or_an_invalidation(ops) -> None:
    seqr = PoolSequencer()
    for op, value in ops:
        before = seqr.last_seq("p")
        if op == "event":
            decision = seqr.on_event("p", value)
            if before is None:
                assert decision == RELIST
        elif op == "probe":
            seqr.probe("p", value, "e1", 0)
        elif op == "synced":
            seqr.synced("p", value, "e1")
            assert seqr.last_seq("p") == value
            continue
        else:
            seqr.invalidate("p")
            assert seqr.last_seq("p") is None
            continue
        after = seqr.last_seq("p")
        assert (before is None and after is None) or (before is not None and after >= before)


@pytest.mark.parametrize("at", [0, 3])
@pytest.mark.parametrize("known", [None, "e1"])
def test_epoch_changed_unless_known_or_listed_before_the_first_write(known: str | None, at: int) -> None:
    seqr = PoolSequencer()
    seqr.synced("p", at, known)
    assert seqr.lost_data("p", at, "e2", 0) is (known is not None or at > 0)
    assert seqr.lost_data("p", at, known, 0) is False
