"""FaultProxy in front of a real redis-server: forwarding, delay, blackhole, cut, refuse.

Timing assertions are lower bounds only; an upper bound would flake on a busy machine.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from sim.proxy import FaultProxy
from sim.redis_server import RedisServer


def client(url: str, timeout: float = 2.0) -> redis.Redis:
    # No retries: redis-py would otherwise reconnect and hide the fault under test.
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


def raw_connection(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=2.0)
    sock.sendall(b"PING\r\n")
    assert sock.recv(64) == b"+PONG\r\n"
    return sock


def test_forwards_commands(
    proxy: FaultProxy, fault_server: RedisServer, wait_until: Callable[..., None]
) -> None:
    c = client(proxy.url)
    c.set("k", "v")
    assert c.get("k") == b"v"
    assert client(fault_server.url).get("k") == b"v"
    wait_until(lambda: proxy.connection_count == 1, what="one proxied connection")


def test_delay_adds_latency_both_ways(proxy: FaultProxy) -> None:
    c = client(proxy.url)
    c.ping()  # connect before timing
    delay = 0.15
    proxy.set_delay(delay)
    started = time.monotonic()
    assert c.ping()
    assert time.monotonic() - started >= 2 * delay  # request and reply each wait `delay`
    proxy.set_delay(0)
    assert c.ping()


def test_delay_preserves_order_of_pipelined_commands(proxy: FaultProxy, ns: str) -> None:
    proxy.set_delay(0.01)
    pipe = client(proxy.url).pipeline(transaction=False)
    for _ in range(200):
        pipe.incr(f"{ns}:n")
    assert pipe.execute() == list(range(1, 201))


def test_delay_rejects_negative(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="seconds >= 0"):
        proxy.set_delay(-1)


def test_blackhole_holds_link_open_and_releases_in_order(proxy: FaultProxy) -> None:
    with raw_connection(proxy) as sock:
        proxy.blackhole()
        sock.sendall(b"ECHO held\r\n")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):  # no reply, and no EOF or reset either
            sock.recv(64)
        assert proxy.connection_count == 1
        proxy.blackhole(False)
        sock.settimeout(2.0)
        assert sock.recv(64) == b"$4\r\nheld\r\n"  # held, not dropped


def test_blackhole_times_out_clients_and_recovers(proxy: FaultProxy, wait_until: Callable[..., None]) -> None:
    c = client(proxy.url, timeout=0.3)
    assert c.ping()
    proxy.blackhole()
    with pytest.raises(redis.TimeoutError):
        c.ping()
    # New connections are accepted but see nothing either.
    with pytest.raises(redis.TimeoutError):
        client(proxy.url, timeout=0.3).ping()
    wait_until(lambda: proxy.connection_count >= 1, what="frozen connections kept open")
    proxy.blackhole(False)
    assert client(proxy.url, timeout=2.0).ping()


def test_cut_breaks_inflight_command_and_accepts_new_ones(
    proxy: FaultProxy, fault_server: RedisServer, ns: str, wait_until: Callable[..., None]
) -> None:
    admin = client(fault_server.url)
    blocked = client(proxy.url, timeout=10.0)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(blocked.blpop, [f"{ns}:never"], 5)
        wait_until(lambda: admin.info("clients")["blocked_clients"] == 1, what="BLPOP to block")
        proxy.cut()
        with pytest.raises(redis.ConnectionError):
            future.result(timeout=5.0)
    assert proxy.connection_count == 0
    assert client(proxy.url).ping()


def test_cut_ends_blackholed_connections(proxy: FaultProxy) -> None:
    with raw_connection(proxy) as sock:
        proxy.blackhole()
        proxy.cut()  # must not wait for the frozen pipes to wake
        assert proxy.connection_count == 0
        sock.settimeout(2.0)
        with contextlib.suppress(ConnectionResetError):  # a reset is as good as a FIN here
            assert sock.recv(64) == b""
    proxy.blackhole(False)
    assert client(proxy.url).ping()


def test_refuse_closes_new_connections(proxy: FaultProxy) -> None:
    proxy.refuse()
    with pytest.raises(redis.ConnectionError):
        client(proxy.url).ping()
    assert proxy.connection_count == 0
    proxy.refuse(False)
    assert client(proxy.url).ping()


def test_target_down_closes_client_connection(fault_server: RedisServer) -> None:
    with FaultProxy(fault_server.host, fault_server.port) as fault_proxy:
        fault_server.stop()
        with pytest.raises(redis.ConnectionError):
            client(fault_proxy.url).ping()


def test_stop_closes_listener_and_connections(fault_server: RedisServer) -> None:
    fault_proxy = FaultProxy(fault_server.host, fault_server.port)
    fault_proxy.start()
    sock = raw_connection(fault_proxy)
    fault_proxy.stop()
    with sock:
        sock.settimeout(2.0)
        with contextlib.suppress(ConnectionResetError):  # a reset is as good as a FIN here
            assert sock.recv(64) == b""  # closed by the proxy
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", fault_proxy.port), timeout=2.0)
