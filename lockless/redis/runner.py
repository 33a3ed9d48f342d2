"""Calls Lua scripts by SHA, with the one rule for a server that forgot them.

Scripts are loaded once (``SCRIPT LOAD``) and called with ``EVALSHA``. A server that
restarted, a promoted replica, or a ``SCRIPT FLUSH`` answers ``NOSCRIPT``: the runner
then loads that script and sends the call once more. Once, because a second NOSCRIPT in
a row is not a forgotten script but a broken server, and because every script is safe
to repeat (DESIGN.md section 3), so re-sending a whole pipelined batch is harmless.

redis-py's ``Script`` objects are not used inside pipelines: such a pipeline runs
``SCRIPT EXISTS`` before every execution, a second round trip per batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from lockless.metrics import Metrics
from lockless.redis import scripts
from lockless.redis.client import guarded

#: One script call: its KEYS and its ARGV.
Call = tuple[Sequence[str], Sequence[Any]]


def sha1(body: str) -> str:
    """The SHA EVALSHA calls a script by."""
    return hashlib.sha1(body.encode()).hexdigest()


class ScriptRunner:
    """EVALSHA of the library's scripts on one client, reloading on NOSCRIPT once."""

    def __init__(
        self, client: aioredis.Redis, metrics: Metrics, bodies: dict[str, str] | None = None
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._bodies = dict(scripts.ALL if bodies is None else bodies)
        self._shas = {name: sha1(body) for name, body in self._bodies.items()}

    async def load_all(self) -> None:
        """Load every script (idempotent; done lazily on NOSCRIPT as well)."""

        async def load() -> None:
            pipe = self._client.pipeline(transaction=False)
            for body in self._bodies.values():
                pipe.script_load(body)
            await pipe.execute()

        await guarded("SCRIPT LOAD", load, self._metrics)

    async def call(self, name: str, keys: Sequence[str], argv: Sequence[Any]) -> Any:
        """One script call, one round trip (two plus a load after NOSCRIPT)."""
        sha = self._shas[name]

        async def run() -> Any:
            try:
                return await self._client.evalsha(sha, len(keys), *keys, *argv)
            except NoScriptError:
                await self._client.script_load(self._bodies[name])
                return await self._client.evalsha(sha, len(keys), *keys, *argv)

        return await guarded(name, run, self._metrics)

    async def call_many(
        self,
        name: str,
        calls: Sequence[Call],
        *,
        before: Callable[[Any], None] | None = None,
        after: Callable[[Any], None] | None = None,
    ) -> list[Any]:
        """Several calls of one script pipelined in one round trip; returns their replies.

        ``before(pipeline)`` and ``after(pipeline)`` may queue other commands ahead of or
        behind the calls (their replies come first or last in the list). The first error
        reply is raised after the batch, unless it answers a command of ``after``.
        """
        sha = self._shas[name]

        async def run() -> list[Any]:
            for attempt in (0, 1):
                pipe = self._client.pipeline(transaction=False)
                if before is not None:
                    before(pipe)
                for keys, argv in calls:
                    pipe.evalsha(sha, len(keys), *keys, *argv)
                checked = len(pipe)  # replies that must not be errors: everything but `after`'s
                if after is not None:
                    after(pipe)
                replies = await pipe.execute(raise_on_error=False)
                if attempt == 0 and any(isinstance(r, NoScriptError) for r in replies):
                    await self._client.script_load(self._bodies[name])
                    continue
                for reply in replies[:checked]:
                    if isinstance(reply, Exception):
                        raise reply
                return replies
            raise AssertionError("unreachable: the second attempt returns or raises")

        return await guarded(f"{name} x{len(calls)}", run, self._metrics)
