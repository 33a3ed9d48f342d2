"""``redis+sentinel://`` URLs: redis-py does not parse them, so this does.

redis-py's ``from_url`` accepts ``redis://``, ``rediss://`` and ``unix://`` only
(``redis/asyncio/connection.py`` ``parse_url``: "Redis URL must specify one of the
following schemes"); a Sentinel deployment is reached by building
``redis.asyncio.sentinel.Sentinel`` by hand. The form below is the one other projects
converged on (redis-sentinel-url, RedisVL, docket, prefect-redis)::

    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db][?option=value...]
    rediss+sentinel://...     TLS to the sentinels and to the data nodes

- The hosts are the sentinels (port 26379 when omitted; IPv6 as ``[::1]:26379``).
- ``user``/``password`` authenticate to the data nodes, as in a ``redis://`` URL.
  ``sentinel_username``/``sentinel_password`` query options authenticate to the
  sentinels (their ACLs are separate, and a URL has one userinfo).
- Every other query option is a redis-py connection option, typed by redis-py's own
  URL parser (``socket_timeout=0.5``, ``ssl_ca_certs=/path/ca.pem``, ...); the socket
  and ``ssl_*`` ones also apply to the sentinel connections.

Written for the library's connection factory to adopt (it belongs in ``lockless/redis``
once that exists); :class:`sim.sentinel_server.SentinelGroup` produces such URLs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from redis.asyncio.connection import parse_url

from lockless import ConfigError

__all__ = ["SCHEMES", "SentinelUrl", "parse_sentinel_url"]

SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379
_FORM = "redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db][?options]"
# Options for the sentinel connections only; never passed to the data nodes.
_SENTINEL_ONLY = ("sentinel_username", "sentinel_password")


@dataclass(frozen=True, kw_only=True)
class SentinelUrl:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    """``(host, port)`` of each sentinel, in the URL's order."""
    service_name: str
    """The name the sentinels monitor the primary under (``sentinel monitor <name> ...``)."""
    db: int = 0
    username: str | None = None
    """Data-node ACL user (the URL's userinfo)."""
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    """``rediss+sentinel``: TLS to sentinels and data nodes."""
    options: dict[str, str] = field(default_factory=dict)
    """The query options as written (strings), ``sentinel_*`` ones included."""

    def connection_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Sentinel(..., **kw)`` / ``master_for``: how to reach the data nodes."""
        query = {k: v for k, v in self.options.items() if k not in _SENTINEL_ONLY}
        typed = dict(
            parse_url(f"{'rediss' if self.tls else 'redis'}://localhost/{self.db}?{urlencode(query)}")
        )
        typed.pop("connection_class", None)  # the Sentinel pool picks its own (SSL when ssl=True)
        typed.pop("host", None)
        kwargs: dict[str, Any] = {**typed, "db": self.db}
        if self.username is not None:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        if self.tls:
            kwargs["ssl"] = True
        return kwargs

    def sentinel_kwargs(self) -> dict[str, Any]:
        """``sentinel_kwargs`` for ``Sentinel``: socket and TLS options, and the sentinel credentials."""
        shared = {k: v for k, v in self.connection_kwargs().items() if k.startswith(("socket_", "ssl"))}
        if "sentinel_username" in self.options:
            shared["username"] = self.options["sentinel_username"]
        if "sentinel_password" in self.options:
            shared["password"] = self.options["sentinel_password"]
        return shared


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Parse ``url`` (see the module docstring); raise :class:`ConfigError` naming what is wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        _fail(url, f"scheme must be one of {', '.join(s + '://' for s in SCHEMES)}")
    # urlsplit cannot read a comma-separated host list (its .port fails), so split by hand
    # and let urlsplit handle only the path and query.
    netloc, _, tail = rest.partition("/")
    parts = urlsplit(f"x://h/{tail}")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_host_port(url, item) for item in hostlist.split(","))
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if not segments:
        _fail(url, "the path must name the service: /service_name[/db]")
    if len(segments) > 2:
        _fail(url, f"the path has {len(segments)} segments; allowed: /service_name or /service_name/db")
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            _fail(url, f"db must be a non-negative integer, got {segments[1]!r}")
        db = int(segments[1])
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    return SentinelUrl(
        sentinels=sentinels,
        service_name=segments[0],
        db=db,
        username=username,
        password=password,
        tls=scheme == "rediss+sentinel",
        options=options,
    )


def _host_port(url: str, item: str) -> tuple[str, int]:
    if not item:
        _fail(url, "an empty sentinel address (check the commas)")
    if item.startswith("["):  # [IPv6]:port
        host, bracket, after = item[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            _fail(url, f"bad IPv6 sentinel address {item!r}; allowed: [addr] or [addr]:port")
        port_text = after[1:]
    else:
        host, _, port_text = item.partition(":")
    if not host:
        _fail(url, f"sentinel address {item!r} has no host")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        _fail(url, f"sentinel address {item!r}: port must be 1-65535")
    return host, int(port_text)


def _fail(url: str, problem: str) -> NoReturn:
    raise ConfigError("url", _redact(url), f"{_FORM} ({problem})")


def _redact(url: str) -> str:
    # Errors are logged: never echo a password.
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return f"{scheme}{sep}{userinfo}{at}{hosts}{slash}{tail}"
