"""Properties of the snapshot codec (pure): round trips, and nothing but MalformedRecord on bad input.

The example-based cases live in ``test_snapshot.py``; here Hypothesis generates specs,
records and events as the Lua scripts write them, and garbage of every JSON shape, and
checks what must hold for all of them (DESIGN.md sections 2, 3 and 10):

* a spec written by ``register`` (``NodeSpec.to_hash_fields`` plus the script's own
  fields) decodes back to the same values, from ``str`` or ``bytes`` replies;
* an event document as ``emit`` encodes it decodes to the same event;
* a record or event with one field spoiled raises :class:`MalformedRecord` naming that
  field; arbitrary JSON or bytes raise :class:`MalformedRecord` and nothing else (the
  event applier must never crash on a bad event).
"""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from lockless.core.snapshot import (
    EVENT_OPS,
    REMOVAL_OPS,
    STATUSES,
    NodeSpec,
    parse_event,
    parse_node_hash,
)
from lockless.errors import MalformedRecord

# Names as the key scheme allows them: no braces, colons or whitespace.
names = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters="{}:"),
    min_size=1,
    max_size=12,
)
amounts = st.floats(min_value=0, max_value=1e12, allow_nan=False) | st.integers(0, 10**9)
specs = st.builds(
    NodeSpec,
    node_id=names,
    pool=names,
    max_jobs=st.integers(0, 10**6),
    resources=st.dictionaries(names, amounts, max_size=4),
    labels=st.frozensets(st.text(min_size=1, max_size=8), max_size=4),
    status=st.sampled_from(sorted(STATUSES)),
    load=st.floats(0.0, 1.0),
)
versions = st.integers(1, 2**53)
counts = st.integers(0, 10**6)
stamps = st.integers(0, 2**53)


def written(spec: NodeSpec, version: int, current: int, armed_ms: int) -> dict[str, str]:
    """The hash ``register`` leaves in Redis for ``spec`` (the script adds these three fields;
    ``_ttl_at`` is its own bookkeeping, which readers ignore)."""
    fields = spec.to_hash_fields()
    fields.update(version=str(version), current_jobs=str(current), _ttl_at=str(armed_ms))
    return fields


@given(specs, versions, counts, stamps, st.booleans())
def test_a_registered_spec_decodes_to_what_it_declared(
    spec: NodeSpec, version: int, current: int, armed_ms: int, as_bytes: bool
) -> None:
    raw: dict[Any, Any] = written(spec, version, current, armed_ms)
    if as_bytes:  # a client without decode_responses
        raw = {k.encode(): v.encode() for k, v in raw.items()}
    node = parse_node_hash(spec.pool, spec.node_id, raw)
    assert (node.node_id, node.pool, node.version) == (spec.node_id, spec.pool, version)
    assert (node.status, node.max_jobs, node.current_jobs) == (spec.status, spec.max_jobs, current)
    assert node.load == spec.load
    assert dict(node.resources) == {k: float(v) for k, v in spec.resources.items()}
    assert node.labels == spec.labels
    # Encoding is canonical: the same spec always writes the same hash (so no false "changes").
    assert (
        spec.to_hash_fields()
        == NodeSpec(
            node_id=spec.node_id,
            pool=spec.pool,
            max_jobs=spec.max_jobs,
            resources=dict(reversed(list(spec.resources.items()))),
            labels=set(spec.labels),
            status=spec.status,
            load=spec.load,
        ).to_hash_fields()
    )


# One spoiled field: (field, bad value). Each must be refused, naming that field.
spoiled = st.one_of(
    st.tuples(st.just("version"), st.sampled_from(["", "0", "-3", "1.5", "x", "1e3"])),
    st.tuples(st.just("max_jobs"), st.sampled_from(["", "-1", "two", "3.0"])),
    st.tuples(st.just("current_jobs"), st.sampled_from(["", "-1", "nan", "1.0"])),
    st.tuples(st.just("status"), st.text(max_size=8).filter(lambda s: s not in STATUSES)),
    st.tuples(st.just("load"), st.sampled_from(["", "heavy", "nan", "inf", "-inf"])),
    st.tuples(
        st.just("resources"),
        st.sampled_from(
            ["", "[]", "{", '{"cpu": "8"}', '{"cpu": true}', '{"cpu": NaN}', '{"cpu": null}', "3"]
        ),
    ),
    st.tuples(st.just("labels"), st.sampled_from(["", "{}", '"gpu"', "[1]", "[null]", "[", '{"a": 1}'])),
)


@given(
    specs,
    versions,
    counts,
    stamps,
    spoiled
    | st.tuples(
        st.sampled_from(["version", "max_jobs", "current_jobs", "status"]), st.none()
    ),
)
def test_a_spoiled_or_missing_field_is_refused_naming_it(
    spec: NodeSpec, version: int, current: int, armed_ms: int, damage: tuple[str, str | None]
) -> None:
    field, bad = damage
    raw = written(spec, version, current, armed_ms)
    if bad is None:
        del raw[field]  # required fields; load, resources and labels have defaults
    else:
        raw[field] = bad
    try:
        parse_node_hash(spec.pool, spec.node_id, raw)
    except MalformedRecord as exc:
        assert (exc.node_id, exc.field) == (spec.node_id, field)
    else:
        raise AssertionError(f"{field}={bad!r} was accepted")


def emitted(op: str, spec: NodeSpec, seq: int, ts: int, epoch: str | None, current: int) -> dict[str, Any]:
    """The document ``emit`` publishes (and appends to the log): numbers as numbers, the record as strings."""
    doc: dict[str, Any] = {
        "seq": seq,
        "op": op,
        "pool": spec.pool,
        "node": spec.node_id,
        "version": seq,
        "ts": ts,
    }
    if epoch is not None:  # cjson leaves a nil out
        doc["epoch"] = epoch
    if op not in REMOVAL_OPS:
        doc["rec"] = written(spec, seq, current, ts)
    return doc


