"""One in-flight Redis read per key: concurrent misses on one node share a single read.

Without it, a popular node whose entry expires makes every concurrent reader go to
Redis at once (a cache stampede). The first caller starts the read as a task; later
callers await the same task. The task is never cancelled on a caller's behalf (a
caller with a time budget waits on it with a timeout instead), because cancelling an
in-flight command would leave its pooled connection in an unknown state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Deduplicates concurrent calls per key."""

    def __init__(self) -> None:
        self._inflight: dict[Hashable, asyncio.Task[T]] = {}
        self.joins = 0

    def task(self, key: Hashable, start: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
        """The in-flight task for ``key``, starting ``start()`` if there is none."""
        task = self._inflight.get(key)
        if task is not None:
            self.joins += 1
            return task
        task = asyncio.ensure_future(start())
        self._inflight[key] = task
        task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        return task

    async def do(self, key: Hashable, start: Callable[[], Awaitable[T]]) -> T:
        """Run (or join) the read for ``key`` and return its result."""
        # shield: a caller being cancelled must not cancel the read others are waiting on.
        return await asyncio.shield(self.task(key, start))

    def __len__(self) -> int:
        return len(self._inflight)
