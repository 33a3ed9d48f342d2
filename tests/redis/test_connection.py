"""The one connection factory: parsing the endpoint once, and both paths built from it.

TLS against a real TLS endpoint is in tests/tls; here: what the factory makes of a URL and
the config (with clear errors naming the field), a Unix socket for commands and events,
and a connect failure at start that is one clear error instead of a subscription timeout.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import redis

from lockless import LocklessRegistry, NodeSpec, RedisUnavailable, TlsError
from lockless.config import RedisConfig
from lockless.errors import ConfigError
from lockless.redis.connection import ConnectionFactory, parse_endpoint
from sim.redis_server import RedisServer
from tests.support import eventually, fast_config


def test_a_tcp_url_with_credentials_and_db() -> None:
    ep = parse_endpoint(RedisConfig(url="redis://sched:s%20cret@cache.internal:6380/2"))
    assert (ep.host, ep.port, ep.db, ep.username, ep.password, ep.tls) == (
        "cache.internal",
        6380,
        2,
        "sched",
        "s cret",
        None,
    )
    assert ep.describe() == "redis://cache.internal:6380"


def test_a_unix_socket_url() -> None:
    ep = parse_endpoint(RedisConfig(url="unix:///run/redis.sock?db=3"))
    assert (ep.path, ep.db, ep.host) == ("/run/redis.sock", 3, None)


def test_tls_settings_come_from_the_url_query_in_redis_py_spelling() -> None:
    ep = parse_endpoint(
        RedisConfig(
            url="rediss://r:6379/0?ssl_ca_certs=/ca.pem&ssl_cert_reqs=optional&ssl_check_hostname=false"
        )
    )
    assert ep.tls is not None
    assert (ep.tls.ca_file, ep.tls.verify, ep.tls.check_hostname) == ("/ca.pem", "optional", False)


def test_config_fields_win_over_the_url_and_hostnames_are_checked_by_default() -> None:
    ep = parse_endpoint(RedisConfig(url="rediss://r:6379/0?ssl_ca_certs=/url.pem", tls_ca_file="/field.pem"))
    assert ep.tls is not None
    assert (ep.tls.ca_file, ep.tls.verify, ep.tls.check_hostname) == ("/field.pem", "required", True)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"url": "redis://r:6379/0", "tls_ca_file": "/ca.pem"}, "redis.tls_ca_file"),  # TLS field, no TLS
        ({"url": "rediss://r:6379/0", "tls_verify": "sometimes"}, "redis.tls_verify"),
        ({"url": "rediss://r:6379/0?ssl_cert_reqs=sometimes"}, "redis.tls_verify"),
        (
            {"url": "rediss://r:6379/0", "tls_verify": "none", "tls_check_hostname": True},
            "redis.tls_check_hostname",
        ),
        ({"url": "rediss://r:6379/0", "tls_cert_file": "/c.pem"}, "redis.tls_key_file"),
        ({"url": "rediss://r:6379/0?ssl_check_hostname=maybe"}, "redis.url ssl_check_hostname"),
        ({"url": "redis://r:6379/zero"}, "redis.url"),
    ],
)
def test_bad_connection_settings_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        ConnectionFactory(RedisConfig(**kwargs))
    assert info.value.field == field


def test_an_unreadable_ca_file_names_the_field(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError) as info:
        ConnectionFactory(RedisConfig(url="rediss://r:6379/0", tls_ca_file=str(missing)))
    assert info.value.field == "redis.tls_ca_file" and "readable PEM" in info.value.allowed


def test_one_ssl_context_for_commands_and_events() -> None:
    factory = ConnectionFactory(
        RedisConfig(url="rediss://r:6379/0", tls_verify="none", tls_check_hostname=False)
    )
    assert isinstance(factory.tls_context, ssl.SSLContext)
    assert factory.tls_context.verify_mode is ssl.CERT_NONE
    client = factory.command_client()
    # The pool hands the factory's context object itself to every connection it makes.
    assert client.connection_pool.connection_kwargs["tls_context"] is factory.tls_context


async def test_commands_and_events_over_a_unix_socket(tmp_path: Path, ns: str) -> None:
    sock = tmp_path / "redis.sock"
    with RedisServer(extra_args=["--unixsocket", str(sock), "--unixsocketperm", "700"]) as server:
        assert server.running
        config = fast_config(f"unix://{sock}", ns)
        async with LocklessRegistry(config, instance="a") as a, LocklessRegistry(config, instance="b") as b:
            await a.register_node(NodeSpec(node_id="n1", pool="p", max_jobs=2))
            assert (await b.job_start("p", "n1", "j1")).admitted
            await eventually(
                lambda: (n := a.cached("p", "n1")) is not None and n.current_jobs == 1, 3.0, "event"
            )


async def test_nothing_listening_is_one_clear_error_at_start(ns: str) -> None:
    with RedisServer() as server:
        url = server.url
    registry = LocklessRegistry(fast_config(url, ns), instance="a")  # the server is gone now
    with pytest.raises(RedisUnavailable, match=r"cannot reach redis://127\.0\.0\.1:\d+: .*(Refused|refused)"):
        await registry.start(timeout=10.0)
    await registry.close()


def test_tls_errors_name_each_setting_as_the_user_wrote_it() -> None:
    from_url = parse_endpoint(RedisConfig(url="rediss://r:6379/0?ssl_ca_certs=/ca.pem")).tls
    from_field = parse_endpoint(RedisConfig(url="rediss://r:6379/0", tls_ca_file="/ca.pem")).tls
    assert from_url is not None and from_field is not None
    assert from_url.setting("tls_ca_file") == "ssl_ca_certs in redis.url"
    assert from_field.setting("tls_ca_file") == "redis.tls_ca_file"
    # Set nowhere: both spellings, since either is how the user would fix it.
    assert from_field.setting("tls_cert_file") == "redis.tls_cert_file (or ssl_certfile in redis.url)"


async def test_a_rediss_url_to_a_plaintext_server_is_a_tls_error(ns: str) -> None:
    with RedisServer() as server:
        url = f"rediss://127.0.0.1:{server.port}/0"
        registry = LocklessRegistry(fast_config(url, ns), instance="a")
        # A plaintext Redis waits for the end of a line that a TLS hello never sends.
        expected = r"TLS to rediss://127\.0\.0\.1:\d+: no answer to the TLS handshake.*serve TLS"
        with pytest.raises(TlsError, match=expected):
            await registry.start(timeout=10.0)
        await registry.close()


def test_a_write_held_by_wait_is_not_timed_out() -> None:
    # A reply WAIT holds for wait_timeout_ms must not be cut off by the socket timeout: the call
    # would be retried on a new connection, whose WAIT covers none of the first attempt's writes
    # (seen in tests/cluster: a paused replica's WAIT then answered 1, a write looked replicated).
    url = "redis://127.0.0.1:6379/0"
    plain = RedisConfig(url=url, socket_timeout_s=0.25)
    waiting = RedisConfig(url=url, socket_timeout_s=0.25, wait_replicas=1, wait_timeout_ms=200)

    def timeout_of(cfg: RedisConfig) -> float:
        return ConnectionFactory(cfg).command_client().connection_pool.connection_kwargs["socket_timeout"]

    assert timeout_of(plain) == 0.25
    assert timeout_of(waiting) == pytest.approx(0.45)


async def test_a_closed_registry_leaves_no_connection_open(fault_server: RedisServer) -> None:
    # A scheduler that restarts its registry (new config, tests, a reload) must not leak one
    # socket on the server per restart: every command connection and the subscriber close.
    admin = redis.Redis.from_url(fault_server.url, decode_responses=True)

    def others() -> list[dict]:
        return [c for c in admin.client_list() if c["id"] != str(admin.client_id())]

    assert others() == []
    registry = LocklessRegistry(fast_config(fault_server.url, "closing"), instance="a")
    await registry.start()
    await registry.register_node(NodeSpec(node_id="n1", pool="p", max_jobs=2))
    assert (await registry.job_start("p", "n1", "j1")).admitted
    assert len(others()) >= 2  # commands and the subscriber
    await registry.close()
    try:
        await eventually(lambda: others() == [], 5.0, "the server to see every registry connection closed")
    finally:
        admin.close()
