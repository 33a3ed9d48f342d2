"""The snapshot codec and the value types (pure: no Redis).

Every way a record or event can be malformed must raise MalformedRecord naming the node
and the field; every bad NodeSpec argument must raise ConfigError naming the field and
what is allowed (DESIGN.md section 10).
"""

from __future__ import annotations

import json
import math

import pytest

from lockless.core.snapshot import (
    EVENT_OPS,
    NO_REQUIREMENTS,
    REMOVAL_OPS,
    STATUSES,
    ChangeEvent,
    NodeSnapshot,
    NodeSpec,
    Requirements,
    parse_event,
    parse_node_hash,
)
from lockless.errors import ConfigError, LocklessError, MalformedRecord


def good_hash(**overrides: str) -> dict[str, str]:
    """A node hash as the Lua scripts write it."""
    fields = {
        "version": "7",
        "status": "up",
        "max_jobs": "4",
        "current_jobs": "1",
        "load": "0.25",
        "resources": '{"cpu": 8, "mem_gb": 32.5}',
        "labels": '["gpu", "x"]',
        # The scripts' bookkeeping, which readers ignore (lockless/redis/scripts.py).
        "_ttl_at": "1700000000123",
        "_jobs": "7:da39a3ee5e6b4b0d3255bfef95601890afd80709",
    }
    fields.update(overrides)
    return fields


def without(field: str) -> dict[str, str]:
    fields = good_hash()
    del fields[field]
    return fields


def good_event(**overrides: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "seq": 7,
        "op": "register",
        "pool": "p",
        "node": "n1",
        "version": 7,
        "ts": 1700000000123,
        "epoch": "abc-1.2",
        "rec": good_hash(),
    }
    doc.update(overrides)
    return doc


# ------------------------------------------------------------------ parse_node_hash
def test_a_well_formed_hash_decodes_to_every_field() -> None:
    node = parse_node_hash("p", "n1", good_hash())
    assert node == NodeSnapshot(
        node_id="n1",
        pool="p",
        version=7,
        status="up",
        max_jobs=4,
        current_jobs=1,
        load=0.25,
        resources={"cpu": 8.0, "mem_gb": 32.5},
        labels=frozenset({"gpu", "x"}),
    )
    assert dict(node.resources) == {"cpu": 8.0, "mem_gb": 32.5}
    with pytest.raises(TypeError):
        node.resources["cpu"] = 1.0  # type: ignore[index]


def test_bytes_from_a_client_without_decode_responses_decode_the_same() -> None:
    raw = {k.encode(): v.encode() for k, v in good_hash().items()}
    assert parse_node_hash("p", "n1", raw) == parse_node_hash("p", "n1", good_hash())


def test_optional_fields_take_their_defaults() -> None:
    fields = good_hash()
    for name in ("load", "resources", "labels"):
        del fields[name]
    node = parse_node_hash("p", "n1", fields)
    assert node.load == 0.0
    assert dict(node.resources) == {}
    assert node.labels == frozenset()


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        (without("status"), "status", "None"),
        (good_hash(status="down"), "status", "allowed: draining | up"),
        (good_hash(status=""), "status", "allowed"),
        (good_hash(load="heavy"), "load", "not a number"),
        (good_hash(load="nan"), "load", "not finite"),
        (good_hash(load="inf"), "load", "not finite"),
        (good_hash(resources="{cpu: 8}"), "resources", "not a JSON object"),
        (good_hash(resources="[8]"), "resources", "not a JSON object"),
        (good_hash(resources='{"cpu": "8"}'), "resources", "numbers"),
        (good_hash(resources='{"cpu": true}'), "resources", "numbers"),
        (good_hash(resources='{"cpu": NaN}'), "resources", "finite"),
        (good_hash(resources='{"cpu": Infinity}'), "resources", "finite"),
        (good_hash(labels="gpu"), "labels", "not a JSON list"),
        (good_hash(labels='{"gpu": 1}'), "labels", "not a JSON list"),
        (good_hash(labels='["gpu", 3]'), "labels", "strings"),
        (without("version"), "version", "is missing"),
        (good_hash(version="abc"), "version", "not an integer"),
        (good_hash(version="0"), "version", "below the minimum 1"),
        (good_hash(version="2.5"), "version", "not an integer"),
        (without("max_jobs"), "max_jobs", "is missing"),
        (good_hash(max_jobs="abc"), "max_jobs", "'abc', not an integer"),
        (good_hash(max_jobs="-1"), "max_jobs", "below the minimum 0"),
        (without("current_jobs"), "current_jobs", "is missing"),
        (good_hash(current_jobs="x"), "current_jobs", "not an integer"),
        (good_hash(current_jobs="-2"), "current_jobs", "below the minimum 0"),
    ],
)
def test_every_malformed_field_raises_naming_node_and_field(
    fields: dict[str, str], field: str, words: str
) -> None:
    with pytest.raises(MalformedRecord) as info:
        parse_node_hash("p", "node-9", fields)
    exc = info.value
    assert isinstance(exc, LocklessError)
    assert (exc.node_id, exc.field) == ("node-9", field)
    assert words in exc.problem
    assert "'node-9'" in str(exc) and f"'{field}'" in str(exc)


