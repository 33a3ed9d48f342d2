"""The one exception tree of the library.

Everything the library raises on purpose derives from :class:`LocklessError`::

    LocklessError
     +-- ConfigError            a configuration value is out of range; names the field and what is allowed
     +-- MalformedRecord        a node hash or change event in Redis does not decode; names node and field
     +-- UnknownPool            an operation named a pool this instance does not serve
     +-- RedisUnavailable       Redis could not be reached or did not answer in time
     |    +-- TlsError          the TLS handshake failed; names the TLS setting involved
     |    +-- WriteNotReplicated  a write's WAIT saw fewer replicas than redis.wait_replicas
     +-- StaleRead              a read would serve data older than the configured staleness bound
     +-- JournalFull            LOCAL_ONLY write journal is at its bound; the write was not recorded

Third-party errors (redis-py's, ``OSError``, ``ssl``'s) are translated in the Redis adapter
only: commands in ``lockless.redis.client.guarded``, connection set-up in
``lockless.redis.connection``, always with ``raise ... from exc`` so the cause stays visible.
No class here reuses a builtin's name (redis-py's ``ConnectionError`` does, and it bites).
"""

from __future__ import annotations


class LocklessError(Exception):
    """Base class for every error the library raises on purpose."""


class ConfigError(LocklessError, ValueError):
    """A configuration field has a value outside what is allowed."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}: got {value!r}; allowed: {allowed}")


class MalformedRecord(LocklessError):
    """A node record or change event read from Redis could not be decoded."""

    def __init__(self, node_id: str, field: str, problem: str) -> None:
        self.node_id = node_id
        self.field = field
        self.problem = problem
        super().__init__(f"malformed record for node {node_id!r}: field {field!r} {problem}")


class UnknownPool(LocklessError, KeyError):
    """The pool is not one this registry instance serves."""

    def __init__(self, pool: str, served: tuple[str, ...]) -> None:
        self.pool = pool
        self.served = served
        super().__init__(f"unknown pool {pool!r}; this instance serves: {', '.join(served) or '(none)'}")

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return self.args[0]


class RedisUnavailable(LocklessError):
    """Redis could not be reached, refused the command, or did not answer within the timeout."""


class TlsError(RedisUnavailable):
    """TLS to the server could not be established; the message names the setting involved
    (CA file, client certificate, hostname check)."""


class StaleRead(LocklessError):
    """The freshest data this instance has is older than the configured staleness bound."""

    def __init__(self, age_s: float, bound_s: float) -> None:
        self.age_s = age_s
        self.bound_s = bound_s
        super().__init__(
            f"last sync with Redis was {age_s:.3f} s ago, over the staleness bound of {bound_s:.3f} s "
            "(cache.stale_reads = 'refuse')"
        )


class JournalFull(LocklessError):
    """The LOCAL_ONLY write journal holds its maximum number of entries; the write was not journaled."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        super().__init__(f"write journal is full ({capacity} entries, journal.capacity); write rejected")


class WriteNotReplicated(RedisUnavailable):
    """A write ran on the primary, but its ``WAIT`` saw fewer replicas than ``redis.wait_replicas``
    within ``redis.wait_timeout_ms``: it would be lost if the primary failed over now.

    Like a timeout, the outcome is unknown to the caller: the write may survive or not. The
    write is not acknowledged, and Redis itself answered, so the instance's mode does not
    degrade (a shard without a live replica refuses acknowledgements, not service)."""

    def __init__(self, what: str, replicas: int, wanted: int, timeout_ms: int) -> None:
        self.replicas = replicas
        self.wanted = wanted
        super().__init__(
            f"{what}: WAIT saw {replicas} of {wanted} replica(s) within {timeout_ms} ms "
            "(redis.wait_replicas); the primary ran the write, which a failover now would lose"
        )
