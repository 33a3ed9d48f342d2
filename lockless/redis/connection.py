"""One connection factory for commands and for the event stream (DESIGN.md section 9).

An instance talks to Redis over two kinds of connection: redis-py's pool (commands,
scripts, reads) and the subscriber's own bare RESP stream (``subscriber.py``). Both are
made here, from one :class:`Endpoint` parsed once from the URL and the config, and, for
TLS, from one ``ssl.SSLContext`` object that both use: a private CA, a client
certificate, the verify mode and hostname checking cannot differ between the two paths.

TLS settings come from the config fields (``redis.tls_*``) or, when a field is not set,
from the URL's query in redis-py's spelling (``rediss://host:6380/0?ssl_ca_certs=ca.pem``):
``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``,
``ssl_check_hostname``. Unlike redis-py before 8, hostnames are checked by default.

:meth:`ConnectionFactory.check` opens one stream and PINGs before anything else runs, so
a TLS or AUTH problem at start is one clear error naming TLS and the setting involved
(:class:`~lockless.errors.TlsError`), not a subscription that never comes up. The setting
is named as the user wrote it (``redis.tls_ca_file``, or ``ssl_ca_certs in redis.url``).
Connect and handshake are separate steps, so "nothing listens" (RedisUnavailable), "the
port does not answer TLS" and "the certificate did not verify" read differently. A server
that requires a client certificate refuses one missing either with the TLS alert or with a
bare reset after the handshake (Redis 7.0 mostly resets): both name ``tls_cert_file``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from lockless.config import TLS_VERIFY_MODES, RedisConfig
from lockless.errors import ConfigError, RedisUnavailable, TlsError
from lockless.redis.packing import with_c_packing

_VERIFY = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
#: X509_V_ERR_HOSTNAME_MISMATCH: the certificate is valid, but not for the host connected to.
_HOSTNAME_MISMATCH = 62


#: Config field -> the URL query parameter (redis-py's spelling) that sets it when the field is unset.
URL_SPELLING = {
    "tls_ca_file": "ssl_ca_certs",
    "tls_cert_file": "ssl_certfile",
    "tls_key_file": "ssl_keyfile",
    "tls_verify": "ssl_cert_reqs",
    "tls_check_hostname": "ssl_check_hostname",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    """How the client side of TLS is set up (one context for every connection)."""

    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    verify: str
    check_hostname: bool
    #: Fields (``tls_ca_file``...) set in the config, and those set by the URL's query: an
    #: error names a setting as the user wrote it.
    from_fields: frozenset[str] = frozenset()
    from_url: frozenset[str] = frozenset()

    def setting(self, field: str) -> str:
        """How the user sets ``field`` (e.g. ``tls_ca_file``): as they did, or both ways if unset."""
        if field in self.from_fields:
            return f"redis.{field}"
        if field in self.from_url:
            return f"{URL_SPELLING[field]} in redis.url"
        return f"redis.{field} (or {URL_SPELLING[field]} in redis.url)"

    def context(self) -> ssl.SSLContext:
        """Build the SSL context; an unreadable file is a ConfigError naming its field."""
        context = ssl.create_default_context()
        context.check_hostname = False  # set last: it requires a verify mode other than none
        context.verify_mode = _VERIFY[self.verify]
        try:
            if self.ca_file:
                context.load_verify_locations(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            allowed = f"a readable PEM CA bundle ({exc})"
            raise ConfigError("redis.tls_ca_file", self.ca_file, allowed) from None
        try:
            if self.cert_file:
                context.load_cert_chain(certfile=self.cert_file, keyfile=self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                "redis.tls_cert_file", self.cert_file, f"a readable PEM certificate with its key ({exc})"
            ) from None
        context.check_hostname = self.check_hostname
        return context


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """Where the server is and who we are to it: parsed once from the URL and the config."""

    host: str | None = None
    port: int | None = None
    #: Unix socket path (``unix://``), else None.
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsSettings | None = None
    #: Through Sentinel: each sentinel's (host, port), asked in turn where the primary of
    #: ``service_name`` is whenever a connection is made (host and port above are then None).
    sentinels: tuple[tuple[str, int], ...] = ()
    service_name: str | None = None
    #: The sentinels' own ACL credentials (``sentinel_username``/``sentinel_password`` in the URL).
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        scheme = "unix" if self.path else ("rediss" if self.tls else "redis")
        if self.path:
            return f"{scheme}://{self.path}"
        if self.sentinels:
            hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"{scheme}+sentinel://{hosts}/{self.service_name}"
        return f"{scheme}://{self.host}:{self.port}"


#: ``redis+sentinel://`` as other projects spell it (redis-sentinel-url, RedisVL, prefect-redis).
SENTINEL_URL_FORM = (
    "redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db][?options]"
)
DEFAULT_SENTINEL_PORT = 26379


def parse_endpoint(config: RedisConfig) -> Endpoint:
    """The endpoint of ``config.url`` and the TLS and Sentinel fields; ConfigError on a bad value."""
    scheme = config.url.partition("://")[0]
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        return _parse_sentinel_url(config)
    parts = urlsplit(config.url)
    query = {k: unquote(v[0]) for k, v in parse_qs(parts.query).items() if v}
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if parts.scheme == "unix":
        return Endpoint(path=unquote(parts.path), username=username, password=password, db=_db(query, ""))
    try:
        port = parts.port or 6379
    except ValueError:
        raise ConfigError("redis.url", config.url, "a URL with a numeric port") from None
    common = {
        "db": _db(query, parts.path),
        "username": username,
        "password": password,
        "tls": _tls_settings(config, query) if parts.scheme == "rediss" else None,
    }
    if config.sentinels:  # the URL's host and port are not used (RedisConfig.sentinels)
        sentinels = tuple(_host_port("redis.sentinels", item, item) for item in config.sentinels)
        return Endpoint(
            sentinels=sentinels,
            service_name=config.sentinel_service,
            sentinel_username=query.get("sentinel_username"),
            sentinel_password=query.get("sentinel_password"),
            **common,
        )
    return Endpoint(host=unquote(parts.hostname or "localhost"), port=port, **common)


def _tls_settings(config: RedisConfig, query: Mapping[str, str]) -> TlsSettings:
    tls = TlsSettings(
        ca_file=config.tls_ca_file or query.get("ssl_ca_certs"),
        cert_file=config.tls_cert_file or query.get("ssl_certfile"),
        key_file=config.tls_key_file or query.get("ssl_keyfile"),
        verify=_verify(config.tls_verify or query.get("ssl_cert_reqs") or "required"),
        check_hostname=_check_hostname(config.tls_check_hostname, query.get("ssl_check_hostname")),
        from_fields=frozenset(f for f in URL_SPELLING if getattr(config, f) is not None),
        from_url=frozenset(
            f for f, name in URL_SPELLING.items() if getattr(config, f) is None and name in query
        ),
    )
    if tls.check_hostname and tls.verify == "none":
        raise ConfigError("redis.tls_check_hostname", True, "false when redis.tls_verify is 'none'")
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ConfigError("redis.tls_key_file", tls.key_file, "given together with redis.tls_cert_file")
    return tls


def _parse_sentinel_url(config: RedisConfig) -> Endpoint:
    """``redis+sentinel://`` (redis-py's ``from_url`` refuses the scheme, so it is parsed here)."""
    url = config.url
    scheme, _, rest = url.partition("://")
    # urlsplit cannot read a comma-separated host list (its .port fails): split the netloc
    # by hand, and let urlsplit read only the path and query.
    netloc, _, tail = rest.partition("/")
    parts = urlsplit(f"x://h/{tail}")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_host_port("redis.url", url, item) for item in hostlist.split(","))
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if not segments:
        _bad_sentinel_url(url, "the path must name the service: /service_name[/db]")
    if len(segments) > 2:
        _bad_sentinel_url(url, f"the path has {len(segments)} segments; allowed: /service_name[/db]")
    if len(segments) == 2 and not segments[1].isdigit():
        _bad_sentinel_url(url, f"db must be a non-negative integer, got {segments[1]!r}")
    query = {k: unquote(v[0]) for k, v in parse_qs(parts.query).items() if v}
    return Endpoint(
        sentinels=sentinels,
        service_name=segments[0],
        db=int(segments[1]) if len(segments) == 2 else 0,
        username=username,
        password=password,
        tls=_tls_settings(config, query) if scheme == "rediss+sentinel" else None,
        sentinel_username=query.get("sentinel_username"),
        sentinel_password=query.get("sentinel_password"),
    )


