"""Sentinel endpoints as the library parses them: ``redis+sentinel://`` URLs and config fields (no server).

One parser, ``lockless.redis.connection.parse_endpoint``, reads every form of ``redis.url``.
"""

from __future__ import annotations

import pytest
import redis.asyncio as aredis

from lockless import ConfigError, RedisConfig, RegistryConfig
from lockless.redis.connection import ConnectionFactory, parse_endpoint


def test_redis_py_itself_refuses_the_scheme() -> None:
    # Why the library parses it; if redis-py ever accepts it, reconsider using redis-py's parser.
    with pytest.raises(ValueError, match="redis://, rediss://, unix://"):
        aredis.Redis.from_url("redis+sentinel://127.0.0.1:26379/mymaster/0")


def test_full_form() -> None:
    ep = parse_endpoint(
        RedisConfig(
            url="redis+sentinel://app:s%40cret@10.0.0.1:26380,sentinel-b,[::1]:26381/my%20service/3"
            "?sentinel_password=sentinel-secret&sentinel_username=su"
        )
    )
    assert ep.sentinels == (("10.0.0.1", 26380), ("sentinel-b", 26379), ("::1", 26381))
    assert (ep.service_name, ep.db, ep.username, ep.password, ep.tls) == (
        "my service",
        3,
        "app",
        "s@cret",
        None,
    )
    assert (ep.sentinel_username, ep.sentinel_password) == ("su", "sentinel-secret")
    assert (ep.host, ep.port) == (None, None)  # asked of the sentinels at every connect
    assert "s@cret" not in repr(ep) and "sentinel-secret" not in repr(ep)
    assert ep.describe() == "redis+sentinel://10.0.0.1:26380,sentinel-b:26379,::1:26381/my service"


def test_minimal_form_defaults() -> None:
    ep = parse_endpoint(RedisConfig(url="redis+sentinel://localhost/mymaster"))
    assert ep.sentinels == (("localhost", 26379),)
    assert (ep.service_name, ep.db, ep.username, ep.password) == ("mymaster", 0, None, None)


def test_password_only_userinfo() -> None:
    ep = parse_endpoint(RedisConfig(url="redis+sentinel://:pw@h:1/m"))
    assert (ep.username, ep.password) == (None, "pw")


def test_tls_scheme_takes_the_tls_settings_of_the_url_and_the_fields() -> None:
    ep = parse_endpoint(
        RedisConfig(
            url="rediss+sentinel://h:26379/m?ssl_ca_certs=/ca.pem&ssl_check_hostname=false",
            tls_cert_file="/c.pem",
            tls_key_file="/k.pem",
        )
    )
    assert ep.tls is not None
    assert (ep.tls.ca_file, ep.tls.check_hostname, ep.tls.cert_file) == ("/ca.pem", False, "/c.pem")
    assert ep.describe() == "rediss+sentinel://h:26379/m"


def test_config_fields_instead_of_the_url() -> None:
    config = RedisConfig(
        url="rediss://u:pw@ignored:1/2?ssl_ca_certs=/ca.pem",
        sentinels=("s1:26379", "s2", "[::1]:26380"),
        sentinel_service="svc",
    )
    ep = parse_endpoint(config)
    assert ep.sentinels == (("s1", 26379), ("s2", 26379), ("::1", 26380))
    assert (ep.service_name, ep.db, ep.username, ep.password, ep.host) == ("svc", 2, "u", "pw", None)
    assert ep.tls is not None and ep.tls.ca_file == "/ca.pem"


def test_config_fields_from_a_mapping() -> None:
    config = RegistryConfig.from_mapping(
        {"redis": {"url": "redis://", "sentinels": ["a:1", "b:2"], "sentinel_service": "svc"}}
    )
    assert config.redis.sentinels == ("a:1", "b:2")
    assert parse_endpoint(config.redis).sentinels == (("a", 1), ("b", 2))


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://h:26379", "must name the service"),
        ("redis+sentinel://h:26379/", "must name the service"),
        ("redis+sentinel://h/m/0/extra", "3 segments"),
        ("redis+sentinel://h/m/x", "db must be a non-negative integer"),
        ("redis+sentinel://h:0/m", "port must be 1-65535"),
        ("redis+sentinel://h:port/m", "port must be 1-65535"),
        ("redis+sentinel://a,,b/m", "empty sentinel address"),
        ("redis+sentinel://:26379/m", "has no host"),
        ("redis+sentinel://[::1/m", "bad IPv6"),
    ],
)
def test_bad_urls_name_the_problem_and_the_form(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ConnectionFactory(RedisConfig(url=url))
    assert caught.value.field == "redis.url"
    assert problem in str(caught.value)
    assert "redis+sentinel://[[user]:password@]host[:port]" in str(caught.value)


def test_errors_never_echo_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_endpoint(RedisConfig(url="redis+sentinel://user:hunter2@h:bad/m"))
    assert "hunter2" not in str(caught.value)
    assert "user:***@h:bad" in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sentinels": ("h:1",)}, "redis.sentinel_service"),
        ({"sentinel_service": "svc"}, "redis.sentinels"),
        ({"sentinels": ("h:1",), "sentinel_service": " "}, "redis.sentinel_service"),
        # Two ways of naming the sentinels at once: which would win is not obvious, so neither.
        ({"url": "redis+sentinel://h/m", "sentinels": ("h:1",), "sentinel_service": "m"}, "redis.url"),
        ({"url": "redis+sentinel://h/m", "tls_ca_file": "/ca.pem"}, "redis.tls_ca_file"),  # no TLS scheme
        ({"url": "redis+sentinels://h/m"}, "redis.url"),
    ],
)
def test_bad_sentinel_fields_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RedisConfig(**kwargs)
    assert caught.value.field == field


def test_a_bad_sentinel_field_address_names_the_field() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_endpoint(RedisConfig(sentinels=("h:99999",), sentinel_service="m"))
    assert caught.value.field == "redis.sentinels" and "port must be 1-65535" in str(caught.value)
