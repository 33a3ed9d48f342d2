"""The one place a Redis command's errors become library errors.

(Connections themselves are made by ``lockless.redis.connection``.) :func:`guarded` runs
one Redis call: it times it into ``redis_latency_us`` and converts
redis-py and OS errors into :class:`~lockless.errors.RedisUnavailable` with
``raise ... from exc``, so nothing above this module sees a third-party exception.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import (
    AskError,
    ClusterDownError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)

from lockless.errors import RedisUnavailable
from lockless.metrics import Metrics

T = TypeVar("T")

#: Errors that mean "Redis is not answering", as opposed to a bug in what we sent.
UNAVAILABLE = (RedisError, OSError, asyncio.TimeoutError)

#: Server replies that are about the server's state, not about the command: the server
#: is loading its data, or busy running a script. Treated as "unavailable" (retry later).
_TRANSIENT_REPLIES = ("BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")
#: The same for a cluster, as redis-py parses them (the code stripped from the message): a slot
#: moving or being migrated (redirections left after the router's retries), the cluster or the
#: shard's primary down, a write that reached a node which just turned replica.
_TRANSIENT_CLASSES = (NoScriptError, AskError, TryAgainError, ClusterDownError, ReadOnlyError)


def is_transient_reply(exc: BaseException) -> bool:
    """A server error reply that says the server cannot serve now (not that the command was wrong)."""
    return isinstance(exc, _TRANSIENT_CLASSES) or (
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
