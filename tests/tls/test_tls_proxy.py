"""TlsProxy itself: many connections at once, clean closes on both sides, failures recorded.

And the native-TLS probe's negative answer, on a binary known to be built without TLS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.retry import Retry as SyncRetry

from sim.redis_server import RedisServer, ServerKind, find_server
from sim.tls import TlsFiles, TlsProxy, probe_native_tls
from tests.support import eventually
from tests.tls.conftest import TlsCerts


def connect(proxy: TlsProxy, certs: TlsCerts, **kwargs: object) -> aredis.Redis:
    settings: dict[str, object] = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0}
    # No retries: a reconnect would hide the very close under test.
    settings |= {"ssl_ca_certs": str(certs.ca), "retry": Retry(NoBackoff(), 0)} | kwargs
    return aredis.Redis.from_url(proxy.url, **settings)


@pytest.fixture
def tls_proxy(fault_server: RedisServer, tls_certs: TlsCerts) -> Iterator[TlsProxy]:
    files = TlsFiles(certfile=tls_certs.server_cert, keyfile=tls_certs.server_key)
    with TlsProxy(fault_server.host, fault_server.port, files) as proxy:
        yield proxy


def clients_of(server: RedisServer) -> int:
    return int(server.info("clients")["connected_clients"])


async def test_many_concurrent_connections_and_subscribers(tls_proxy: TlsProxy, tls_certs: TlsCerts) -> None:
    writers, increments, subscribers, messages = 40, 20, 10, 20
    clients = [connect(tls_proxy, tls_certs) for _ in range(writers)]
    listeners = [connect(tls_proxy, tls_certs).pubsub() for _ in range(subscribers)]
    try:
        for pubsub in listeners:
            await pubsub.subscribe("proxy:events")
            assert (await pubsub.get_message(timeout=5.0))["type"] == "subscribe"

        async def work(client: aredis.Redis) -> None:
            for _ in range(increments):
                await client.incr("proxy:counter")

        await asyncio.gather(*(work(c) for c in clients))
        assert int(await clients[0].get("proxy:counter")) == writers * increments
        for i in range(messages):
            assert await clients[0].publish("proxy:events", str(i)) == subscribers

        async def drain(pubsub: aredis.client.PubSub) -> list[bytes]:
            got = []
            while len(got) < messages:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                assert message is not None, f"message {len(got)} of {messages} did not arrive"
                got.append(message["data"])
            return got

        expected = [str(i).encode() for i in range(messages)]
        assert await asyncio.gather(*(drain(p) for p in listeners)) == [expected] * subscribers
        assert tls_proxy.active_connections == writers + subscribers
        assert tls_proxy.handshake_failures == ()
    finally:
        for pubsub in listeners:
            await pubsub.aclose()
        for client in clients:
            await client.aclose()


async def test_client_close_closes_its_redis_connection(
    tls_proxy: TlsProxy, tls_certs: TlsCerts, fault_server: RedisServer
) -> None:
    before = await asyncio.to_thread(clients_of, fault_server)
    client = connect(tls_proxy, tls_certs)
    assert await client.ping()
    assert await asyncio.to_thread(clients_of, fault_server) == before + 1
    await client.aclose()

    async def gone() -> None:
        await eventually(lambda: tls_proxy.active_connections == 0, what="proxy to drop the connection")

    await gone()
    assert await asyncio.to_thread(clients_of, fault_server) == before


async def test_server_death_reaches_the_client_as_a_closed_connection(
    tls_proxy: TlsProxy, tls_certs: TlsCerts, fault_server: RedisServer
) -> None:
    client = connect(tls_proxy, tls_certs, socket_timeout=30.0)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe("proxy:events")
        assert (await pubsub.get_message(timeout=5.0))["type"] == "subscribe"
        await asyncio.to_thread(fault_server.kill)
        # A hang would last socket_timeout (30 s); a closed connection fails at once.
        started = asyncio.get_running_loop().time()
        with pytest.raises(redis.ConnectionError):
            await pubsub.get_message(timeout=20.0)
        assert asyncio.get_running_loop().time() - started < 20.0
        await eventually(lambda: tls_proxy.active_connections == 0, what="proxy to close both sides")
    finally:
        await pubsub.aclose()
        await client.aclose()


async def test_failed_handshakes_are_recorded_and_never_reach_redis(
    fault_server: RedisServer, tls_certs: TlsCerts
) -> None:
    files = TlsFiles(certfile=tls_certs.server_cert, keyfile=tls_certs.server_key, client_ca=tls_certs.ca)
    before = await asyncio.to_thread(clients_of, fault_server)
    with TlsProxy(fault_server.host, fault_server.port, files) as proxy:
        client = connect(proxy, tls_certs)  # no client certificate
        with pytest.raises(redis.ConnectionError):
            await client.ping()
        await client.aclose()
        await eventually(lambda: len(proxy.handshake_failures) == 1, what="the failure to be recorded")
        assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in proxy.handshake_failures[0]
        assert await asyncio.to_thread(clients_of, fault_server) == before
        with_cert = connect(
            proxy, tls_certs, ssl_certfile=str(tls_certs.client_cert), ssl_keyfile=str(tls_certs.client_key)
        )
        assert await with_cert.ping()
        await with_cert.aclose()
        assert proxy.accepted_connections == 2


def test_stop_closes_live_connections(
    fault_server: RedisServer, tls_certs: TlsCerts, wait_until: Callable[..., None]
) -> None:
    files = TlsFiles(certfile=tls_certs.server_cert, keyfile=tls_certs.server_key)
    proxy = TlsProxy(fault_server.host, fault_server.port, files)
    proxy.start()
    client = redis.Redis.from_url(
        proxy.url, ssl_ca_certs=str(tls_certs.ca), socket_timeout=30.0, retry=SyncRetry(NoBackoff(), 0)
    )
    assert client.ping()
    wait_until(lambda: clients_of(fault_server) == 2, what="the proxied connection and the probe")
    proxy.stop()
    with pytest.raises(redis.ConnectionError):
        client.ping()  # closed, not hanging for socket_timeout
    wait_until(lambda: clients_of(fault_server) == 1, what="Redis to see the proxied connection close")
    client.close()


@pytest.mark.parametrize(
    ("kind", "complaint"),
    [(ServerKind.REDIS, "Bad directive"), (ServerKind.VALKEY, "Failed finding TLS support")],
)
def test_probe_says_no_for_builds_without_tls(tls_certs: TlsCerts, kind: ServerKind, complaint: str) -> None:
    # Both embedded servers are built without TLS, and fail differently: 6.2 rejects the
    # tls-port directive, 7.x-style builds (Valkey) accept it and exit at start.
    files = TlsFiles(certfile=tls_certs.server_cert, keyfile=tls_certs.server_key)
    probe = probe_native_tls(find_server(kind), files, ca_certs=tls_certs.ca)
    assert not probe.supported
    assert complaint in probe.reason, probe.reason


def test_unknown_refusal_is_refused(tls_certs: TlsCerts) -> None:
    files = TlsFiles(certfile=tls_certs.server_cert, keyfile=tls_certs.server_key)
    with pytest.raises(ValueError, match="refusal: got 'drop'; allowed: alert, reset"):
        TlsProxy("127.0.0.1", 6379, files, refusal="drop")