@given(
    st.sampled_from(sorted(EVENT_OPS)),
    specs,
    versions,
    stamps,
    st.none() | st.text(min_size=1, max_size=20),
    counts,
    st.booleans(),
)
def test_an_emitted_event_decodes_to_the_same_event(
    op: str, spec: NodeSpec, seq: int, ts: int, epoch: str | None, current: int, as_bytes: bool
) -> None:
    text = json.dumps(emitted(op, spec, seq, ts, epoch, current))
    event = parse_event(text.encode() if as_bytes else text)
    assert (event.op, event.pool, event.node_id) == (op, spec.pool, spec.node_id)
    assert (event.seq, event.version, event.ts_ms, event.epoch) == (seq, seq, ts, epoch)
    if op in REMOVAL_OPS:
        assert event.record is None
    else:
        assert event.record is not None
        assert event.record == parse_node_hash(spec.pool, spec.node_id, written(spec, seq, current, ts))


event_damage = st.one_of(
    st.tuples(st.sampled_from(["seq", "version", "ts"]), st.sampled_from([-1, 1.5, "7", None, True, [], {}])),
    st.tuples(st.just("op"), st.text(max_size=10).filter(lambda s: s not in EVENT_OPS) | st.integers()),
    st.tuples(st.just("pool"), st.sampled_from(["", None, 3, [], {}])),
    st.tuples(st.just("epoch"), st.sampled_from([3, [], {}, True])),
)


@given(st.sampled_from(sorted(EVENT_OPS)), specs, versions, stamps, event_damage)
def test_a_spoiled_event_field_is_refused_naming_it(
    op: str, spec: NodeSpec, seq: int, ts: int, damage: tuple[str, Any]
) -> None:
    field, bad = damage
    doc = emitted(op, spec, seq, ts, "e-1", 0)
    doc[field] = bad
    try:
        parse_event(json.dumps(doc))
    except MalformedRecord as exc:
        assert exc.field == field
        assert exc.node_id == spec.node_id
    else:
        raise AssertionError(f"{field}={bad!r} was accepted")


@given(specs, versions, stamps, st.sampled_from(sorted(EVENT_OPS - REMOVAL_OPS)), spoiled)
def test_an_event_carrying_a_spoiled_record_is_refused_naming_the_record_field(
    spec: NodeSpec, seq: int, ts: int, op: str, damage: tuple[str, str]
) -> None:
    field, bad = damage
    doc = emitted(op, spec, seq, ts, "e-1", 0)
    doc["rec"][field] = bad
    try:
        parse_event(json.dumps(doc))
    except MalformedRecord as exc:
        assert (exc.node_id, exc.field) == (spec.node_id, field)
    else:
        raise AssertionError(f"rec.{field}={bad!r} was accepted")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=5),
    max_leaves=20,
)
# Documents that look like events: the right keys with values of any shape.
event_like = st.fixed_dictionaries(
    {},
    optional={key: json_values for key in ("seq", "op", "pool", "node", "version", "ts", "epoch", "rec")},
)


@given(json_values | event_like)
def test_any_json_is_an_event_or_a_malformed_record(doc: Any) -> None:
    """Whatever arrives on a channel, the applier gets an event or MalformedRecord, never a crash."""
    try:
        event = parse_event(json.dumps(doc))
    except MalformedRecord:
        return
    assert event.op in EVENT_OPS and event.seq >= 0 and event.version >= 0
    assert (event.record is None) == (event.op in REMOVAL_OPS)


@given(st.binary(max_size=64) | st.text(max_size=64))
def test_any_bytes_are_an_event_or_a_malformed_record(raw: bytes | str) -> None:
    with contextlib.suppress(MalformedRecord):
        parse_event(raw)


@given(st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=10))
def test_any_hash_is_a_snapshot_or_a_malformed_record(raw: dict[str, str]) -> None:
    try:
        node = parse_node_hash("p", "n", raw)
    except MalformedRecord:
        return
    assert node.version >= 1 and node.max_jobs >= 0 and node.current_jobs >= 0
    assert math.isfinite(node.load)


@given(
    st.sampled_from(["status", "load", "resources", "labels", "version"]),
    st.binary(min_size=1, max_size=8).filter(lambda b: not _decodes(b)),
)
def test_undecodable_bytes_in_a_hash_are_a_malformed_record(field: str, junk: bytes) -> None:
    """``parse_node_hash`` accepts bytes replies, but ``_text`` lets UnicodeDecodeError escape.

    lockless/core/snapshot.py ``_text`` decodes with ``bytes.decode()``; a value that is not
    UTF-8 raises UnicodeDecodeError instead of MalformedRecord naming the field, so callers
    that handle malformed records (relist skips them) are bypassed. Fix: catch
    UnicodeDecodeError per field and raise MalformedRecord(node_id, field, ...).
    (``test_regressions.py::test_a_record_that_is_not_utf8_is_skipped_not_fatal`` shows the
    Redis side, where the store's ``decode_responses=True`` client fails the same way.)
    """
    raw = {
        k.encode(): v.encode()
        for k, v in written(NodeSpec(node_id="n", pool="p", max_jobs=1), 1, 0, 0).items()
    }
    raw[field.encode()] = junk
    try:
        parse_node_hash("p", "n", raw)
    except MalformedRecord as exc:
        assert exc.field == field
    else:
        raise AssertionError("accepted")


def _decodes(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True