def _host_port(field: str, value: str, item: str) -> tuple[str, int]:
    """``host[:port]`` or ``[v6addr][:port]`` of one sentinel (port 26379 when omitted)."""
    if not item:
        _bad_sentinel(field, value, "an empty sentinel address (check the commas)")
    if item.startswith("["):
        host, bracket, after = item[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            _bad_sentinel(field, value, f"bad IPv6 sentinel address {item!r}; allowed: [addr] or [addr]:port")
        port_text = after[1:]
    else:
        host, _, port_text = item.partition(":")
    if not host:
        _bad_sentinel(field, value, f"sentinel address {item!r} has no host")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        _bad_sentinel(field, value, f"sentinel address {item!r}: port must be 1-65535")
    return host, int(port_text)


def _bad_sentinel(field: str, value: str, problem: str) -> NoReturn:
    if field == "redis.url":
        _bad_sentinel_url(value, problem)
    raise ConfigError(field, value, f"host:port of a sentinel ({problem})")


def _bad_sentinel_url(url: str, problem: str) -> NoReturn:
    raise ConfigError("redis.url", _redact(url), f"{SENTINEL_URL_FORM} ({problem})")


def _redact(url: str) -> str:
    # Errors are logged: never echo a password.
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return f"{scheme}{sep}{userinfo}{at}{hosts}{slash}{tail}"


def _db(query: Mapping[str, str], path: str) -> int:
    raw = query.get("db") or path.strip("/") or "0"
    if not raw.isdigit():
        raise ConfigError("redis.url", raw, "a database number, e.g. redis://host:6379/0")
    return int(raw)


def _verify(value: str) -> str:
    text = value.lower().removeprefix("cert_")
    if text not in TLS_VERIFY_MODES:
        raise ConfigError("redis.tls_verify", value, " | ".join(TLS_VERIFY_MODES))
    return text


def _check_hostname(configured: bool | None, from_url: str | None) -> bool:
    if configured is not None:
        return configured
    if from_url is None:
        return True
    if from_url.lower() in _TRUE + _FALSE:
        return from_url.lower() in _TRUE
    raise ConfigError("redis.url ssl_check_hostname", from_url, "true | false")


class _SharedContextSSLConnection(SSLConnection):
    """redis-py's TLS connection, given the factory's SSL context instead of building its own."""

    def __init__(self, *, tls_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._tls_context = tls_context

    def _connection_arguments(self) -> Mapping[str, Any]:
        return {**super()._connection_arguments(), "ssl": self._tls_context}


Address = tuple[str, int]


class _SentinelPrimaryConnection(Connection):
    """A pooled connection that asks the sentinels where the primary is each time it connects.

    A pooled connection to a primary that died breaks, and its reconnect (redis-py's retry,
    or the next command) asks again: the pool follows a failover one connection at a time.
    A primary demoted to a replica that still answers (it refuses writes with READONLY) is
    left the same way. Hand-made rather than redis-py's ``SentinelConnectionPool``: that
    pool is not the bounded blocking pool the house settings ask for (DESIGN.md section 9).
    """

    def __init__(self, *, primary_address: Callable[[], Awaitable[Address]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._primary_address = primary_address

    async def _connect(self) -> None:
        self.host, self.port = await self._primary_address()
        await super()._connect()

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except ReadOnlyError as exc:
            # The write did not happen (a replica refuses it): reconnect through the sentinels.
            await self.disconnect()
            raise RedisConnectionError(f"{self.host}:{self.port} is a replica now ({exc})") from exc


class _SentinelPrimarySSLConnection(_SentinelPrimaryConnection, _SharedContextSSLConnection):
    """:class:`_SentinelPrimaryConnection` over TLS, with the factory's one SSL context."""


class ConnectionFactory:
    """Makes every connection of one instance from one endpoint (and one SSL context).

    Through Sentinel (``redis+sentinel://`` or ``redis.sentinels``), every connection, the
    pool's and the event stream's, is made to the address the sentinels name at that moment
    (:meth:`primary_address`): after a failover, a broken connection is remade to the new
    primary, and the subscriber's reconnect counts as a gap to repair like any other.
    """

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        #: A cluster URL's router (slot map, a client per primary), else None: set by
        #: ``lockless.redis.cluster.ClusterConnections``, which this module does not import.
        self.cluster: Any = None
        self.endpoint = parse_endpoint(config)
        self.tls_context = self.endpoint.tls.context() if self.endpoint.tls else None
        # Sentinels in the order they are asked; one that answered goes first next time.
        self._sentinels = list(self.endpoint.sentinels)

    def command_client(self, **overrides: Any) -> aioredis.Redis:
        """A client with the house settings: timeouts, bounded blocking pool, explicit retries."""
        cfg, ep = self.config, self.endpoint
        held_s = cfg.wait_timeout_ms / 1000 if cfg.wait_replicas else 0.0
        kwargs: dict[str, Any] = {
            "max_connections": cfg.max_connections,
            "timeout": cfg.pool_timeout_s,
            # A write followed by WAIT may legitimately be held wait_timeout_ms by the server: were
            # that counted against socket_timeout, the call would time out and be retried on a
            # new connection, whose WAIT covers none of the first attempt's writes.
            "socket_timeout": cfg.socket_timeout_s + held_s,
            "socket_connect_timeout": cfg.connect_timeout_s,
            # Jittered exponential backoff from 10 ms, capped at 50 ms: one quick retry repairs a
            # stale pooled socket after a restart without turning a timeout into a long stall.
            # (EqualJitterBackoff exists in every redis-py this project supports; the newer
            # ExponentialWithJitterBackoff does not exist before 5.3.)
            "retry": Retry(EqualJitterBackoff(cap=0.05, base=0.01), cfg.retries),
            # Said explicitly: redis-py 5.0's pipelines retry only on the errors named here (none
            # by default), so a pooled socket the server had closed failed the whole call.
            "retry_on_error": [RedisConnectionError, RedisTimeoutError],
            "decode_responses": True,
            # A record holding bytes that are not UTF-8 must reach the codec (which rejects it
            # as a MalformedRecord naming the field), not fail inside redis-py's reply decoding.
            "encoding_errors": "surrogateescape",
            "db": ep.db,
            "username": ep.username,
            "password": ep.password,
        }
        connection_class: type
        if ep.path is not None:
            connection_class = UnixDomainSocketConnection
            kwargs["path"] = ep.path
        elif ep.sentinels:
            connection_class = _SentinelPrimaryConnection
            kwargs["primary_address"] = self.primary_address
            if self.tls_context is not None:
                connection_class = _SentinelPrimarySSLConnection
                kwargs["tls_context"] = self.tls_context
        else:
            kwargs.update(host=ep.host, port=ep.port)
            connection_class = Connection
            if self.tls_context is not None:
                connection_class = _SharedContextSSLConnection
                kwargs["tls_context"] = self.tls_context
        kwargs.update(overrides)
        pool = aioredis.BlockingConnectionPool(connection_class=with_c_packing(connection_class), **kwargs)
        # from_pool: the client owns its pool, so aclose() disconnects it; a client merely
        # handed the pool leaves its sockets open after aclose().
        return aioredis.Redis.from_pool(pool)

    async def open_stream(
        self, endpoint: Endpoint | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connected stream (TLS and AUTH done) for the subscriber's bare RESP session
        (to ``endpoint``, a cluster node, if given)."""
        address = await self._data_address(endpoint)
        reader, writer = await self._open(address)
        try:
            await self._handshake(writer, address)
            await self._authenticate(reader, writer, sentinel=False)
        except BaseException:
            writer.close()
            raise
        return reader, writer

    async def primary_address(self) -> Address:
        """Ask the sentinels in turn where the primary is.

        Raises :class:`~lockless.errors.RedisUnavailable` saying what each sentinel answered
        when none names one, or :class:`~lockless.errors.TlsError` when TLS to every one failed.
        """
        ep = self.endpoint
        if not ep.sentinels or ep.service_name is None:
            raise RuntimeError("primary_address: this endpoint is not a Sentinel deployment")
        command = [b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", ep.service_name.encode()]
        failures: list[str] = []
        tls_errors: list[TlsError] = []
        for address in list(self._sentinels):
            try:
                reply = await self._exchange(address, command, sentinel=True)
            except TlsError as exc:
                tls_errors.append(exc)
                failures.append(str(exc))
                continue
            except RedisUnavailable as exc:
                failures.append(str(exc))
                continue
            if isinstance(reply, list) and len(reply) == 2:
                self._sentinels.remove(address)
                self._sentinels.insert(0, address)
                return reply[0].decode(), int(reply[1])
            said = "no primary by that name" if reply is None else repr(reply)
            failures.append(f"sentinel {address[0]}:{address[1]} answered {said}")
        if tls_errors and len(tls_errors) == len(ep.sentinels):
            raise tls_errors[0]
        raise RedisUnavailable(
            f"no sentinel of {ep.describe()} named the primary of {ep.service_name!r}: " + "; ".join(failures)
        )

    async def check(self, endpoint: Endpoint | None = None) -> None:
        """Open one stream and PING (to ``endpoint``, a cluster node, if given): a TLS, AUTH or
        connect problem becomes one clear error."""
        address = await self._data_address(endpoint)
        reply = await self._exchange(address, [b"PING"], sentinel=False)
        if isinstance(reply, Exception):
            where = self._where(address, sentinel=False)
            raise RedisUnavailable(f"{where} answered PING with an error: {reply}")

    # -- one connection, step by step -------------------------------------------------------------

    async def _data_address(self, endpoint: Endpoint | None = None) -> Address | None:
        """Where the data node is: None for a Unix socket, else host and port (asked of the sentinels;
        ``endpoint``'s, a cluster node, if given)."""
        ep = endpoint or self.endpoint
        if ep.path is not None:
            return None
        if ep.sentinels:
            return await self.primary_address()
        assert ep.host is not None and ep.port is not None
        return ep.host, ep.port

    async def _open(self, address: Address | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The TCP (or Unix socket) connection, before any TLS."""
        if address is None:
            assert self.endpoint.path is not None
            opening = asyncio.open_unix_connection(self.endpoint.path)
        else:
            opening = asyncio.open_connection(*address)
        return await asyncio.wait_for(opening, self.config.connect_timeout_s)

    async def _handshake(self, writer: asyncio.StreamWriter, address: Address | None) -> None:
        """For ``rediss://``: TLS over the open connection, with the factory's one context.

        Apart from the TCP connect so that a failure says which of the two failed (a
        plaintext server on a TLS URL never answers the hello: that is a timeout here).
        """
        if self.tls_context is None or address is None:
            return
        handshake = writer.start_tls(self.tls_context, server_hostname=address[0])
        await asyncio.wait_for(handshake, self.config.connect_timeout_s)

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, sentinel: bool
    ) -> None:
        ep = self.endpoint
        username, password = (
            (ep.sentinel_username, ep.sentinel_password) if sentinel else (ep.username, ep.password)
        )
        if not password:
            return
        who = [username.encode()] if username else []
        command = [b"AUTH", *who, password.encode()]
        reply = await _round_trip(reader, writer, command, self.config.connect_timeout_s)
        if isinstance(reply, Exception):
            whose = "a sentinel of " if sentinel else ""
            raise RedisUnavailable(f"{whose}{ep.describe()} refused AUTH: {reply}")

    async def _exchange(self, address: Address | None, command: list[bytes], *, sentinel: bool) -> Any:
        """Connect, TLS, AUTH, one command and its reply: every failure is one clear library error."""
        where = self._where(address, sentinel=sentinel)
        try:
            reader, writer = await self._open(address)
        except (OSError, TimeoutError) as exc:
            raise RedisUnavailable(f"cannot reach {where}: {type(exc).__name__}: {exc}") from exc
        handshaken = False
        try:
            await self._handshake(writer, address)
            handshaken = True
            await self._authenticate(reader, writer, sentinel=sentinel)
            return await _round_trip(reader, writer, command, self.config.socket_timeout_s)
        except ssl.SSLError as exc:
            # With TLS 1.3 the client's side of the handshake is done before the server has
            # judged our certificate, so that refusal (an alert) arrives on the first read.
            raise self._tls_failure(exc, where, address) from exc
        except (OSError, TimeoutError, ConnectionError) as exc:
            if self.tls_context is not None and not handshaken:
                raise self._tls_unanswered(exc, where) from exc
            if self.tls_context is not None and _lost(exc):
                raise self._tls_closed(exc, "after the TLS handshake, before answering", where) from exc
            what = command[0].decode()
            raise RedisUnavailable(f"{where} did not answer {what}: {type(exc).__name__}: {exc}") from exc
        finally:
            writer.close()

    def _where(self, address: Address | None, *, sentinel: bool) -> str:
        ep = self.endpoint
        scheme = "rediss" if ep.tls else "redis"
        if address is not None and not ep.sentinels and address != (ep.host, ep.port):
            return f"{scheme}://{address[0]}:{address[1]}"  # a cluster node other than the seed
        if not ep.sentinels or address is None:
            return ep.describe()
        role = "sentinel" if sentinel else f"primary of {ep.service_name!r}"
        return f"{scheme}://{address[0]}:{address[1]} ({role})"

    # -- what went wrong with TLS -----------------------------------------------------------------

    def _tls_unanswered(self, exc: BaseException, where: str) -> TlsError:
        """The TCP connection is up, but the TLS handshake timed out or was dropped."""
        if _lost(exc):
            return self._tls_closed(exc, "during the TLS handshake", where)
        return TlsError(
            f"TLS to {where}: no answer to the TLS handshake within "
            f"{self.config.connect_timeout_s} s ({type(exc).__name__}); does this port serve TLS? "
            "(a plaintext Redis never answers a TLS hello: use a redis:// URL for it)"
        )

    def _tls_failure(self, exc: ssl.SSLError, where: str, address: Address | None) -> TlsError:
        tls = self.endpoint.tls
        assert tls is not None and address is not None  # only a TLS connection raises ssl errors
        if isinstance(exc, ssl.SSLCertVerificationError):
            if exc.verify_code == _HOSTNAME_MISMATCH:
                return TlsError(
                    f"TLS to {where}: the server certificate is not issued for {address[0]!r} "
                    f"(hostname mismatch: {exc.verify_message}); connect by a name the certificate "
                    f"names, or set {tls.setting('tls_check_hostname')} to false (not recommended)"
                )
            ca = (
                f"{tls.setting('tls_ca_file')} ({tls.ca_file!r})"
                if tls.ca_file
                else f"the system CAs ({tls.setting('tls_ca_file')} is not set)"
            )
            return TlsError(
                f"TLS to {where}: the server certificate did not verify against {ca}: {exc.verify_message}"
            )
        reason = (getattr(exc, "reason", "") or "").upper()
        if "CERTIFICATE_REQUIRED" in reason or ("HANDSHAKE_FAILURE" in reason and not tls.cert_file):
            return TlsError(
                f"TLS to {where}: the server requires a client certificate; set "
                f"{tls.setting('tls_cert_file')} and {tls.setting('tls_key_file')} ({exc})"
            )
        if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason:
            return TlsError(
                f"TLS to {where}: the server refused our client certificate "
                f"{tls.setting('tls_cert_file')} ({tls.cert_file!r}): {exc}"
            )
        return TlsError(f"TLS to {where}: handshake failed: {exc}")

    def _tls_closed(self, exc: BaseException, when: str, where: str) -> TlsError:
        """The server dropped a TLS connection without a word: how many refuse a client certificate.

        A TLS server that requires a client certificate may end the connection with the
        "certificate required" alert or with a bare reset, as its own race decides (Redis
        7.0 resets more often than not): the reset gives no reason, so say the likely one.
        """
        tls = self.endpoint.tls
        assert tls is not None
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if tls.cert_file:
            hint = (
                f"the server may not accept our client certificate {tls.setting('tls_cert_file')} "
                f"({tls.cert_file!r}): is it issued by a CA the server trusts?"
            )
        else:
            hint = (
                "a server that requires a client certificate does this when none is given: set "
                f"{tls.setting('tls_cert_file')} and {tls.setting('tls_key_file')}"
            )
        return TlsError(f"TLS to {where}: the server closed the connection {when} ({what}); {hint}")


def _lost(exc: BaseException) -> bool:
    """The peer dropped the connection (reset, EOF), as opposed to refusing it or timing out."""
    return isinstance(exc, ConnectionError | asyncio.IncompleteReadError) and not isinstance(
        exc, ConnectionRefusedError
    )


async def _round_trip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, command: list[bytes], timeout: float
) -> Any:
    """Send one RESP command and read its one reply (an Exception object for an error reply)."""
    out = [b"*%d\r\n" % len(command)]
    for arg in command:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    writer.write(b"".join(out))
    parser = hiredis.Reader()
    async with asyncio.timeout(timeout):
        while (reply := parser.gets()) is False:
            chunk = await reader.read(4096)
            if not chunk:
                raise ConnectionError("connection closed by the server")
            parser.feed(chunk)
    return reply
