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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from typing import Protocol

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from lockless.config import RedisConfig, SubscriberConfig

log = logging.getLogger(__name__)


class LinkDead(Exception):
    """The subscription stopped answering its PINGs (internal; never escapes the task)."""


class SubscriberSink(Protocol):
    """What the subscriber reports to (implemented by the registry)."""

    def on_message(self, channel: str, data: bytes) -> None:
        """One published message (raw bytes, decoded by the sink), in arrival order."""

    def on_subscribed(self, reconnect: bool) -> None:
        """Every channel is subscribed; ``reconnect`` is False only for the very first session."""

    def on_stream_lost(self, reason: str) -> None:
        """The subscription is gone (error, dead link, silent re-subscribe): events may be missing."""

    def on_pong(self, rtt_s: float) -> None:
        """The server answered a liveness PING on the subscription."""


class Subscriber:
    """Runs the subscription sessions until :meth:`stop`."""

    def __init__(
        self,
        redis_config: RedisConfig,
        config: SubscriberConfig,
        channels: Sequence[str],
        sink: SubscriberSink,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.redis_config = redis_config
        self.config = config
        self.channels = tuple(channels)
        self.sink = sink
        self._rng = rng or random.Random()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._sessions = 0
        self.connected = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="lockless-subscriber")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
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

    def _client(self) -> aioredis.Redis:
        cfg = self.redis_config
        # No retries: a reconnect inside redis-py would re-subscribe silently and hide a gap.
        return aioredis.Redis.from_url(
            cfg.url,
            socket_timeout=self.config.ping_interval_s + self.config.pong_timeout_s + cfg.socket_timeout_s,
            socket_connect_timeout=cfg.connect_timeout_s,
            retry=Retry(NoBackoff(), 0),
            # Bytes, not str: a payload that is not UTF-8 must reach the sink (to be counted as
            # malformed) instead of killing the session; and redis-py misparses a decoded PONG.
            decode_responses=False,
        )

    async def _session(self) -> None:
        client = self._client()
        pubsub = client.pubsub(ignore_subscribe_messages=False)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(pubsub.subscribe(*self.channels), self.config.pong_timeout_s + 1.0)
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
                    await pubsub.ping()
                    ping_sent = now
                wake = (ping_sent + self.config.pong_timeout_s) if ping_sent is not None else next_ping
                msg = await pubsub.get_message(timeout=max(0.001, wake - loop.time()))
                if msg is None:
                    continue
                kind = msg["type"]
                if kind == "message":
                    self.sink.on_message(msg["channel"].decode(), msg["data"])
                elif kind == "pong":
                    rtt = loop.time() - ping_sent if ping_sent is not None else 0.0
                    ping_sent = None
                    next_ping = loop.time() + self.config.ping_interval_s
                    self.sink.on_pong(rtt)
                elif kind == "subscribe":
                    channel = msg["channel"].decode()
                    if channel in confirmed:
                        raise LinkDead(f"channel {channel} re-subscribed: events may have been missed")
                    confirmed.add(channel)
                    if len(confirmed) == len(self.channels):
                        self._sessions += 1
                        self.connected.set()
                        self.sink.on_subscribed(reconnect=self._sessions > 1)
        finally:
            self.connected.clear()
            # Closing a connection to a frozen server must not hang the reconnect loop.
            # Best effort: the connection is being thrown away.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pubsub.aclose(), 0.5)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.aclose(), 0.5)
