"""The event subscription of one instance: messages in, link health out.

One task owns one pub/sub connection subscribed to the events channel of every served
pool. It turns what happens on that connection into calls on a :class:`SubscriberSink`
(the registry), and decides nothing about caching itself.

Why the link is checked by hand (DESIGN.md section 5.4): redis-py's health check sends a
PING but never waits for the PONG, so a frozen server (SIGSTOP) or a half-open socket
(a network path that silently drops packets) looks like a quiet channel forever. Here
the subscriber sends its own PING every ``ping_interval_s`` on the subscription and
declares the link dead when no PONG arrives within ``pong_timeout_s``.

Why reconnects are done here and not by redis-py: after a connection error redis-py's
``PubSub`` silently reconnects and re-subscribes, and events published in between are
simply gone. So every connection is used for one session only; on any error the
session ends, the sink is told the stream was lost, and a fresh connection is made
after a jittered exponential backoff. A ``subscribe`` confirmation beyond the first
one per channel (a silent re-subscribe, should one still happen) is treated the same
way: a possible gap, so the sink catches up.

Why not redis-py's ``PubSub``: measured here, its per-message path (timeouts, retry
wrappers, observability hooks) cost over 100 us of CPU per message, more than decoding
and applying the event. The session speaks RESP over a plain asyncio stream instead:
one ``read`` drains every message the socket holds into ``hiredis.Reader``, so a
burst of events costs one wake-up. The stream itself (address, TLS with the same SSL
context as the command pool, ACL user and password) comes from the instance's one
:class:`~lockless.redis.connection.ConnectionFactory`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from typing import Protocol

import hiredis

from lockless.aio import cancel_and_wait
from lockless.config import SubscriberConfig
from lockless.redis.connection import ConnectionFactory

log = logging.getLogger(__name__)


class LinkDead(Exception):
    """The subscription stopped answering its PINGs (internal; never escapes the task)."""


class SubscriberSink(Protocol):
    """What the subscriber reports to (implemented by the registry)."""

    def on_message(self, channel: str, data: bytes) -> None:
        """One published message (raw bytes, decoded by the sink), in arrival order."""

    def on_subscribed(self, reconnect: bool, pools: frozenset[str] | None = None) -> None:
        """Every channel (of ``pools``; None: every pool's) is subscribed; ``reconnect`` is False only
        the first time."""

    def on_stream_lost(self, reason: str, pools: frozenset[str] | None = None) -> None:
        """The subscription (of ``pools``; None: all) is gone (error, dead link, silent re-subscribe):
        events may be missing."""

    def on_pong(self, rtt_s: float, pools: frozenset[str] | None = None) -> None:
        """The server answered a liveness PING on the subscription (carrying ``pools``; None: all)."""


class Subscriber:
    """Runs the subscription sessions until :meth:`stop`."""

    def __init__(
        self,
        connections: ConnectionFactory,
        config: SubscriberConfig,
        channels: Sequence[str],
        sink: SubscriberSink,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.connections = connections
        self.redis_config = connections.config
        self.config = config
        self.channels = tuple(channels)
        self.sink = sink
        self._rng = rng or random.Random()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._sessions = 0
        self.connected = asyncio.Event()

    def is_up(self, pool: str) -> bool:
        """Whether ``pool``'s events arrive now: one subscription carries every pool."""
        return self.connected.is_set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="lockless-subscriber")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                await self._session()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure ends the session; the next one starts clean
                self.connected.clear()
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                log.warning("event subscription lost (%s); reconnecting", reason)
                self.sink.on_stream_lost(reason)
                failures += 1
            # Full jitter: instances that lost the same server must not reconnect in lockstep.
            cap = min(self.config.reconnect_max_s, self.config.reconnect_base_s * 2 ** min(failures, 16))
            await asyncio.sleep(self._rng.uniform(0, cap) if failures else self.config.reconnect_base_s)

    async def _session(self) -> None:
        loop = asyncio.get_running_loop()
        reader, writer = await self.connections.open_stream()
        parser = hiredis.Reader()
        try:
            writer.write(_pack(b"SUBSCRIBE", *(c.encode() for c in self.channels)))
            confirmed: set[str] = set()
            ping_sent: float | None = None
            next_ping = loop.time() + self.config.ping_interval_s
            # Until every channel is confirmed the session is not trusted; bound that wait too.
            confirm_deadline = loop.time() + self.config.pong_timeout_s + self.redis_config.socket_timeout_s
            while not self._stopping:
                now = loop.time()
                if len(confirmed) < len(self.channels) and now > confirm_deadline:
                    raise LinkDead("subscribe not confirmed in time")
                if ping_sent is not None and now - ping_sent > self.config.pong_timeout_s:
                    raise LinkDead(f"no PONG within {self.config.pong_timeout_s:.3f} s")
                if ping_sent is None and now >= next_ping:
                    writer.write(_PING)
                    ping_sent = now
                wake = (ping_sent + self.config.pong_timeout_s) if ping_sent is not None else next_ping
                try:
                    async with asyncio.timeout(max(0.001, wake - loop.time())):
                        chunk = await reader.read(1 << 16)
                except TimeoutError:
                    continue
                if not chunk:
                    raise ConnectionError("connection closed by server")
                parser.feed(chunk)
                while (reply := parser.gets()) is not False:
                    if isinstance(reply, Exception) or not isinstance(reply, list) or not reply:
                        raise LinkDead(f"unexpected reply on the subscription: {reply!r}")
                    kind = reply[0]
                    if kind == b"message":
                        self.sink.on_message(reply[1].decode(), reply[2])
                    elif kind == b"pong":
                        rtt = loop.time() - ping_sent if ping_sent is not None else 0.0
                        ping_sent = None
                        next_ping = loop.time() + self.config.ping_interval_s
                        self.sink.on_pong(rtt)
                    elif kind == b"subscribe":
                        channel = reply[1].decode()
                        if channel in confirmed:
                            raise LinkDead(f"channel {channel} re-subscribed: events may have been missed")
                        confirmed.add(channel)
                        if len(confirmed) == len(self.channels):
                            self._sessions += 1
                            self.connected.set()
                            self.sink.on_subscribed(reconnect=self._sessions > 1)
        finally:
            self.connected.clear()
            writer.close()
            # Best effort: a frozen peer must not hang the reconnect loop.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 0.5)


def _pack(*args: bytes) -> bytes:
    """One RESP command."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


_PING = _pack(b"PING")