def test_liveness_and_bookkeeping_are_not_part_of_the_record() -> None:
    # Liveness lives in the alive zset; a record written before it left the hash still
    # carries heartbeat_ms, and the scripts' own fields start with '_': none of them
    # is read, and none of them, good or garbage, makes a record malformed.
    plain = {k: v for k, v in good_hash().items() if not k.startswith("_")}
    assert parse_node_hash("p", "n1", plain) == parse_node_hash("p", "n1", good_hash())
    legacy = good_hash(heartbeat_ms="1700000000123")
    assert parse_node_hash("p", "n1", legacy) == parse_node_hash("p", "n1", plain)
    garbage = good_hash(heartbeat_ms="soon", _ttl_at="later", _jobs="?")
    assert parse_node_hash("p", "n1", garbage) == parse_node_hash("p", "n1", plain)
    assert not hasattr(parse_node_hash("p", "n1", plain), "heartbeat_ms")


def test_the_same_bad_resources_text_fails_again_after_being_cached() -> None:
    # The decoders are memoised; a cached failure must still fail, and must not leak into good text.
    for _ in range(2):
        with pytest.raises(MalformedRecord):
            parse_node_hash("p", "n1", good_hash(resources='{"cpu": "many"}'))
    assert dict(parse_node_hash("p", "n1", good_hash()).resources) == {"cpu": 8.0, "mem_gb": 32.5}


# ------------------------------------------------------------------ NodeSnapshot
def test_free_slots_and_utilisation() -> None:
    node = parse_node_hash("p", "n1", good_hash(max_jobs="4", current_jobs="1"))
    assert node.free_slots == 3
    assert node.utilisation == 0.25
    over = parse_node_hash("p", "n1", good_hash(max_jobs="2", current_jobs="5"))
    assert over.free_slots == 0
    assert over.utilisation == 2.5
    zero = parse_node_hash("p", "n1", good_hash(max_jobs="0", current_jobs="0"))
    assert zero.free_slots == 0
    assert zero.utilisation == 1.0


def test_with_jobs_changes_only_jobs_and_version() -> None:
    node = parse_node_hash("p", "n1", good_hash())
    assumed = node.with_jobs(2, 9)
    assert (assumed.current_jobs, assumed.version) == (2, 9)
    assert (node.current_jobs, node.version) == (1, 7)
    for name in ("node_id", "pool", "status", "max_jobs", "load", "resources", "labels"):
        assert getattr(assumed, name) == getattr(node, name), name


def test_snapshots_are_frozen() -> None:
    node = parse_node_hash("p", "n1", good_hash())
    with pytest.raises(AttributeError):
        node.version = 8  # type: ignore[misc]


# ----------------------------------------------------------------------- NodeSpec
def test_spec_round_trips_through_the_hash_the_scripts_write() -> None:
    spec = NodeSpec(
        node_id="n1",
        pool="p",
        max_jobs=3,
        resources={"cpu": 4},
        labels=["b", "a"],
        status="draining",
        load=0.5,
    )
    fields = spec.to_hash_fields()
    assert fields == {
        "status": "draining",
        "max_jobs": "3",
        "load": "0.5",
        "resources": '{"cpu": 4.0}',
        "labels": '["a", "b"]',
    }
    node = parse_node_hash("p", "n1", {**fields, "version": "1", "current_jobs": "0"})
    assert (node.status, node.max_jobs, node.load, dict(node.resources), node.labels) == (
        "draining",
        3,
        0.5,
        {"cpu": 4.0},
        frozenset({"a", "b"}),
    )


