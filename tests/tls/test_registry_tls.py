"""The library over TLS: a whole LocklessRegistry through every TLS backend (issue 14).

Each case runs a full pair of instances: ``start`` (connection check, scripts, the event
subscription, relists), ``register_node`` on one, the registration seen by the other
through its event subscriber, ``place_job`` there, and the admission seen back through
the first one's subscriber. So commands (redis-py's pool) and the event stream (the
subscriber's own connection) both cross the TLS endpoint, and the endpoint speaks only
TLS (tests/tls/test_tls_redis_py.py shows a plaintext client refused on it).

The four cases of the issue, each configured both ways a user can (the config's
``redis.tls_*`` fields, and redis-py's ``ssl_*`` query in the URL):

- private CA: works;
- wrong CA: ``start`` raises :class:`~lockless.errors.TlsError` naming ``tls_ca_file``,
  at the connection check (not the subscription's timeout);
- client certificate required: works with one; without, a ``TlsError`` naming
  ``tls_cert_file``, whether the server refuses with its alert or a bare reset;
- hostname mismatch: a ``TlsError`` naming ``tls_check_hostname``; accepted once that is false.

The last tests break the factory on purpose (the issue's bug: a stream that ignores the
configured CA; a command pool that ignores the client certificate) and show the scenario
fails for each, so passing it means both paths really use the settings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import trustme

from lockless import LocklessRegistry, RedisUnavailable, RegistryConfig, TlsError
from lockless.redis.connection import ConnectionFactory
from lockless.redis.store import RedisStore
from sim.tls import REFUSALS
from tests.support import fast_config, two_instances_see_each_other
from tests.tls.conftest import TlsCerts, TlsEndpoint

HOW = ("fields", "url")
"""Where the TLS settings are written: the ``redis.tls_*`` config fields, or the URL's query."""

# The subscription timeout of ``start`` in these tests: a TLS error must come well before it
# (the issue's symptom was this timeout, after ~20 logged verification failures).
SUBSCRIPTION_TIMEOUT_S = 30.0


def tls_config(
    endpoint: TlsEndpoint,
    ns: str,
    *,
    how: str,
    client_cert: bool = False,
    ca: Path | None = None,
    check_hostname: bool | None = None,
) -> RegistryConfig:
    """A fast test config reaching ``endpoint``, with its TLS settings written ``how``."""
    ca_file = ca or endpoint.certs.ca
    if how == "url":
        url = endpoint.url_with_query(client_cert=client_cert, ca=ca_file)
        if check_hostname is not None:
            url += f"&ssl_check_hostname={str(check_hostname).lower()}"
        tls: dict[str, Any] = {}
    else:
        url = endpoint.url
        tls = {"tls_ca_file": str(ca_file), "tls_check_hostname": check_hostname}
        if client_cert:
            tls |= {
                "tls_cert_file": str(endpoint.certs.client_cert),
                "tls_key_file": str(endpoint.certs.client_key),
            }
    config = fast_config(url, ns)
    # Handshakes through the proxy (a Python thread) on a shared 2-core machine: generous
    # timeouts, since these tests are about TLS and not about detecting faults fast.
    redis = dataclasses.replace(config.redis, connect_timeout_s=2.0, socket_timeout_s=2.0, **tls)
    return dataclasses.replace(config, redis=redis)


async def start_refused(config: RegistryConfig) -> tuple[TlsError, float]:
    """``start`` must raise a TlsError; returns it with the seconds it took."""
    registry = LocklessRegistry(config, instance="a")
    began = time.monotonic()
    try:
        with pytest.raises(TlsError) as caught:
            await registry.start(timeout=SUBSCRIPTION_TIMEOUT_S)
    finally:
        await registry.close()
    return caught.value, time.monotonic() - began


def assert_clear(error: TlsError, elapsed_s: float, *, how: str, field: str, query: str) -> None:
    """The error names TLS and the setting as the user wrote it, and came from the start check."""
    text = str(error)
    assert text.startswith("TLS to rediss://localhost:"), text
    assert (f"redis.{field}" if how == "fields" else f"ssl_{query}") in text, text
    assert "event subscription" not in text, text
    # Raised by the connection check, before the subscription: not after its timeout.
    assert elapsed_s < SUBSCRIPTION_TIMEOUT_S / 3, elapsed_s


