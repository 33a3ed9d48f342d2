"""The four TLS cases of issue 14 with plain redis-py, on every TLS backend (see conftest).

These prove the endpoints, not the library: a private CA works for commands and pub/sub,
an unrelated CA fails verification, a required client certificate is enforced, and a
certificate for another hostname is refused. The library's own TLS tests reuse the
same ``tls_redis`` fixture.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

import pytest
import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from sim.tls import REFUSALS
from tests.tls.conftest import TlsCerts, TlsEndpoint


def connect(url: str, **kwargs: object) -> aredis.Redis:
    # No retries, short timeouts: a refused handshake must surface at once, not after backoff.
    return aredis.Redis.from_url(
        url, socket_timeout=2.0, socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 0), **kwargs
    )


async def assert_refused(client: aredis.Redis, *fragments: str) -> redis.ConnectionError:
    """PING must fail with a ConnectionError whose text (or its cause's) names one of ``fragments``."""
    try:
        with pytest.raises(redis.ConnectionError) as caught:
            await client.ping()
    finally:
        await client.aclose()
    text = f"{caught.value} {caught.value.__context__!r}".lower()
    assert any(fragment.lower() in text for fragment in fragments), text
    return caught.value


async def test_private_ca_commands_and_pubsub(tls_redis: Callable[..., TlsEndpoint]) -> None:
    endpoint = tls_redis()
    client = connect(endpoint.url, **endpoint.client_kwargs())
    subscriber = connect(endpoint.url, **endpoint.client_kwargs())
    pubsub = subscriber.pubsub()
    try:
        await client.set("tls:k", "v")
        assert await client.get("tls:k") == b"v"
        await pubsub.subscribe("tls:events")
        confirmation = await pubsub.get_message(timeout=2.0)
        assert confirmation is not None and confirmation["type"] == "subscribe"
        assert await client.publish("tls:events", "hello") == 1  # one subscriber, through TLS
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2.0)
        assert message is not None and message["data"] == b"hello"
    finally:
        await pubsub.aclose()
        await subscriber.aclose()
        await client.aclose()


async def test_settings_in_the_url_query_work_too(tls_redis: Callable[..., TlsEndpoint]) -> None:
    # The user wrote `rediss://...?ssl_ca_certs=ca.pem`; redis-py reads that query itself.
    endpoint = tls_redis(require_client_cert=True)
    client = connect(endpoint.url_with_query(client_cert=True))
    try:
        assert await client.ping()
    finally:
        await client.aclose()


async def test_the_endpoint_speaks_only_tls(tls_redis: Callable[..., TlsEndpoint]) -> None:
    # Proves the cases below test TLS: the same port refuses a plaintext client.
    endpoint = tls_redis()
    plain = connect(f"redis://{endpoint.host}:{endpoint.port}/0")
    with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
        await plain.ping()
    await plain.aclose()


async def test_wrong_ca_fails_verification(
    tls_redis: Callable[..., TlsEndpoint], tls_certs: TlsCerts
) -> None:
    endpoint = tls_redis()
    error = await assert_refused(
        connect(endpoint.url, **endpoint.client_kwargs(ca=tls_certs.other_ca)), "certificate verify failed"
    )
    assert isinstance(error.__context__, ssl.SSLCertVerificationError)


@pytest.mark.parametrize("refusal", REFUSALS)
async def test_client_certificate_required(tls_redis: Callable[..., TlsEndpoint], refusal: str) -> None:
    endpoint = tls_redis(require_client_cert=True, refusal=refusal)
    with_cert = connect(endpoint.url, **endpoint.client_kwargs(client_cert=True))
    try:
        assert await with_cert.ping()
    finally:
        await with_cert.aclose()
    # Without one the handshake completes on the client's side (TLS 1.3 checks the client
    # certificate after the client's Finished), so the refusal arrives on the first read
    # ("Error while reading", not "connecting"): as the server's "certificate required"
    # alert, or as a bare reset. A native Redis 7.0.15 gave the reset in 9 runs of 12 (it
    # closes with our PING unread); the proxy does what it is told. Clients must expect both.
    expected = {"alert": ("certificate required",), "reset": ("connection reset",)}[refusal]
    if endpoint.backend == "native":
        expected = ("certificate required", "connection reset")
    await assert_refused(connect(endpoint.url, **endpoint.client_kwargs()), *expected)


async def test_hostname_mismatch_refused(tls_redis: Callable[..., TlsEndpoint]) -> None:
    endpoint = tls_redis(server_cert="other-host")
    error = await assert_refused(
        connect(endpoint.url, ssl_check_hostname=True, **endpoint.client_kwargs()), "hostname mismatch"
    )
    assert isinstance(error.__context__, ssl.SSLCertVerificationError)
    # The certificate is otherwise valid: only the hostname check refused it.
    unchecked = connect(endpoint.url, ssl_check_hostname=False, **endpoint.client_kwargs())
    try:
        assert await unchecked.ping()
    finally:
        await unchecked.aclose()
