"""The LOCAL_ONLY write journal: order, heartbeat coalescing, bound, in-order acknowledgement."""

from __future__ import annotations

import dataclasses

import pytest

from lockless.core.commands import WRITE_OPS, Heartbeat, JobFinish, JobStart, Register, Remove
from lockless.core.journal import JournalEntry, WriteJournal
from lockless.core.snapshot import NodeSpec
from lockless.errors import ConfigError, JournalFull


def plan(journal: WriteJournal) -> list[tuple[int, str, str, str]]:
    """The replay plan reduced to (index, op, pool, node) for compact assertions."""
    return [(e.index, e.op, e.pool, e.node_id) for e in journal.pending()]


def register(pool: str, node: str) -> Register:
    return Register(spec=NodeSpec(node_id=node, pool=pool, max_jobs=4))


def beat(pool: str, node: str, load: float = 0.0) -> Heartbeat:
    return Heartbeat(pool=pool, node_id=node, load=load)


def start(pool: str, node: str, job: str = "j1") -> JobStart:
    return JobStart(pool=pool, node_id=node, job_id=job)


def finish(pool: str, node: str, job: str = "j1") -> JobFinish:
    return JobFinish(pool=pool, node_id=node, job_id=job)


@pytest.mark.parametrize("capacity", [0, -1, True, 1.5, "8"])
def test_capacity_is_validated(capacity):
    with pytest.raises(ConfigError) as info:
        WriteJournal(capacity)
    assert info.value.field == "journal.capacity"
    assert "integer >= 1" in info.value.allowed


def test_empty_journal():
    journal = WriteJournal(4)
    assert (journal.capacity, len(journal), journal.head()) == (4, 0, None)
    assert (journal.rejected, journal.coalesced) == (0, 0)
    assert journal.pending() == ()


def test_entries_replay_in_the_order_journaled():
    journal = WriteJournal(10)
    journal.append(register("gpu", "n1"), now=1.0)
    journal.append(start("gpu", "n1"), now=2.0)
    journal.append(register("cpu", "n2"), now=3.0)
    journal.append(finish("gpu", "n1"), now=4.0)
    journal.append(Remove(pool="cpu", node_id="n2"), now=5.0)
    assert plan(journal) == [
        (0, "register", "gpu", "n1"),
        (1, "job_start", "gpu", "n1"),
        (2, "register", "cpu", "n2"),
        (3, "job_finish", "gpu", "n1"),
        (4, "remove", "cpu", "n2"),
    ]
    assert [e.at for e in journal.pending()] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert len(journal) == 5
    assert journal.head() == journal.pending()[0]


