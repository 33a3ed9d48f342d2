"""Small asyncio helpers the background tasks share."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)


async def cancel_and_wait(tasks: Iterable[asyncio.Task[None]], *, timeout: float = 5.0) -> None:
    """Cancel ``tasks`` and wait until every one has finished, cancelling again as needed.

    One ``cancel()`` is not enough on Python 3.11: ``asyncio.wait_for`` swallows a
    cancellation that lands in the iteration where its inner awaitable completes
    (CPython gh-86296), and redis-py sends every command through ``wait_for``. A task
    that swallowed it goes on running, so the cancel is repeated until it sticks. Gives
    up (logging the stragglers) after ``timeout`` seconds rather than hang a shutdown.
    """
    pending = {task for task in tasks if not task.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            log.error(
                "tasks still running %.1f s after cancel: %s", timeout, sorted(t.get_name() for t in pending)
            )
            return
        _, pending = await asyncio.wait(pending, timeout=min(0.05, left))
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.warning("background task %s ended with %r", task.get_name(), task.exception())
