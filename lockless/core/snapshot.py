"""Immutable node snapshots and the codec between them and Redis.

A :class:`NodeSnapshot` is what every placement decision reads. It is frozen, so a
reader holding one can never observe a half-applied update: the event applier builds a
new snapshot and swaps a reference, which is atomic for any reader in the same process.

The Redis side stores a node as a flat hash (DESIGN.md section 2). Numbers are decimal
strings; ``resources`` and ``labels`` are JSON so that the Lua scripts can decode them
with ``cjson``. A snapshot holds what placement reads, and no liveness: a node's last
heartbeat is its score in the pool's ``alive`` zset (read by admission and the reaper),
which quiet heartbeats refresh without touching the record. Fields the codec does not
know are ignored: the scripts' bookkeeping (named ``_...``, see ``lockless.redis.scripts``)
and the ``heartbeat_ms`` that records written before liveness left the hash still carry.

:func:`parse_node_hash` is strict: a record that does not decode raises
:class:`~lockless.errors.MalformedRecord` naming the node and the field, because serving
a guess (say ``max_jobs = 0``) would silently drain a node from placement.

Change events travel as one JSON document, identical on the pub/sub channel and in the
pool log; :func:`parse_event` turns one into a :class:`ChangeEvent`.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from lockless.errors import ConfigError, MalformedRecord

#: Statuses a node record may carry. Only ``up`` nodes are placement candidates.
STATUSES = frozenset({"up", "draining"})
#: Operations a change event may name.
EVENT_OPS = frozenset({"register", "heartbeat", "remove", "job_start", "job_finish", "reap"})
#: Ops after which the node no longer exists.
REMOVAL_OPS = frozenset({"remove", "reap"})

_EMPTY_RESOURCES: Mapping[str, float] = MappingProxyType({})


def _freeze_resources(resources: Mapping[str, float] | None) -> Mapping[str, float]:
    if not resources:
        return _EMPTY_RESOURCES
    return MappingProxyType({str(k): float(v) for k, v in resources.items()})


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSnapshot:
    """One node as Redis held it at ``version``. Never mutated; replaced whole."""

    node_id: str
    pool: str
    #: The pool ``seq`` of the last mutation that changed what placement reads.
    version: int
    #: ``up`` (placeable) or ``draining`` (keeps its jobs, takes no new ones).
    status: str
    max_jobs: int
    current_jobs: int
    #: Node-reported load in [0, 1]; a tie-breaker for least-loaded placement.
    load: float = 0.0
    #: Capacities the node offers, e.g. ``{"cpu": 16, "mem_gb": 64}``.
    resources: Mapping[str, float] = field(default_factory=lambda: _EMPTY_RESOURCES)
    #: Labels such as the modules a node offers.
    labels: frozenset[str] = frozenset()

    @property
    def free_slots(self) -> int:
        """Jobs this node can still admit (never negative)."""
        return max(0, self.max_jobs - self.current_jobs)

    @property
    def utilisation(self) -> float:
        """``current_jobs / max_jobs``; 1.0 for a node that admits nothing."""
        return self.current_jobs / self.max_jobs if self.max_jobs > 0 else 1.0

    def with_jobs(self, current_jobs: int, version: int) -> NodeSnapshot:
        """A copy with another job count and version (used for optimistic "assumed" updates)."""
        return NodeSnapshot(
            node_id=self.node_id,
            pool=self.pool,
            version=version,
            status=self.status,
            max_jobs=self.max_jobs,
            current_jobs=current_jobs,
            load=self.load,
            resources=self.resources,
            labels=self.labels,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSpec:
    """What a node declares when it registers. Validated when built."""

    node_id: str
    pool: str
    max_jobs: int
    resources: Mapping[str, float] = field(default_factory=lambda: _EMPTY_RESOURCES)
    labels: frozenset[str] = frozenset()
    status: str = "up"
    load: float = 0.0

    def __post_init__(self) -> None:
        _check_name("node_id", self.node_id)
        _check_name("pool", self.pool)
        if not isinstance(self.max_jobs, int) or isinstance(self.max_jobs, bool) or self.max_jobs < 0:
            raise ConfigError("max_jobs", self.max_jobs, "an integer >= 0")
        if self.status not in STATUSES:
            raise ConfigError("status", self.status, " | ".join(sorted(STATUSES)))
        if not (isinstance(self.load, int | float) and 0.0 <= self.load <= 1.0):
            raise ConfigError("load", self.load, "a number in [0, 1]")
        if isinstance(self.labels, str | bytes):
            # frozenset("gpu") would be {"g", "p", "u"}: the node would silently lose its label.
            raise ConfigError("labels", self.labels, "a collection of label strings, e.g. ['gpu']")
        if not all(isinstance(label, str) and label for label in self.labels):
            raise ConfigError("labels", self.labels, "non-empty strings")
        for name, amount in dict(self.resources).items():
            if (
                not isinstance(amount, int | float)
                or isinstance(amount, bool)
                or not math.isfinite(amount)
                or amount < 0
            ):
                raise ConfigError(f"resources.{name}", amount, "a finite number >= 0")
        object.__setattr__(self, "resources", _freeze_resources(self.resources))
        object.__setattr__(self, "labels", frozenset(self.labels))

    def to_hash_fields(self) -> dict[str, str]:
        """The hash fields a ``register`` script writes (version and job count are the script's)."""
        return {
            "status": self.status,
            "max_jobs": str(self.max_jobs),
            "load": repr(float(self.load)),
            "resources": json.dumps(dict(self.resources), sort_keys=True),
            "labels": json.dumps(sorted(self.labels)),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Requirements:
    """What a job needs from a node: at least these resources, and all these labels."""

    resources: Mapping[str, float] = field(default_factory=lambda: _EMPTY_RESOURCES)
    labels: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "resources", _freeze_resources(self.resources))
        object.__setattr__(self, "labels", frozenset(self.labels))


NO_REQUIREMENTS = Requirements()


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangeEvent:
    """One mutation of a pool, as published on its channel and appended to its log."""

    pool: str
    seq: int
    op: str
    node_id: str
    version: int
    #: The record after the change; ``None`` for removals.
    record: NodeSnapshot | None
    #: Redis server time (ms) at which the script ran.
    ts_ms: int
    #: The pool's epoch when the event was written (a changed epoch means Redis lost its data).
    epoch: str | None = None
    #: Redis server time (us) as the event was published: the start of propagation delay.
    #: ``None`` for events written before the field existed.
    ts_us: int | None = None


def _check_name(field_name: str, value: object) -> None:
    # Names end up inside keys and a `{pool}` hash tag: braces or colons would break the key scheme.
    if not isinstance(value, str) or not value or any(c in value for c in "{}: \t\r\n"):
        raise ConfigError(field_name, value, "a non-empty string without braces, colons or whitespace")


def _text(raw: Any) -> str:
    # surrogateescape: bytes that are not UTF-8 survive as lone surrogates, which every field
    # decoder then rejects as a MalformedRecord naming the field (never a UnicodeDecodeError).
    return raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes | bytearray) else str(raw)


