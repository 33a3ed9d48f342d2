"""``redis+sentinel://`` parsing (pure: no server)."""

from __future__ import annotations

import pytest
import redis.asyncio as aredis

from lockless import ConfigError
from sim.sentinel_url import parse_sentinel_url


def test_redis_py_itself_refuses_the_scheme() -> None:
    # Why the parser exists; if redis-py ever accepts it, reconsider using redis-py's instead.
    with pytest.raises(ValueError, match="redis://, rediss://, unix://"):
        aredis.Redis.from_url("redis+sentinel://127.0.0.1:26379/mymaster/0")


def test_full_form() -> None:
    url = parse_sentinel_url(
        "redis+sentinel://app:s%40cret@10.0.0.1:26380,sentinel-b,[::1]:26381/my%20service/3"
        "?socket_timeout=0.5&sentinel_password=sp&sentinel_username=su"
    )
    assert url.sentinels == (("10.0.0.1", 26380), ("sentinel-b", 26379), ("::1", 26381))
    assert (url.service_name, url.db, url.username, url.password, url.tls) == (
        "my service",
        3,
        "app",
        "s@cret",
        False,
    )
    kwargs = url.connection_kwargs()
    assert kwargs["socket_timeout"] == 0.5  # typed by redis-py's own URL parser
    assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (3, "app", "s@cret")
    assert "sentinel_password" not in kwargs and "connection_class" not in kwargs and "ssl" not in kwargs
    assert url.sentinel_kwargs() == {"socket_timeout": 0.5, "username": "su", "password": "sp"}
    assert "s@cret" not in repr(url)


def test_minimal_form_defaults() -> None:
    url = parse_sentinel_url("redis+sentinel://localhost/mymaster")
    assert url.sentinels == (("localhost", 26379),)
    assert (url.service_name, url.db, url.username, url.password) == ("mymaster", 0, None, None)
    assert url.connection_kwargs() == {"db": 0}
    assert url.sentinel_kwargs() == {}


def test_password_only_userinfo() -> None:
    url = parse_sentinel_url("redis+sentinel://:pw@h:1/m")
    assert (url.username, url.password) == (None, "pw")


def test_tls_scheme_applies_to_nodes_and_sentinels() -> None:
    url = parse_sentinel_url("rediss+sentinel://h:26379/m?ssl_ca_certs=/ca.pem&ssl_check_hostname=false")
    assert url.tls
    kwargs = url.connection_kwargs()
    assert (
        kwargs["ssl"] is True
        and kwargs["ssl_ca_certs"] == "/ca.pem"
        and kwargs["ssl_check_hostname"] is False
    )
    assert url.sentinel_kwargs() == {"ssl": True, "ssl_ca_certs": "/ca.pem", "ssl_check_hostname": False}


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://h:26379/m", "scheme must be one of"),
        ("sentinel://h/m", "scheme must be one of"),
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
        parse_sentinel_url(url)
    assert caught.value.field == "url"
    assert problem in str(caught.value)
    assert "redis+sentinel://[[user]:password@]host[:port]" in str(caught.value)


def test_errors_never_echo_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_sentinel_url("redis+sentinel://user:hunter2@h:bad/m")
    assert "hunter2" not in str(caught.value)
    assert "user:***@h:bad" in str(caught.value)