def assert_no_handshake_failed(endpoint: TlsEndpoint) -> None:
    """The proxy refused no handshake (a native server keeps no such record).

    A client that closes while its handshake is under way (a pooled connection being made
    as the registry closes) is recorded as a reset, not an ``SSL...`` error: not a refusal.
    """
    if endpoint.proxy is not None:
        refused = [f for f in endpoint.proxy.handshake_failures if f.startswith("SSL")]
        assert refused == [], endpoint.proxy.handshake_failures


# ---------------------------------------------------------------------------------- private CA


@pytest.mark.parametrize("how", HOW)
async def test_private_ca_commands_and_events(
    tls_redis: Callable[..., TlsEndpoint], ns: str, how: str
) -> None:
    endpoint = tls_redis()
    await two_instances_see_each_other(tls_config(endpoint, ns, how=how))
    assert_no_handshake_failed(endpoint)


@pytest.mark.parametrize("how", HOW)
async def test_wrong_ca_is_a_clear_error_at_start(
    tls_redis: Callable[..., TlsEndpoint], tls_certs: TlsCerts, ns: str, how: str
) -> None:
    endpoint = tls_redis()
    error, elapsed = await start_refused(tls_config(endpoint, ns, how=how, ca=tls_certs.other_ca))
    assert_clear(error, elapsed, how=how, field="tls_ca_file", query="ca_certs")
    assert "did not verify" in str(error) and str(tls_certs.other_ca) in str(error)
    assert isinstance(error.__cause__, ssl.SSLCertVerificationError)


async def test_wrong_ca_refuses_commands_too(
    tls_redis: Callable[..., TlsEndpoint], tls_certs: TlsCerts, ns: str
) -> None:
    # start() stops at the stream check; the command pool, built from the same context, refuses too.
    endpoint = tls_redis()
    config = tls_config(endpoint, ns, how="fields", ca=tls_certs.other_ca)
    store = RedisStore(config.redis, config.nodes)
    try:
        with pytest.raises(RedisUnavailable) as caught:
            await store.load_scripts()
        chain = repr(caught.value.__cause__) + repr(caught.value.__cause__.__context__)
        assert "CERTIFICATE_VERIFY_FAILED" in chain.upper(), chain
    finally:
        await store.close()


# ------------------------------------------------------------------------- client certificates


@pytest.mark.parametrize("how", HOW)
async def test_client_certificate_required_works_with_one(
    tls_redis: Callable[..., TlsEndpoint], ns: str, how: str
) -> None:
    endpoint = tls_redis(require_client_cert=True)
    await two_instances_see_each_other(tls_config(endpoint, ns, how=how, client_cert=True))
    assert_no_handshake_failed(endpoint)


@pytest.mark.parametrize("refusal", REFUSALS)
@pytest.mark.parametrize("how", HOW)
async def test_client_certificate_required_without_one_is_a_clear_error(
    tls_redis: Callable[..., TlsEndpoint], ns: str, how: str, refusal: str
) -> None:
    # With TLS 1.3 the client's handshake completes before the server checks for a
    # certificate, so the refusal arrives on the first read: the "certificate required"
    # alert, or a bare reset (tests/tls/test_tls_redis_py.py). Both must say what to set.
    endpoint = tls_redis(require_client_cert=True, refusal=refusal)
    error, elapsed = await start_refused(tls_config(endpoint, ns, how=how))
    assert_clear(error, elapsed, how=how, field="tls_cert_file", query="certfile")
    assert "client certificate" in str(error)
    if endpoint.proxy is not None:
        assert endpoint.proxy.handshake_failures, "the proxy saw no refused handshake"


async def test_a_client_certificate_from_another_ca_is_a_clear_error(
    tls_redis: Callable[..., TlsEndpoint], tls_certs: TlsCerts, ns: str, tmp_path: Path
) -> None:
    stranger = trustme.CA().issue_cert("client.elsewhere.test")
    cert, key = tmp_path / "stranger.pem", tmp_path / "stranger.key"
    stranger.cert_chain_pems[0].write_to_path(str(cert))
    stranger.private_key_pem.write_to_path(str(key))
    endpoint = tls_redis(require_client_cert=True)
    config = tls_config(endpoint, ns, how="fields")
    config = dataclasses.replace(
        config, redis=dataclasses.replace(config.redis, tls_cert_file=str(cert), tls_key_file=str(key))
    )
    error, elapsed = await start_refused(config)
    assert_clear(error, elapsed, how="fields", field="tls_cert_file", query="certfile")
    assert str(cert) in str(error)


# ---------------------------------------------------------------------------------- hostnames


