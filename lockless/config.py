"""Configuration: nested frozen dataclasses, validated when built.

Each field carries a docstring (what it is, its unit). :func:`RegistryConfig.from_mapping`
builds the tree from plain data (a TOML table, say) and rejects unknown or bad fields
with a :class:`~lockless.errors.ConfigError` that names the dotted field and what is
allowed, so a typo in an experiment file fails loudly instead of running defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lockless.core.modes import ModeThresholds
from lockless.core.validate import require_choice, require_int, require_number
from lockless.errors import ConfigError

POLICIES = ("power_of_two", "least_loaded")
STALE_READ_POLICIES = ("serve", "refuse")
#: The URL schemes ``redis.url`` may have (``+sentinel``: the hosts are sentinels; ``+cluster``: seeds
#: of a Redis Cluster, which select the cluster client; see RedisConfig.url).
URL_SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+sentinel://",
    "rediss+sentinel://",
    "redis+cluster://",
    "rediss+cluster://",
)
#: Whether the server's certificate must verify (``ssl.CERT_REQUIRED`` / ``CERT_OPTIONAL`` / ``CERT_NONE``).
TLS_VERIFY_MODES = ("required", "optional", "none")


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    require_number(name, value, strict=not allow_zero)


def _count(name: str, value: int, minimum: int = 1) -> None:
    require_int(name, value, minimum=minimum)


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisConfig:
    """How to reach Redis (DESIGN.md section 9)."""

    url: str = "redis://127.0.0.1:6379/0"
    """``redis://[user:password@]host:port/db`` or ``rediss://`` for TLS (ACL users work as in redis-py);
    ``unix:///path/redis.sock``; through Sentinel,
    ``redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]`` (the hosts are
    the sentinels; ``rediss+sentinel://`` for TLS to sentinels and data nodes alike); or a Redis
    Cluster: ``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://`` for TLS), any
    nodes of it as seeds; the slot map is read from them (``lockless.redis.cluster``)."""
    namespace: str = "lockless"
    """Prefix of every key, so tests and experiments sharing a server never collide."""
    socket_timeout_s: float = 0.5
    """Per-command read timeout. Always set: without it a frozen server hangs callers forever."""
    connect_timeout_s: float = 0.5
    """TCP connect timeout."""
    max_connections: int = 16
    """Size of the bounded, blocking connection pool (on a cluster: of each primary's pool)."""
    pool_timeout_s: float = 0.5
    """How long a command may wait for a free pooled connection (counted in its latency)."""
    retries: int = 1
    """Retries on a connection error. redis-py's default (several, with backoff) hides outages; every
    script is idempotent, so one retry (which repairs a stale pooled socket after a restart) is safe."""
    log_max_len: int = 10_000
    """Approximate cap (``XADD MAXLEN ~``) of each pool's change log; gaps older than this need a relist."""
    wait_replicas: int = 0
    """After each write (a script call, or a pipelined batch of them), ``WAIT`` on the same connection
    until this many replicas acknowledged it (0: off). Replication is asynchronous: a write the primary
    acknowledged can be lost if it fails over; with this it is on a replica first. Writes whose WAIT
    ends short of this count are still done (the primary ran them) and are counted in the
    ``writes_unreplicated`` metric."""
    wait_timeout_ms: int = 100
    """How long ``WAIT`` may hold a write (``wait_replicas`` > 0), in ms; counted in its latency. The
    command read timeout is then ``socket_timeout_s`` plus this (a held reply is not a dead server)."""
    tls_ca_file: str | None = None
    """PEM bundle of the CA(s) that sign the server's certificate (a private CA); None: the system CAs.
    When None, the URL's ``ssl_ca_certs`` query parameter applies. TLS needs a ``rediss://`` URL."""
    tls_cert_file: str | None = None
    """Client certificate (PEM) for mutual TLS, with ``tls_key_file`` (or the URL's ``ssl_certfile``)."""
    tls_key_file: str | None = None
    """Private key (PEM) of ``tls_cert_file`` (or the URL's ``ssl_keyfile``)."""
    tls_verify: str | None = None
    """Whether the server certificate must verify: ``required`` (default), ``optional`` or ``none``
    (or the URL's ``ssl_cert_reqs``)."""
    tls_check_hostname: bool | None = None
    """Refuse a server certificate not issued for the host connected to (default true; or the URL's
    ``ssl_check_hostname``)."""
    sentinels: tuple[str, ...] = ()
    """``host:port`` of each Sentinel (port 26379 if omitted): the primary is discovered through them,
    under ``sentinel_service``, and followed after a failover. ``url`` (``redis://`` or ``rediss://``)
    still gives the credentials, the db and TLS; its host and port are not used. (Or write the
    sentinels in a ``redis+sentinel://`` URL instead.)"""
    sentinel_service: str | None = None
    """The name the sentinels monitor the primary under (``sentinel monitor <name> ...``)."""

    def __post_init__(self) -> None:
        if not self.url.startswith(URL_SCHEMES):
            raise ConfigError("redis.url", self.url, "a " + ", ".join(URL_SCHEMES) + " URL")
        tls_fields = ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_verify", "tls_check_hostname")
        for name in tls_fields:
            value = getattr(self, name)
            if value is not None and not self.url.startswith(("rediss://", "rediss+sentinel://", "rediss+cluster://")):
                allowed = f"unset, or a rediss:// URL (redis.url is {self.url!r})"
                raise ConfigError(f"redis.{name}", value, allowed)
        object.__setattr__(self, "sentinels", tuple(self.sentinels))
        if bool(self.sentinels) != (self.sentinel_service is not None):
            field = "redis.sentinel_service" if self.sentinels else "redis.sentinels"
            raise ConfigError(field, getattr(self, field[6:]), "set together with the other")
        if self.sentinels and not self.url.startswith(("redis://", "rediss://")):
            allowed = "a redis:// or rediss:// URL (for credentials, db and TLS) with redis.sentinels"
            raise ConfigError("redis.url", self.url, allowed)
        if self.sentinel_service is not None and not (
            isinstance(self.sentinel_service, str) and self.sentinel_service.strip()
        ):
            raise ConfigError("redis.sentinel_service", self.sentinel_service, "a non-empty name")
        if self.tls_verify is not None:
            require_choice("redis.tls_verify", self.tls_verify, TLS_VERIFY_MODES)
        if self.tls_check_hostname is not None and not isinstance(self.tls_check_hostname, bool):
            raise ConfigError("redis.tls_check_hostname", self.tls_check_hostname, "true | false")
        for name in ("socket_timeout_s", "connect_timeout_s", "pool_timeout_s"):
            _positive(f"redis.{name}", getattr(self, name))
        _count("redis.max_connections", self.max_connections)
        _count("redis.retries", self.retries, minimum=0)
        _count("redis.log_max_len", self.log_max_len, minimum=10)
        _count("redis.wait_replicas", self.wait_replicas, minimum=0)
        _count("redis.wait_timeout_ms", self.wait_timeout_ms, minimum=1)

    @property
    def cluster(self) -> bool:
        """True for a ``redis+cluster://`` or ``rediss+cluster://`` URL: the cluster client is used."""
        return self.url.startswith(("redis+cluster://", "rediss+cluster://"))


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeLifecycleConfig:
    """Liveness and heartbeat semantics, shared by writers and the reaper."""

    dead_after_s: float = 15.0
    """A node whose last heartbeat is older than this is dead: not admitted to, and reaped."""
    ttl_s: float = 60.0
    """TTL refreshed on every write of a node key: a backstop if no reaper runs. Must exceed dead_after_s."""
    load_tolerance: float = 0.1
    """A heartbeat whose load moved less than this is quiet: liveness only, no version, no event."""
    publish_every_heartbeat: bool = False
    """The seed's behaviour: every heartbeat a new version and an event (kept for comparison runs)."""
    reap_grace_s: float = 10.0
    """After recovering from LOCAL_ONLY, the reaper waits this long: nodes could not heartbeat either."""
    reap_interval_s: float = 0.0
    """How often this instance runs the reaper (0: it does not; any number of instances may)."""

    def __post_init__(self) -> None:
        _positive("nodes.dead_after_s", self.dead_after_s)
        _positive("nodes.ttl_s", self.ttl_s)
        if self.ttl_s <= self.dead_after_s:
            raise ConfigError(
                "nodes.ttl_s", self.ttl_s, f"a number > nodes.dead_after_s ({self.dead_after_s})"
            )
        require_number("nodes.load_tolerance", self.load_tolerance, maximum=1.0, allowed="a number in [0, 1]")
        _positive("nodes.reap_grace_s", self.reap_grace_s, allow_zero=True)
        _positive("nodes.reap_interval_s", self.reap_interval_s, allow_zero=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheConfig:
    """The L1 cache of one instance (DESIGN.md section 4)."""

    entry_ttl_s: float = 300.0
    """Expiry of an L1 entry that no event refreshed; an expired entry is re-read from Redis on access."""
    ttl_jitter: float = 0.2
    """Expiry is spread by +- this fraction so entries filled together do not expire together."""
    negative_ttl_s: float = 1.0
    """How long a miss on a node that does not exist in Redis is remembered."""
    policy: str = "power_of_two"
    """Default selection policy: ``power_of_two`` or ``least_loaded``."""
    staleness_bound_s: float = 30.0
    """Reads whose data is older than this (time since last heard from Redis) are past the bound."""
    stale_reads: str = "serve"
    """Past the bound: ``serve`` (marked stale) or ``refuse`` (raise StaleRead)."""
    version_check_budget_s: float = 0.05
    """L2_ONLY: time allowed to check an L1 entry against Redis before serving L1 anyway."""
    seed: int | None = None
    """Seed for selection randomness and jitter (None: from the OS)."""

    def __post_init__(self) -> None:
        _positive("cache.entry_ttl_s", self.entry_ttl_s)
        require_number("cache.ttl_jitter", self.ttl_jitter, maximum=1.0, allowed="a number in [0, 1)")
        if self.ttl_jitter == 1.0:
            raise ConfigError("cache.ttl_jitter", self.ttl_jitter, "a number in [0, 1)")
        _positive("cache.negative_ttl_s", self.negative_ttl_s, allow_zero=True)
        require_choice("cache.policy", self.policy, POLICIES)
        _positive("cache.staleness_bound_s", self.staleness_bound_s)
        require_choice("cache.stale_reads", self.stale_reads, STALE_READ_POLICIES)
        _positive("cache.version_check_budget_s", self.version_check_budget_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriberConfig:
    """The event subscription and its liveness check (DESIGN.md section 5)."""

    ping_interval_s: float = 0.5
    """The subscriber PINGs on its own connection this often..."""
    pong_timeout_s: float = 0.5
    """...and declares the link dead if the PONG takes longer than this."""
    reconnect_base_s: float = 0.05
    """First reconnect delay; doubles per failure (with full jitter) up to reconnect_max_s."""
    reconnect_max_s: float = 2.0
    """Cap of the reconnect backoff."""
    catchup_batch: int = 1000
    """Log entries read per XRANGE during catch-up."""

    def __post_init__(self) -> None:
        for name in ("ping_interval_s", "pong_timeout_s", "reconnect_base_s", "reconnect_max_s"):
            _positive(f"subscriber.{name}", getattr(self, name))
        _count("subscriber.catchup_batch", self.catchup_batch)


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalConfig:
    """The LOCAL_ONLY write journal."""

    capacity: int = 100_000
    """Entries held at most; past it writes fail with JournalFull (reported, never silently dropped).
    On a cluster each pool has a journal of its own, each of this capacity."""

    def __post_init__(self) -> None:
        _count("journal.capacity", self.capacity)


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistryConfig:
    """Everything one registry instance needs. Build with keywords or :meth:`from_mapping`."""

    pools: tuple[str, ...] = ("default",)
    """Pools this instance serves (subscribes to and caches)."""
    redis: RedisConfig = field(default_factory=RedisConfig)
    nodes: NodeLifecycleConfig = field(default_factory=NodeLifecycleConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    subscriber: SubscriberConfig = field(default_factory=SubscriberConfig)
    modes: ModeThresholds = field(default_factory=ModeThresholds)
    journal: JournalConfig = field(default_factory=JournalConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pools", tuple(self.pools))
        if not self.pools or len(set(self.pools)) != len(self.pools):
            raise ConfigError("pools", self.pools, "a non-empty list of distinct pool names")
        for pool in self.pools:
            if not isinstance(pool, str) or not pool or any(c in pool for c in "{}: \t\r\n"):
                raise ConfigError("pools", pool, "names without braces, colons or whitespace")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, prefix: str = "") -> RegistryConfig:
        """Build from plain data such as a parsed TOML table; unknown keys are errors."""
        return _build(cls, data, prefix)


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(prefix.rstrip(".") or "config", data, "a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}", data[unknown[0]], f"one of the keys {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = (
            fields[name].default_factory if fields[name].default_factory is not dataclasses.MISSING else None
        )
        sub = default() if default is not None else None
        if dataclasses.is_dataclass(sub):
            kwargs[name] = _build(type(sub), value, f"{prefix}{name}.")
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(
            prefix.rstrip(".") or "config", data, f"fields of the right types ({exc})"
        ) from None
