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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
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
    password: str | None = None
    tls: TlsSettings | None = None

    def describe(self) -> str:
        scheme = "unix" if self.path else ("rediss" if self.tls else "redis")
        return f"{scheme}://{self.path}" if self.path else f"{scheme}://{self.host}:{self.port}"


def parse_endpoint(config: RedisConfig) -> Endpoint:
    """The endpoint of ``config.url`` with the config's TLS fields; ConfigError on a bad value."""
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
    tls = None
    if parts.scheme == "rediss":
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
    return Endpoint(
        host=unquote(parts.hostname or "localhost"),
        port=port,
        db=_db(query, parts.path),
        username=username,
        password=password,
        tls=tls,
    )


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


class ConnectionFactory:
    """Makes every connection of one instance from one endpoint (and one SSL context)."""

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self.endpoint = parse_endpoint(config)
        self.tls_context = self.endpoint.tls.context() if self.endpoint.tls else None

    def command_client(self, **overrides: Any) -> aioredis.Redis:
        """A client with the house settings: timeouts, bounded blocking pool, explicit retries."""
        cfg, ep = self.config, self.endpoint
        kwargs: dict[str, Any] = {
            "max_connections": cfg.max_connections,
            "timeout": cfg.pool_timeout_s,
            "socket_timeout": cfg.socket_timeout_s,
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
        if ep.path is not None:
            connection_class: type = UnixDomainSocketConnection
            kwargs["path"] = ep.path
        else:
            kwargs.update(host=ep.host, port=ep.port)
            connection_class = Connection
            if self.tls_context is not None:
                connection_class = _SharedContextSSLConnection
                kwargs["tls_context"] = self.tls_context
        kwargs.update(overrides)
        pool = aioredis.BlockingConnectionPool(connection_class=with_c_packing(connection_class), **kwargs)
        return aioredis.Redis(connection_pool=pool)

    async def open_stream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connected stream (TLS and AUTH done) for the subscriber's bare RESP session."""
        reader, writer = await self._open()
        try:
            await self._handshake(writer)
            await self._authenticate(reader, writer)
        except BaseException:
            writer.close()
            raise
        return reader, writer

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The TCP (or Unix socket) connection, before any TLS."""
        ep = self.endpoint
        if ep.path is not None:
            opening = asyncio.open_unix_connection(ep.path)
        else:
            opening = asyncio.open_connection(ep.host, ep.port)
        return await asyncio.wait_for(opening, self.config.connect_timeout_s)

    async def _handshake(self, writer: asyncio.StreamWriter) -> None:
        """For ``rediss://``: TLS over the open connection, with the factory's one context.

        Apart from the TCP connect so that a failure says which of the two failed (a
        plaintext server on a TLS URL never answers the hello: that is a timeout here).
        """
        if self.tls_context is None:
            return
        handshake = writer.start_tls(self.tls_context, server_hostname=self.endpoint.host)
        await asyncio.wait_for(handshake, self.config.connect_timeout_s)

    async def _authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ep = self.endpoint
        if not ep.password:
            return
        who = [ep.username.encode()] if ep.username else []
        command = [b"AUTH", *who, ep.password.encode()]
        reply = await _round_trip(reader, writer, command, self.config.connect_timeout_s)
        if isinstance(reply, Exception):
            raise RedisUnavailable(f"{ep.describe()} refused AUTH: {reply}")

    async def check(self) -> None:
        """Open one stream and PING: a TLS, AUTH or connect problem becomes one clear error."""
        where = self.endpoint.describe()
        try:
            reader, writer = await self._open()
        except (OSError, TimeoutError) as exc:
            raise RedisUnavailable(f"cannot reach {where}: {type(exc).__name__}: {exc}") from exc
        handshaken = False
        try:
            await self._handshake(writer)
            handshaken = True
            await self._authenticate(reader, writer)
            reply = await _round_trip(reader, writer, [b"PING"], self.config.socket_timeout_s)
        except ssl.SSLError as exc:
            # With TLS 1.3 the client's side of the handshake is done before the server has
            # judged our certificate, so that refusal (an alert) arrives on the first read.
            raise self._tls_failure(exc) from exc
        except (OSError, TimeoutError, ConnectionError) as exc:
            if self.tls_context is not None and not handshaken:
                raise self._tls_unanswered(exc) from exc
            if self.tls_context is not None and _lost(exc):
                raise self._tls_closed(exc, "after the TLS handshake, before answering") from exc
            raise RedisUnavailable(f"{where} did not answer PING: {type(exc).__name__}: {exc}") from exc
        finally:
            writer.close()
        if isinstance(reply, Exception):
            raise RedisUnavailable(f"{where} answered PING with an error: {reply}")

    def _tls_unanswered(self, exc: BaseException) -> TlsError:
        """The TCP connection is up, but the TLS handshake timed out or was dropped."""
        if _lost(exc):
            return self._tls_closed(exc, "during the TLS handshake")
        return TlsError(
            f"TLS to {self.endpoint.describe()}: no answer to the TLS handshake within "
            f"{self.config.connect_timeout_s} s ({type(exc).__name__}); does this port serve TLS? "
            "(a plaintext Redis never answers a TLS hello: use a redis:// URL for it)"
        )

    def _tls_failure(self, exc: ssl.SSLError) -> TlsError:
        tls, where = self.endpoint.tls, self.endpoint.describe()
        assert tls is not None  # only a TLS connection raises ssl errors
        if isinstance(exc, ssl.SSLCertVerificationError):
            if exc.verify_code == _HOSTNAME_MISMATCH:
                return TlsError(
                    f"TLS to {where}: the server certificate is not issued for {self.endpoint.host!r} "
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

    def _tls_closed(self, exc: BaseException, when: str) -> TlsError:
        """The server dropped a TLS connection without a word: how many refuse a client certificate.

        A TLS server that requires a client certificate may end the connection with the
        "certificate required" alert or with a bare reset, as its own race decides (Redis
        7.0 resets more often than not): the reset gives no reason, so say the likely one.
        """
        tls, where = self.endpoint.tls, self.endpoint.describe()
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