def test_spec_defaults_and_frozen_collections() -> None:
    spec = NodeSpec(node_id="n1", pool="p", max_jobs=0)
    assert (spec.status, spec.load, dict(spec.resources), spec.labels) == ("up", 0.0, {}, frozenset())
    spec = NodeSpec(node_id="n1", pool="p", max_jobs=1, labels=["x"], resources={"cpu": 2})
    assert isinstance(spec.labels, frozenset)
    with pytest.raises(TypeError):
        spec.resources["cpu"] = 3  # type: ignore[index]


@pytest.mark.parametrize(
    ("kwargs", "field", "allowed"),
    [
        ({"node_id": ""}, "node_id", "non-empty string without braces, colons or whitespace"),
        ({"node_id": "a:b"}, "node_id", "without braces"),
        ({"node_id": "a{b}"}, "node_id", "without braces"),
        ({"node_id": "a b"}, "node_id", "whitespace"),
        ({"node_id": "a\nb"}, "node_id", "whitespace"),
        ({"node_id": 5}, "node_id", "non-empty string"),
        ({"pool": ""}, "pool", "non-empty string"),
        ({"pool": "{p}"}, "pool", "without braces"),
        ({"pool": "p:q"}, "pool", "colons"),
        ({"max_jobs": -1}, "max_jobs", "an integer >= 0"),
        ({"max_jobs": 2.0}, "max_jobs", "an integer >= 0"),
        ({"max_jobs": True}, "max_jobs", "an integer >= 0"),
        ({"max_jobs": "3"}, "max_jobs", "an integer >= 0"),
        ({"status": "down"}, "status", "draining | up"),
        ({"load": 1.5}, "load", "a number in [0, 1]"),
        ({"load": -0.1}, "load", "a number in [0, 1]"),
        ({"load": math.nan}, "load", "a number in [0, 1]"),
        ({"load": "0.5"}, "load", "a number in [0, 1]"),
        ({"resources": {"cpu": -1}}, "resources.cpu", "a finite number >= 0"),
        ({"resources": {"mem": math.inf}}, "resources.mem", "a finite number >= 0"),
        ({"resources": {"mem": math.nan}}, "resources.mem", "a finite number >= 0"),
    ],
)
def test_bad_spec_arguments_raise_config_errors_naming_field_and_allowed(
    kwargs: dict[str, object], field: str, allowed: str
) -> None:
    args: dict[str, object] = {"node_id": "n1", "pool": "p", "max_jobs": 1}
    args.update(kwargs)
    with pytest.raises(ConfigError) as info:
        NodeSpec(**args)  # type: ignore[arg-type]
    assert info.value.field == field
    assert allowed in info.value.allowed
    assert field in str(info.value) and "allowed:" in str(info.value)


@pytest.mark.parametrize("amount", ["lots", None, [1]])
def test_a_non_numeric_resource_is_a_config_error_naming_the_resource(amount: object) -> None:
    # A resource amount that is not a number must be reported like any other bad field,
    # not as a bare ValueError/TypeError from float() that names nothing.
    with pytest.raises(ConfigError) as info:
        NodeSpec(node_id="n1", pool="p", max_jobs=1, resources={"cpu": amount})  # type: ignore[dict-item]
    assert info.value.field == "resources.cpu"


def test_labels_given_as_one_string_are_refused_not_split_into_characters() -> None:
    # frozenset("gpu") is {"g", "p", "u"}: a node would silently lose label "gpu".
    with pytest.raises(ConfigError) as info:
        NodeSpec(node_id="n1", pool="p", max_jobs=1, labels="gpu")  # type: ignore[arg-type]
    assert info.value.field == "labels"


@pytest.mark.parametrize("labels", [[""], ["gpu", 3], [None]])
def test_every_label_must_be_a_non_empty_string(labels: list[object]) -> None:
    with pytest.raises(ConfigError) as info:
        NodeSpec(node_id="n1", pool="p", max_jobs=1, labels=labels)  # type: ignore[arg-type]
    assert info.value.field == "labels"


def test_config_error_is_a_value_error_for_callers_that_catch_builtins() -> None:
    with pytest.raises(ValueError):
        NodeSpec(node_id="n1", pool="p", max_jobs=-1)


# ------------------------------------------------------------------- Requirements
def test_requirements_freeze_what_they_are_given() -> None:
    req = Requirements(resources={"cpu": 2}, labels=["gpu"])
    assert dict(req.resources) == {"cpu": 2.0}
    assert req.labels == frozenset({"gpu"})
    assert NO_REQUIREMENTS.labels == frozenset() and dict(NO_REQUIREMENTS.resources) == {}


