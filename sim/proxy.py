"""A loopback TCP proxy that injects network faults between clients and Redis.

Stopping or pausing the server (``sim.redis_server``) models a broken Redis; this
models a broken *network*: added latency, a frozen link, cut connections, refused
connects. Clients point at :attr:`FaultProxy.url` instead of the server.

The proxy runs its own asyncio loop in a daemon thread. A test that blocks its own
thread (or its own loop) on a Redis call through the proxy therefore never stalls the
proxy, which would turn an injected fault into a deadlock. Control methods may be
called from any thread; the ones that change forwarding return only after the proxy's
loop has applied the change, so a test can rely on it from the next line on.

Each connection is two one-way pipes. A pipe reads chunks, stamps each with
``arrival + delay`` and queues it; a writer sends chunks in queue order once their
time comes. So delay adds latency without reordering and without serialising
pipelined traffic behind one sleep.

**Blackhole holds, it does not drop.** While on, pipes stop reading and writing but
keep every socket open: bytes wait in kernel buffers (or the pipe's queue) and the
peers see neither data nor FIN/RST, as with a frozen link or a partition. Turning it
off releases the held bytes in order, as TCP retransmission would after a partition
heals, so a client that is still waiting gets its late reply and the stream is never
desynchronised.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

__all__ = ["FaultProxy"]

_HOST = "127.0.0.1"
_CHUNK = 65536
_PIPE_ERRORS = (OSError, asyncio.IncompleteReadError)  # ConnectionResetError and friends are OSErrors


class _Conn:
    """One proxied connection: both writers and the task serving it, so cut() can end it."""

    def __init__(
        self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter, task: asyncio.Task[None]
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.task = task
        self.closed = asyncio.Event()

    def abort(self) -> None:
        # abort() drops the socket at once without flushing; peers see the connection die.
        self.client.transport.abort()
        self.upstream.transport.abort()
        # Cancel too: a blackholed pipe waits on the switch, not on the socket, so the
        # abort alone would not wake it.
        self.task.cancel()


class FaultProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port``, with faults on demand.

    >>> with FaultProxy("127.0.0.1", 6379) as proxy:   # doctest: +SKIP
    ...     proxy.set_delay(0.05)
    ...     redis.Redis.from_url(proxy.url).ping()
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self._delay = 0.0
        self._refuse = False
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._open: asyncio.Event | None = None  # set = forwarding; clear = blackholed
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """Listening port on 127.0.0.1, chosen free at :meth:`start`."""
        if self._port is None:
            raise RuntimeError("FaultProxy is not started")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``: hand this to clients instead of the server's URL."""
        return f"redis://{_HOST}:{self.port}/0"

    @property
    def connection_count(self) -> int:
        """Client connections currently proxied (including frozen ones)."""
        return len(self._conns)

    def start(self) -> None:
        """Start the loop thread and begin listening; returns once the port is bound."""
        if self._thread is not None:
            return
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        self._call(self._listen())

    def stop(self) -> None:
        """Close the listener and every connection, then end the loop thread."""
        if self._thread is None or self._loop is None:
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._thread = self._loop = None

    def set_delay(self, seconds: float) -> None:
        """Add ``seconds`` of latency to every chunk, in both directions (0 turns it off)."""
        if seconds < 0:
            raise ValueError(f"delay: got {seconds!r}; allowed: seconds >= 0")
        self._delay = float(seconds)  # read by the loop thread per chunk; a float store is atomic

    def blackhole(self, on: bool = True) -> None:
        """Freeze (``on``) or unfreeze all forwarding; sockets stay open and data is held, not dropped."""

        async def apply() -> None:
            assert self._open is not None
            if on:
                self._open.clear()
            else:
                self._open.set()

        self._call(apply())

    def cut(self) -> None:
        """Abort every current connection on both sides; new connections are still accepted."""

        async def apply() -> None:
            victims = list(self._conns)
            for conn in victims:
                conn.abort()
            # Wait for the handlers to finish so connection_count is exact when cut() returns.
            await asyncio.gather(*(conn.closed.wait() for conn in victims))

        self._call(apply())

    def refuse(self, on: bool = True) -> None:
        """While on, each new connection is accepted and closed at once, before any byte is forwarded."""
        self._refuse = on

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- loop-thread side -------------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._loop is None:
            coro.close()
            raise RuntimeError("FaultProxy is not started")
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _listen(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._server = await asyncio.start_server(self._accept, _HOST, 0)
        self._port = int(self._server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # so stop() can cancel handlers that are mid-connect
        try:
            if self._refuse:
                writer.transport.abort()
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                writer.transport.abort()  # target down: the client sees its connection die
                return
            conn = _Conn(writer, up_writer, task)
            self._conns.add(conn)
            try:
                # Either direction ending (EOF, reset, cut) ends the connection, as Redis
                # itself closes a client that half-closes.
                pipes = [
                    asyncio.create_task(self._pipe(reader, up_writer)),
                    asyncio.create_task(self._pipe(up_reader, writer)),
                ]
                try:
                    await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for pipe in pipes:
                        pipe.cancel()
                    await asyncio.gather(*pipes, return_exceptions=True)
            finally:
                conn.client.transport.abort()
                conn.upstream.transport.abort()
                self._conns.discard(conn)
                conn.closed.set()
        finally:
            self._tasks.discard(task)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        assert self._open is not None
        is_open = self._open

        async def read() -> None:
            try:
                while True:
                    await is_open.wait()  # blackholed: leave bytes in the kernel buffer
                    data = await src.read(_CHUNK)
                    if not data:
                        break
                    queue.put_nowait((loop.time() + self._delay, data))
            except _PIPE_ERRORS:
                pass
            finally:
                queue.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await queue.get()) is not None:
                due, data = item
                # Loop, not one sleep: asyncio may wake a timer up to a clock tick early,
                # and the delay is promised as a lower bound.
                while (remaining := due - loop.time()) > 0:
                    await asyncio.sleep(remaining)
                await is_open.wait()  # blackholed: hold chunks read before the switch
                dst.write(data)
                await dst.drain()
        except _PIPE_ERRORS:
            pass
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
