"""Scheduler instances in their own processes, apart from the harness (``harness.scheduler_processes``).

Why: the harness process replays the plan and drives every node's heartbeats; its lag
bound (DESIGN.md section 8) must measure the harness, not the system under test. A
``locked`` or ``direct`` selection reads the whole pool from Redis (10,000 HGETALLs,
~100 ms of redis-py parsing); on the harness's own event loop that CPU stalls the
heartbeat replay, and the run is INVALID for a reason that has nothing to do with the
harness. So each scheduler instance's registry runs in a spawned process of its own,
behind a request/reply socket, and the harness's :class:`RemoteRegistry` stands in for it.

What is timed where (all on CLOCK_MONOTONIC, which every process on the machine shares;
the loop clock is ``time.monotonic``):

* the harness keeps ``intended`` (the plan), ``sent`` (the request written to the
  socket) and ``done`` (the reply read back). ``latency = done - intended`` therefore
  holds everything the scheduler cost: its CPU, its lock, its queue, plus two local
  socket hops; open loop, no coordinated omission (the harness never waits for a reply
  before sending the next request);
* the scheduler stamps ``received`` and ``finished`` on each reply, so the transport's
  own share, ``(done - sent) - (finished - received)``, is recorded as the ``ipc``
  distribution and shown next to the latencies it is part of.

Frames are a 4-byte length and a pickle. Node specs and snapshots hold
``MappingProxyType`` (not picklable), so frames use a pickler that sends them as dicts.
Errors come back as their type name and message and are raised as a
:class:`RemoteCallError` subclass of the same name, so the recorder counts them by the
same names as in-process runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import copyreg
import io
import multiprocessing
import os
import pickle
import struct
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import psutil

from lockless import (
    Admission,
    Heartbeat,
    HeartbeatResult,
    LocklessError,
    Mode,
    ModeSwitch,
    NodeSnapshot,
    RegistryConfig,
    cancel_and_wait,
)

_LEN = struct.Struct("!I")
#: Registry methods the harness may call remotely (the dispatcher's whole vocabulary).
CALLS = frozenset(
    {
        "get_node",
        "select_nodes",
        "place_job",
        "register_node",
        "heartbeat_many",
        "remove_node",
        "job_start",
        "job_finish",
        "cached_view",
    }
)
#: How often the harness asks each scheduler for its mode (and mode switches).
STATUS_INTERVAL_S = 0.05
#: How long the schedulers get to import, connect back and build their registries.
CONNECT_TIMEOUT_S = 60.0


# ------------------------------------------------------------------ frames
def _proxy(data: dict[str, Any]) -> MappingProxyType[str, Any]:
    return MappingProxyType(data)


def _reduce_proxy(m: MappingProxyType[str, Any]) -> tuple[Any, ...]:
    return (_proxy, (dict(m),))


_TABLE = copyreg.dispatch_table.copy()
_TABLE[MappingProxyType] = _reduce_proxy


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` into one frame (length prefix included)."""
    buf = io.BytesIO()
    buf.write(b"\0\0\0\0")
    pickler = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _TABLE
    pickler.dump(obj)
    view = buf.getbuffer()
    _LEN.pack_into(view, 0, len(view) - 4)
    del view
    return buf.getvalue()


async def read_frame(reader: asyncio.StreamReader) -> Any:
    (size,) = _LEN.unpack(await reader.readexactly(4))
    return pickle.loads(await reader.readexactly(size))


class RemoteCallError(LocklessError):
    """An exception raised in a scheduler process; subclassed per original type name."""


_ERROR_TYPES: dict[str, type[RemoteCallError]] = {}


def _error(name: str, message: str) -> RemoteCallError:
    cls = _ERROR_TYPES.get(name)
    if cls is None:
        cls = _ERROR_TYPES[name] = type(name, (RemoteCallError,), {"__module__": __name__})
    return cls(message)


# ----------------------------------------------------------- the scheduler
def scheduler_main(
    arch: str, config_frame: bytes, instance: int, name: str, path: str, nice: int = 0, options: Any = None
) -> None:
    """Entry of a spawned scheduler process: build the registry, serve the harness until told to exit."""
    if nice:
        os.nice(nice)  # this process only: it yields the CPU to the harness, never the reverse
    config: RegistryConfig = pickle.loads(config_frame[4:])
    asyncio.run(_serve(arch, config, instance, name, path, options))


async def _serve(
    arch: str, config: RegistryConfig, instance: int, name: str, path: str, options: Any = None
) -> None:
    from sim.architectures import build  # the scheduler side only: the harness never builds registries

    registry = build(arch, config, instance=name, options=options)
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(dumps(("hello", instance, os.getpid())))
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    try:
        while True:
            try:
                req_id, method, args, kwargs = await read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                break  # the harness went away
            if method == "exit":
                break
            task = asyncio.create_task(_handle(registry, writer, loop, req_id, method, args, kwargs))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        await cancel_and_wait(list(tasks))  # a single cancel() can be swallowed by redis-py's wait_for
        with contextlib.suppress(Exception):
            await asyncio.wait_for(registry.close(), 5.0)
        writer.close()


