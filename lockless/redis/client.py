"""The connection factory, and the one place Redis errors become library errors.

:func:`make_client` builds every command client the library uses, with the house
settings (DESIGN.md section 9): timeouts always set, a bounded blocking connection
pool whose wait counts in a command's latency, retries set explicitly (redis-py's
default hides outages behind seconds of backoff), and C command packing.

:func:`guarded` runs one Redis call: it times it into ``redis_latency_us`` and converts
redis-py and OS errors into :class:`~lockless.errors.RedisUnavailable` with
``raise ... from exc``, so nothing above this module sees a third-party exception.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

from lockless.config import RedisConfig
from lockless.errors import RedisUnavailable
from lockless.metrics import Metrics
from lockless.redis.packing import with_c_packing

T = TypeVar("T")

#: Errors that mean "Redis is not answering", as opposed to a bug in what we sent.
UNAVAILABLE = (RedisError, OSError, asyncio.TimeoutError)

#: Server replies that are about the server's state, not about the command: the server
#: is loading its data, or busy running a script. Treated as "unavailable" (retry later).
_TRANSIENT_REPLIES = ("BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")


def make_client(cfg: RedisConfig, **overrides: Any) -> aioredis.Redis:
    """A client with the house settings: timeouts, bounded blocking pool, explicit retries."""
    kwargs: dict[str, Any] = {
        "max_connections": cfg.max_connections,
        "timeout": cfg.pool_timeout_s,
        "socket_timeout": cfg.socket_timeout_s,
        "socket_connect_timeout": cfg.connect_timeout_s,
        # Jittered exponential backoff from 10 ms, capped at 50 ms: one quick retry repairs a
        # stale pooled socket after a restart without turning a timeout into a long stall.
        # (EqualJitterBackoff exists in every redis-py this project supports; the newer
        # ExponentialWithJitterBackoff does not exist before 5.3.)
        "retry": Retry(EqualJitterBackoff(cap=0.05, base=0.01), cfg.retries),
        "decode_responses": True,
        # A record holding bytes that are not UTF-8 must reach the codec (which rejects it
        # as a MalformedRecord naming the field), not fail inside redis-py's reply decoding.
        "encoding_errors": "surrogateescape",
    }
    kwargs.update(overrides)
    pool = aioredis.BlockingConnectionPool.from_url(cfg.url, **kwargs)
    # (from_url chose the class for the scheme: TCP, TLS or unix socket.)
    pool.connection_class = with_c_packing(pool.connection_class)
    return aioredis.Redis(connection_pool=pool)


def is_transient_reply(exc: BaseException) -> bool:
    """A server error reply that says the server cannot serve now (not that the command was wrong)."""
    return isinstance(exc, NoScriptError) or (
        isinstance(exc, ResponseError) and str(exc).startswith(_TRANSIENT_REPLIES)
    )


async def guarded(what: str, fn: Callable[[], Awaitable[T]], metrics: Metrics) -> T:
    """Run one Redis call: time it, and translate failures into :class:`RedisUnavailable`.

    A ``ResponseError`` that is about the command itself (a bug in what was sent, a
    WRONGTYPE the caller handles) is re-raised unchanged: it is not an outage.
    """
    start = time.perf_counter()
    try:
        result = await fn()
    except ResponseError as exc:
        if is_transient_reply(exc):
            metrics.inc("redis_errors")
            raise RedisUnavailable(f"{what}: {exc}") from exc
        raise
    except UNAVAILABLE as exc:
        metrics.inc("redis_errors")
        raise RedisUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
    metrics.observe_us("redis_latency_us", (time.perf_counter() - start) * 1e6)
    return result