@pytest.mark.parametrize("how", HOW)
async def test_hostname_mismatch_is_refused(tls_redis: Callable[..., TlsEndpoint], ns: str, how: str) -> None:
    endpoint = tls_redis(server_cert="other-host")
    error, elapsed = await start_refused(tls_config(endpoint, ns, how=how))
    assert_clear(error, elapsed, how=how, field="tls_check_hostname", query="check_hostname")
    assert "hostname mismatch" in str(error) and "'localhost'" in str(error)
    assert isinstance(error.__cause__, ssl.SSLCertVerificationError)


@pytest.mark.parametrize("how", HOW)
async def test_hostname_check_off_accepts_the_same_certificate(
    tls_redis: Callable[..., TlsEndpoint], ns: str, how: str
) -> None:
    # The certificate still has to verify against the CA: only the name is not checked.
    endpoint = tls_redis(server_cert="other-host")
    await two_instances_see_each_other(tls_config(endpoint, ns, how=how, check_hostname=False))
    assert_no_handshake_failed(endpoint)


# ---------------------------------------------------------------- the checks, broken on purpose


def _default_context_connect(factory: ConnectionFactory) -> Any:
    """The issue's bug: a connection made with ``ssl.create_default_context()``, not the factory's."""
    ep = factory.endpoint
    opening = asyncio.open_connection(ep.host, ep.port, ssl=ssl.create_default_context())
    return asyncio.wait_for(opening, factory.config.connect_timeout_s)


class _StreamIgnoresTheCa(ConnectionFactory):
    """The subscriber's stream ignores the configured CA; the start check is left correct."""

    async def open_stream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await _default_context_connect(self)


class _CheckIgnoresTheCa(ConnectionFactory):
    """Every stream, the start check's included, ignores the configured CA."""

    async def _handshake(self, writer: asyncio.StreamWriter, address: tuple[str, int] | None) -> None:
        assert address is not None
        handshake = writer.start_tls(ssl.create_default_context(), server_hostname=address[0])
        await asyncio.wait_for(handshake, self.config.connect_timeout_s)


class _CommandsWithoutClientCert(ConnectionFactory):
    """Commands through redis-py's own TLS settings: the CA, but not the client certificate."""

    def command_client(self, **overrides: Any) -> aioredis.Redis:
        ep = self.endpoint
        assert ep.tls is not None
        return aioredis.Redis(
            host=ep.host,
            port=ep.port,
            ssl=True,
            ssl_ca_certs=ep.tls.ca_file,
            socket_timeout=self.config.socket_timeout_s,
            decode_responses=True,
        )


def _stores(config: RegistryConfig, factory: type[ConnectionFactory]) -> Callable[[], RedisStore]:
    return lambda: RedisStore(config.redis, config.nodes, connections=factory(config.redis))


async def test_the_events_check_catches_a_stream_ignoring_the_ca(
    tls_redis: Callable[..., TlsEndpoint], ns: str
) -> None:
    # Commands and the start check verify with the private CA; only the event stream does
    # not: the subscription never comes up, so the scenario fails (here at start, after a
    # short subscription timeout, as in the issue). The real factory passes the same
    # scenario (test_private_ca_commands_and_events).
    config = tls_config(tls_redis(), ns, how="url")
    with pytest.raises(RedisUnavailable, match="event subscription not established"):
        await two_instances_see_each_other(
            config, store=_stores(config, _StreamIgnoresTheCa), start_timeout=2.0
        )


async def test_the_start_check_catches_a_stream_ignoring_the_ca(
    tls_redis: Callable[..., TlsEndpoint], ns: str
) -> None:
    config = tls_config(tls_redis(), ns, how="url")
    with pytest.raises(TlsError, match="did not verify"):
        await two_instances_see_each_other(config, store=_stores(config, _CheckIgnoresTheCa))


async def test_the_commands_check_catches_a_pool_ignoring_the_client_certificate(
    tls_redis: Callable[..., TlsEndpoint], ns: str
) -> None:
    endpoint = tls_redis(require_client_cert=True)
    config = tls_config(endpoint, ns, how="fields", client_cert=True)
    # The stream (and the start check) present the certificate; the first command (SCRIPT LOAD) fails.
    with pytest.raises(RedisUnavailable) as caught:
        await two_instances_see_each_other(config, store=_stores(config, _CommandsWithoutClientCert))
    assert str(caught.value).startswith("SCRIPT LOAD:"), caught.value
    # The proxy sends its alert; a native Redis sends it or resets, by a race (see test_tls_redis_py).
    refusals = ["certificate required"] + (["connection reset"] if endpoint.proxy is None else [])
    assert any(r in str(caught.value).lower() for r in refusals), caught.value