async def _handle(
    registry: Any,
    writer: asyncio.StreamWriter,
    loop: asyncio.AbstractEventLoop,
    req_id: int,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    received = loop.time()
    try:
        if method in CALLS:
            value = await getattr(registry, method)(*args, **kwargs)
        elif method == "start":
            value = await registry.start()
        elif method == "close":
            value = await registry.close()
        elif method == "status":
            (seen,) = args
            value = (registry.mode, registry.mode_switches()[seen:], registry.take_replay_rejections())
        elif method == "metrics":
            snap = registry.metrics()
            value = (dict(snap.encoded), dict(snap.counters))
        else:
            raise ValueError(f"unknown method {method!r}")
        reply = (req_id, True, value, received, loop.time(), registry.last_sync_age())
    except Exception as exc:
        reply = (
            req_id, False, (type(exc).__name__, str(exc)), received, loop.time(), registry.last_sync_age()
        )
    try:
        frame = dumps(reply)
    except Exception as exc:  # an unpicklable result is a harness bug: say so, do not hang the caller
        frame = dumps((req_id, False, ("RemoteFrameError", repr(exc)), received, loop.time(), 0.0))
    writer.write(frame)


# ------------------------------------------------------------- the harness
class RemoteRegistry:
    """The harness's stand-in for one scheduler instance running in its own process.

    Implements what the dispatcher, the monitors and the runner use of ``Registry``;
    every I/O method is one request and one reply, never waiting for earlier replies.
    """

    def __init__(
        self,
        *,
        name: str,
        instance: int,
        pid: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.name = name
        self.instance = instance
        self.pid = pid
        self._reader, self._writer = reader, writer
        self._pending: dict[int, tuple[asyncio.Future[Any], float]] = {}
        self._next_id = 0
        self._mode = Mode.NORMAL
        self._switches: tuple[ModeSwitch, ...] = ()
        self._rejections: list[Admission] = []
        self._sync_age = 0.0
        self._loop = asyncio.get_running_loop()
        self._reader_task = asyncio.create_task(self._read_replies())
        self._status_task: asyncio.Task[None] | None = None
        #: Called with the transport overhead (s) of every reply; the runner points it at the recorder.
        self.on_ipc: Callable[[float], None] | None = None

    # ----------------------------------------------------------- transport
    def _send(self, method: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None):
        if self._reader_task.done():
            raise _error("RemoteGone", f"scheduler {self.instance} (pid {self.pid}) is gone")
        self._next_id += 1
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._pending[self._next_id] = (fut, self._loop.time())
        self._writer.write(dumps((self._next_id, method, args, kwargs or {})))
        return fut

    async def _read_replies(self) -> None:
        try:
            while True:
                req_id, ok, value, received, finished, sync_age = await read_frame(self._reader)
                fut, sent = self._pending.pop(req_id)
                self._sync_age = sync_age
                if self.on_ipc is not None:
                    self.on_ipc(max(0.0, (self._loop.time() - sent) - (finished - received)))
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(_error(*value))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            gone = _error("RemoteGone", f"scheduler {self.instance} (pid {self.pid}) closed its socket")
            for fut, _ in self._pending.values():
                if not fut.done():
                    fut.set_exception(gone)
            self._pending.clear()

    # ----------------------------------------------------------- lifecycle
    async def start(self) -> None:
        await self._send("start")
        self._status_task = asyncio.create_task(self._poll_status())

    async def close(self) -> None:
        if self._status_task is not None:
            await cancel_and_wait([self._status_task])
            self._status_task = None
        with contextlib.suppress(LocklessError):
            await self._send("close")

    async def exit(self) -> None:
        """Tell the process to leave its serve loop (it then closes its registry and ends)."""
        with contextlib.suppress(Exception):
            self._writer.write(dumps((0, "exit", (), {})))
            await self._writer.drain()
            self._writer.close()
        await cancel_and_wait([self._reader_task])

    async def _poll_status(self) -> None:
        while True:
            with contextlib.suppress(LocklessError):
                self._mode, new, rejections = await self._send("status", (len(self._switches),))
                if new:
                    self._switches = (*self._switches, *new)
                self._rejections += rejections
            await asyncio.sleep(STATUS_INTERVAL_S)

    # -------------------------------------------------------------- status
    @property
    def mode(self) -> Mode:
        """The mode at the last status poll (every :data:`STATUS_INTERVAL_S`)."""
        return self._mode

    def mode_switches(self) -> tuple[ModeSwitch, ...]:
        """The switches known at the last status poll."""
        return self._switches

    def take_replay_rejections(self) -> list[Admission]:
        """Replay rejections collected by the status polls since the last call."""
        taken, self._rejections = self._rejections, []
        return taken

    def last_sync_age(self) -> float:
        """The scheduler's ``last_sync_age()`` as of its most recent reply (not re-read per call)."""
        return self._sync_age

    async def cached_view(self, pool: str) -> Mapping[str, NodeSnapshot] | None:
        return await self._send("cached_view", (pool,))

    async def fetch_metrics(self) -> tuple[dict[str, bytes], dict[str, int]]:
        """The registry's encoded histograms and counters."""
        return await self._send("metrics")

    # ------------------------------------------------------------ registry
    async def get_node(self, pool: str, node_id: str) -> Any:
        return await self._send("get_node", (pool, node_id))

    async def select_nodes(self, pool: str, count: int = 1, requirements: Any = None, *, policy=None) -> Any:
        return await self._send("select_nodes", (pool, count, requirements), {"policy": policy})

    async def place_job(self, pool: str, job_id: str, requirements: Any = None, *, policy=None) -> Any:
        return await self._send("place_job", (pool, job_id, requirements), {"policy": policy})

    async def register_node(self, spec: Any) -> int:
        return await self._send("register_node", (spec,))

    async def heartbeat_many(self, beats: Sequence[Heartbeat]) -> list[HeartbeatResult]:
        return await self._send("heartbeat_many", (list(beats),))

    async def remove_node(self, pool: str, node_id: str) -> bool:
        return await self._send("remove_node", (pool, node_id))

    async def job_start(self, pool: str, node_id: str, job_id: str) -> Any:
        return await self._send("job_start", (pool, node_id, job_id))

    async def job_finish(self, pool: str, node_id: str, job_id: str) -> bool:
        return await self._send("job_finish", (pool, node_id, job_id))


class SchedulerProcesses:
    """Spawns one process per scheduler instance and connects a :class:`RemoteRegistry` to each."""

    def __init__(
        self, arch: str, configs: dict[int, RegistryConfig], *, nice: int = 0, options: Any = None
    ) -> None:
        """``options``: the baselines' ``BaselineOptions`` (sim.architectures), handed to each process."""
        self.arch = arch
        self.nice = nice
        self.options = options
        self.configs = configs
        self.procs: dict[int, multiprocessing.process.BaseProcess] = {}
        self.registries: dict[int, RemoteRegistry] = {}
        self._dir = tempfile.TemporaryDirectory(prefix="lockless-sched-")
        self._server: asyncio.AbstractServer | None = None
        self._cpu0: dict[int, float] = {}

    async def start(self) -> dict[int, RemoteRegistry]:
        path = str(Path(self._dir.name) / "harness.sock")
        hellos: asyncio.Queue[tuple[Any, asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                hellos.put_nowait((await read_frame(reader), reader, writer))
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        self._server = await asyncio.start_unix_server(accept, path)
        ctx = multiprocessing.get_context("spawn")
        for k, cfg in self.configs.items():
            proc = ctx.Process(
                target=scheduler_main,
                args=(self.arch, dumps(cfg), k, f"{self.arch}-{k}", path, self.nice, self.options),
                name=f"scheduler-{self.arch}-{k}",
                daemon=True,
            )
            proc.start()
            self.procs[k] = proc
        deadline = self._loop_time() + CONNECT_TIMEOUT_S
        while len(self.registries) < len(self.procs):
            try:
                hello, reader, writer = await asyncio.wait_for(hellos.get(), timeout=0.5)
            except TimeoutError:
                dead = [k for k, p in self.procs.items() if not p.is_alive()]
                if dead or self._loop_time() > deadline:
                    await self.stop()
                    why = f"exited (code {self.procs[dead[0]].exitcode})" if dead else "did not connect"
                    raise LocklessError(f"scheduler process {dead[0] if dead else '?'} {why}") from None
                continue
            _, k, pid = hello
            self.registries[k] = RemoteRegistry(
                name=self.arch, instance=k, pid=pid, reader=reader, writer=writer
            )
        return dict(sorted(self.registries.items()))

    @staticmethod
    def _loop_time() -> float:
        return asyncio.get_running_loop().time()

    def cpu_mark(self) -> None:
        """Remember every scheduler process's CPU time now (see :meth:`cpu_seconds`)."""
        self._cpu0 = {k: _cpu_of(p.pid) for k, p in self.procs.items()}

    def cpu_seconds(self) -> dict[int, float]:
        """CPU seconds each scheduler process used since :meth:`cpu_mark`."""
        return {k: _cpu_of(p.pid) - self._cpu0.get(k, 0.0) for k, p in self.procs.items()}

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Ask every scheduler to exit, wait for it, and end (by pid) any that does not."""
        await asyncio.gather(*(r.exit() for r in self.registries.values()), return_exceptions=True)
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            await asyncio.to_thread(proc.join, max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()  # only ever a process this object started
                await asyncio.to_thread(proc.join, 5.0)
        if self._server is not None:
            self._server.close()
            self._server = None
        self._dir.cleanup()


def _cpu_of(pid: int | None) -> float:
    with contextlib.suppress(psutil.Error, TypeError):
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    return 0.0