# ---------------------------------------------------------------------- parse_event
def test_a_register_event_decodes_with_its_record() -> None:
    event = parse_event(json.dumps(good_event()))
    assert event == ChangeEvent(
        pool="p",
        seq=7,
        op="register",
        node_id="n1",
        version=7,
        record=parse_node_hash("p", "n1", good_hash()),
        ts_ms=1700000000123,
        epoch="abc-1.2",
    )


def test_bytes_events_decode_the_same() -> None:
    assert parse_event(json.dumps(good_event()).encode()) == parse_event(json.dumps(good_event()))


@pytest.mark.parametrize("op", sorted(REMOVAL_OPS))
def test_removal_events_carry_no_record_even_if_one_is_attached(op: str) -> None:
    doc = good_event(op=op)
    event = parse_event(json.dumps(doc))
    assert event.record is None and event.op == op
    del doc["rec"]
    assert parse_event(json.dumps(doc)).record is None


@pytest.mark.parametrize("op", sorted(EVENT_OPS - REMOVAL_OPS))
def test_every_non_removal_op_needs_a_record(op: str) -> None:
    assert parse_event(json.dumps(good_event(op=op))).record is not None
    doc = good_event(op=op)
    del doc["rec"]
    with pytest.raises(MalformedRecord) as info:
        parse_event(json.dumps(doc))
    assert (info.value.node_id, info.value.field) == ("n1", "rec")


def test_an_event_without_epoch_decodes_with_none() -> None:
    doc = good_event()
    del doc["epoch"]
    assert parse_event(json.dumps(doc)).epoch is None


@pytest.mark.parametrize(
    ("raw", "node", "field", "words"),
    [
        ("{not json", "?", "event", "not JSON"),
        (b"\xff\xfe", "?", "event", "not JSON"),
        ("[1, 2]", "?", "event", "list, not a JSON object"),
        ('"text"', "?", "event", "str, not a JSON object"),
        (json.dumps({k: v for k, v in good_event().items() if k != "node"}), "?", "node", "None"),
        (json.dumps(good_event(node="")), "?", "node", "not a node id"),
        (json.dumps(good_event(node=5)), "?", "node", "not a node id"),
        (json.dumps(good_event(pool=None)), "n1", "pool", "not a pool name"),
        (json.dumps(good_event(pool="")), "n1", "pool", "not a pool name"),
        (json.dumps(good_event(op="explode")), "n1", "op", "allowed:"),
        (json.dumps(good_event(seq=None)), "n1", "seq", "not an integer >= 0"),
        (json.dumps(good_event(seq="7")), "n1", "seq", "not an integer >= 0"),
        (json.dumps(good_event(seq=-1)), "n1", "seq", "not an integer >= 0"),
        (json.dumps(good_event(seq=True)), "n1", "seq", "not an integer >= 0"),
        (json.dumps(good_event(seq=7.5)), "n1", "seq", "not an integer >= 0"),
        (json.dumps(good_event(version="x")), "n1", "version", "not an integer >= 0"),
        (json.dumps(good_event(ts=None)), "n1", "ts", "not an integer >= 0"),
        (json.dumps(good_event(rec=[])), "n1", "rec", "list, not the node record"),
        (json.dumps(good_event(rec=good_hash(max_jobs="abc"))), "n1", "max_jobs", "not an integer"),
        (json.dumps(good_event(epoch=5)), "n1", "epoch", "not a string"),
    ],
)
def test_every_malformed_event_raises_naming_node_and_field(
    raw: str | bytes, node: str, field: str, words: str
) -> None:
    with pytest.raises(MalformedRecord) as info:
        parse_event(raw)
    assert (info.value.node_id, info.value.field) == (node, field)
    assert words in info.value.problem


def test_a_record_with_numbers_instead_of_strings_still_decodes() -> None:
    # cjson may hand back numbers; values are stringified before the strict parse.
    rec: dict[str, object] = dict(good_hash())
    rec.update(version=7, max_jobs=4, current_jobs=1, load=0.5)
    event = parse_event(json.dumps(good_event(rec=rec)))
    assert event.record is not None
    assert (event.record.version, event.record.max_jobs, event.record.load) == (7, 4, 0.5)


def test_long_garbage_is_truncated_in_the_message() -> None:
    with pytest.raises(MalformedRecord) as info:
        parse_event("x" * 500)
    assert len(info.value.problem) < 120


def test_statuses_and_ops_are_what_the_scripts_write() -> None:
    assert frozenset({"up", "draining"}) == STATUSES
    assert frozenset({"register", "heartbeat", "remove", "job_start", "job_finish", "reap"}) == EVENT_OPS