def test_commands_are_frozen_validated_values():
    command = start("gpu", "n1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        command.job_id = "x"  # type: ignore[misc]
    for field, kwargs in (
        ("pool", {"pool": "", "node_id": "n", "job_id": "j"}),
        ("node_id", {"pool": "p", "node_id": None, "job_id": "j"}),
        ("job_id", {"pool": "p", "node_id": "n", "job_id": ""}),
    ):
        with pytest.raises(ConfigError) as info:
            JobStart(**kwargs)  # type: ignore[arg-type]
        assert info.value.field == field
    with pytest.raises(ConfigError) as info:
        Heartbeat(pool="p", node_id="n", running_jobs="j1")  # a string is not a set of job ids
    assert info.value.field == "running_jobs"


def test_a_heartbeats_job_list_is_copied():
    jobs = ["j1"]
    command = Heartbeat(pool="p", node_id="n", running_jobs=jobs)
    jobs.append("j2")
    assert command.running_jobs == ("j1",)


def test_entry_is_frozen_keyword_only_and_validated():
    entry = JournalEntry(index=0, command=Remove(pool="p", node_id="n"), at=0.0)
    assert (entry.op, entry.pool, entry.node_id) == ("remove", "p", "n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.at = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        JournalEntry(0, Remove(pool="p", node_id="n"), 0.0)  # type: ignore[misc]
    for bad in (-1, True):
        with pytest.raises(ConfigError) as info:
            JournalEntry(index=bad, command=Remove(pool="p", node_id="n"), at=0.0)
        assert info.value.field == "index"


def test_something_that_is_not_a_command_is_refused_naming_what_is_allowed():
    journal = WriteJournal(2)
    with pytest.raises(ValueError, match="write command") as info:
        journal.append(("reap", "gpu", "n1"), now=0.0)  # type: ignore[arg-type]
    assert isinstance(info.value, ConfigError)
    assert "Register" in info.value.allowed
    assert len(journal) == 0
    assert journal.append(register("gpu", "n1"), now=1.0).index == 0  # no index was used up
    assert WRITE_OPS == ("register", "heartbeat", "remove", "job_start", "job_finish")


# --- heartbeat coalescing ---------------------------------------------------------


def test_heartbeat_replaces_the_nodes_newest_heartbeat_in_place():
    journal = WriteJournal(10)
    first = journal.append(beat("gpu", "n1", 0.1), now=1.0)
    journal.append(register("gpu", "n2"), now=2.0)
    latest = journal.append(beat("gpu", "n1", 0.7), now=3.0)
    assert latest.index == first.index
    assert plan(journal) == [(0, "heartbeat", "gpu", "n1"), (1, "register", "gpu", "n2")]
    assert journal.pending()[0] == latest
    assert (latest.command.load, latest.at) == (0.7, 3.0)
    assert journal.coalesced == 1


def test_heartbeat_after_a_job_delta_is_not_coalesced():
    journal = WriteJournal(10)
    journal.append(beat("gpu", "n1", 0.1), now=1.0)
    journal.append(start("gpu", "n1"), now=2.0)
    journal.append(beat("gpu", "n1", 0.5), now=3.0)
    assert [e.op for e in journal.pending()] == ["heartbeat", "job_start", "heartbeat"]
    assert journal.coalesced == 0
    # The heartbeat after the job delta is now the node's newest, and takes the next one.
    journal.append(beat("gpu", "n1", 0.9), now=4.0)
    assert [e.command.load for e in journal.pending() if e.op == "heartbeat"] == [0.1, 0.9]
    assert journal.coalesced == 1


def test_heartbeat_after_register_is_appended():
    journal = WriteJournal(10)
    journal.append(register("gpu", "n1"), now=1.0)
    journal.append(beat("gpu", "n1"), now=2.0)
    assert [e.op for e in journal.pending()] == ["register", "heartbeat"]


def test_heartbeats_coalesce_per_pool_and_node():
    journal = WriteJournal(10)
    journal.append(beat("gpu", "n1"), now=1.0)
    journal.append(beat("cpu", "n1"), now=2.0)  # same id, other pool: another node
    journal.append(beat("gpu", "n2"), now=3.0)
    assert len(journal) == 3
    assert journal.coalesced == 0


def test_heartbeats_never_fill_the_journal():
    journal = WriteJournal(1)
    journal.append(beat("gpu", "n1"), now=1.0)
    for t in range(2, 50):
        journal.append(beat("gpu", "n1", t / 100), now=float(t))
    assert (len(journal), journal.coalesced, journal.rejected) == (1, 48, 0)
    with pytest.raises(JournalFull):
        journal.append(beat("gpu", "n2"), now=50.0)


# --- the bound --------------------------------------------------------------------


def test_full_journal_raises_counts_and_loses_nothing():
    journal = WriteJournal(2)
    journal.append(start("gpu", "n1"), now=1.0)
    journal.append(finish("gpu", "n1"), now=2.0)
    before = journal.pending()
    for attempt in (1, 2):
        with pytest.raises(JournalFull) as info:
            journal.append(start("gpu", "n1", "j2"), now=3.0)
        assert info.value.capacity == 2
        assert journal.rejected == attempt
    assert journal.pending() == before
    # Room again once replay acknowledges an entry; the refused write never got an index.
    journal.ack(before[0])
    assert journal.append(start("gpu", "n1", "j2"), now=4.0).index == 2


# --- acknowledgement --------------------------------------------------------------


def test_ack_in_order_resumes_where_replay_stopped():
    journal = WriteJournal(10)
    for i, command in enumerate(
        (register("gpu", "n1"), start("gpu", "n1"), finish("gpu", "n1"), Remove(pool="gpu", node_id="n1"))
    ):
        journal.append(command, now=float(i))
    replay = journal.pending()
    assert journal.ack(replay[0]) is True
    assert journal.ack(replay[1]) is True
    # Redis fails again here; the next attempt picks up the rest, in order.
    assert journal.pending() == replay[2:]
    for entry in journal.pending():
        assert journal.ack(entry) is True
    assert (len(journal), journal.pending()) == (0, ())


def test_ack_out_of_order_raises_and_removes_nothing():
    journal = WriteJournal(10)
    first = journal.append(start("gpu", "n1"), now=1.0)
    second = journal.append(finish("gpu", "n1"), now=2.0)
    with pytest.raises(ValueError, match="entry 1 acked, oldest pending is 0"):
        journal.ack(second)
    assert journal.pending() == (first, second)
    journal.ack(first)
    with pytest.raises(ValueError, match="out of order"):
        journal.ack(first)  # twice
    journal.ack(second)
    with pytest.raises(ValueError, match="oldest pending is None"):
        journal.ack(second)  # empty journal


def test_ack_of_a_heartbeat_superseded_during_replay_keeps_the_newer_one():
    journal = WriteJournal(10)
    replaying = journal.append(beat("gpu", "n1", 0.1), now=1.0)
    newer = journal.append(beat("gpu", "n1", 0.8), now=2.0)  # arrives mid-replay
    assert journal.ack(replaying) is False
    assert journal.pending() == (newer,)
    assert journal.ack(newer) is True
    assert len(journal) == 0


def test_after_ack_a_heartbeat_is_appended_not_coalesced_into_the_replayed_one():
    journal = WriteJournal(10)
    journal.ack(journal.append(beat("gpu", "n1"), now=1.0))
    entry = journal.append(beat("gpu", "n1"), now=2.0)
    assert (entry.index, len(journal), journal.coalesced) == (1, 1, 0)


def test_ack_keeps_the_nodes_newer_entry_as_the_coalescing_target():
    journal = WriteJournal(10)
    hb = journal.append(beat("gpu", "n1"), now=1.0)
    journal.append(start("gpu", "n1"), now=2.0)
    journal.ack(hb)
    journal.append(beat("gpu", "n1"), now=3.0)  # newest for n1 is job_start: append
    assert [e.op for e in journal.pending()] == ["job_start", "heartbeat"]