def _is_utf8(text: str) -> bool:
    """False for text holding lone surrogates (undecodable bytes, or a JSON ``\\udcxx`` escape)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _int_field(node_id: str, fields: Mapping[str, str], name: str, *, minimum: int = 0) -> int:
    raw = fields.get(name)
    if raw is None:
        raise MalformedRecord(node_id, name, "is missing")
    try:
        value = int(raw)
    except ValueError:
        raise MalformedRecord(node_id, name, f"is {raw!r}, not an integer") from None
    if value < minimum:
        raise MalformedRecord(node_id, name, f"is {value}, below the minimum {minimum}")
    return value


@functools.lru_cache(maxsize=4096)
def _decode_resources(text: str) -> Mapping[str, float] | None:
    # Cached: a fleet has few distinct resource shapes, and every event carries one.
    # The frozen mapping is immutable, so sharing it between snapshots is safe.
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or not all(
        _is_utf8(k) and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        for k, v in value.items()
    ):
        return None
    return _freeze_resources(value)


@functools.lru_cache(maxsize=4096)
def _decode_labels(text: str) -> frozenset[str] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, list) or not all(isinstance(x, str) and _is_utf8(x) for x in value):
        return None
    return frozenset(value)


def parse_node_hash(pool: str, node_id: str, raw: Mapping[Any, Any]) -> NodeSnapshot:
    """Decode a node hash (``HGETALL`` reply, bytes or str) into a snapshot.

    Raises :class:`MalformedRecord` naming the node and the first bad field.
    This is on the event path (once per event per instance), so it avoids needless work.
    """
    if all(type(k) is str and type(v) is str for k, v in raw.items()):
        fields: Mapping[str, str] = raw
    else:
        fields = {_text(k): _text(v) for k, v in raw.items()}
    status = fields.get("status")
    if status not in STATUSES:
        raise MalformedRecord(node_id, "status", f"is {status!r}; allowed: {' | '.join(sorted(STATUSES))}")
    try:
        load = float(fields.get("load", "0"))
    except ValueError:
        raise MalformedRecord(node_id, "load", f"is {fields.get('load')!r}, not a number") from None
    if not math.isfinite(load):
        raise MalformedRecord(node_id, "load", f"is {load}, not finite")
    resources = _decode_resources(fields.get("resources", "{}"))
    if resources is None:
        raise MalformedRecord(
            node_id, "resources", f"is {fields.get('resources')!r}, not a JSON object of finite numbers"
        )
    labels = _decode_labels(fields.get("labels", "[]"))
    if labels is None:
        raise MalformedRecord(node_id, "labels", f"is {fields.get('labels')!r}, not a JSON list of strings")
    return NodeSnapshot(
        node_id=node_id,
        pool=pool,
        version=_int_field(node_id, fields, "version", minimum=1),
        status=status,
        max_jobs=_int_field(node_id, fields, "max_jobs"),
        current_jobs=_int_field(node_id, fields, "current_jobs"),
        load=load,
        resources=resources,
        labels=labels,
    )


def parse_event(raw: str | bytes) -> ChangeEvent:
    """Decode one change event document.

    Raises :class:`MalformedRecord` (node ``?`` when even the node id is unreadable).
    """
    try:
        doc = json.loads(raw)
    except ValueError:
        raise MalformedRecord("?", "event", f"is not JSON: {raw[:80]!r}") from None
    if not isinstance(doc, dict):
        raise MalformedRecord("?", "event", f"is {type(doc).__name__}, not a JSON object")
    node_id = doc.get("node")
    if not isinstance(node_id, str) or not node_id:
        raise MalformedRecord("?", "node", f"is {node_id!r}, not a node id")
    pool = doc.get("pool")
    if not isinstance(pool, str) or not pool:
        raise MalformedRecord(node_id, "pool", f"is {pool!r}, not a pool name")
    op = doc.get("op")
    if op not in EVENT_OPS:
        raise MalformedRecord(node_id, "op", f"is {op!r}; allowed: {' | '.join(sorted(EVENT_OPS))}")
    numbers = {}
    for name in ("seq", "version", "ts"):
        value = doc.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise MalformedRecord(node_id, name, f"is {value!r}, not an integer >= 0")
        numbers[name] = value
    record = None
    if op not in REMOVAL_OPS:
        rec = doc.get("rec")
        if not isinstance(rec, dict):
            raise MalformedRecord(node_id, "rec", f"is {type(rec).__name__}, not the node record")
        record = parse_node_hash(pool, node_id, rec)
    epoch = doc.get("epoch")
    if epoch is not None and not isinstance(epoch, str):
        raise MalformedRecord(node_id, "epoch", f"is {epoch!r}, not a string")
    ts_us = doc.get("ts_us")
    if ts_us is not None and not (isinstance(ts_us, str) and ts_us.isascii() and ts_us.isdigit()):
        raise MalformedRecord(node_id, "ts_us", f"is {ts_us!r}, not a string of digits")
    return ChangeEvent(
        epoch=epoch,
        ts_us=int(ts_us) if ts_us is not None else None,
        pool=pool,
        seq=numbers["seq"],
        op=op,
        node_id=node_id,
        version=numbers["version"],
        record=record,
        ts_ms=numbers["ts"],
    )
