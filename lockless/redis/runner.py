"""Calls Lua scripts by SHA, with the one rule for a server that forgot them.

Scripts are loaded once (``SCRIPT LOAD``) and called with ``EVALSHA``. A server that
restarted, a promoted replica, or a ``SCRIPT FLUSH`` answers ``NOSCRIPT``: the runner
then loads that script and sends the call once more. Once, because a second NOSCRIPT in
a row is not a forgotten script but a broken server, and because every script is safe
to repeat (DESIGN.md section 3), so re-sending a whole pipelined batch is harmless.

redis-py's ``Script`` objects are not used inside pipelines: such a pipeline runs
``SCRIPT EXISTS`` before every execution, a second round trip per batch.

On a cluster (a :class:`~lockless.redis.cluster.ClusterRouter` given) a call goes to the
primary owning its keys' slot, and a batch is split by slot, one pipeline per slot, sent
at once. A node that answers NOSCRIPT (a replica just promoted: Valkey does not copy the
script cache to replicas; a primary that received the slot by resharding) is given the
script and the calls are sent once more, as on one server.

``WAIT`` (``redis.wait_replicas`` > 0) is sent in the same pipeline after the calls, so on
the connection that wrote: WAIT covers the writes of its own connection only. A batch
whose WAIT ends short of the count raises
:class:`~lockless.errors.WriteNotReplicated` (the primary ran it, but it is not
acknowledged: a failover now would lose it); its writes are counted in the
``writes_unreplicated`` metric. Inside :func:`without_wait` (the journal's replay: a
journaled write was answered "journaled", never promised durable) no WAIT is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import NoScriptError

from lockless.errors import WriteNotReplicated
from lockless.metrics import Metrics
from lockless.redis import scripts
from lockless.redis.client import guarded

if TYPE_CHECKING:
    from lockless.redis.cluster import ClusterRouter

#: One script call: its KEYS and its ARGV.
Call = tuple[Sequence[str], Sequence[Any]]

_NO_WAIT: ContextVar[bool] = ContextVar("lockless_no_wait", default=False)


@contextlib.contextmanager
def without_wait() -> Iterator[None]:
    """Script calls made inside (in this task) send no WAIT, whatever ``redis.wait_replicas`` says."""
    token = _NO_WAIT.set(True)
    try:
        yield
    finally:
        _NO_WAIT.reset(token)


def sha1(body: str) -> str:
    """The SHA EVALSHA calls a script by."""
    return hashlib.sha1(body.encode()).hexdigest()


class ScriptRunner:
    """EVALSHA of the library's scripts on one client, reloading on NOSCRIPT once."""

    def __init__(
        self,
        client: aioredis.Redis,
        metrics: Metrics,
        bodies: dict[str, str] | None = None,
        *,
        router: ClusterRouter | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._bodies = dict(scripts.ALL if bodies is None else bodies)
        self._shas = {name: sha1(body) for name, body in self._bodies.items()}
        self._router = router
        self._wait: tuple[str, int, int] | None = (
            ("WAIT", wait_replicas, wait_timeout_ms) if wait_replicas > 0 else None
        )

    def use(self, bodies: dict[str, str]) -> None:
        """Call these bodies from now on (the same names; e.g. ``scripts.sharded`` on a cluster)."""
        self._bodies = dict(bodies)
        self._shas = {name: sha1(body) for name, body in self._bodies.items()}

    async def load_all(self) -> None:
        """Load every script (idempotent; done lazily on NOSCRIPT as well); on a cluster, on every primary."""
        if self._router is not None:
            router = self._router

            async def load_everywhere() -> None:
                loads = [("SCRIPT", "LOAD", body) for body in self._bodies.values()]
                await asyncio.gather(*(_pipeline_of(router.client(a), loads) for a in router.primaries()))

            await guarded("SCRIPT LOAD", load_everywhere, self._metrics)
            return

        async def load() -> None:
            pipe = self._client.pipeline(transaction=False)
            for body in self._bodies.values():
                pipe.script_load(body)
            await pipe.execute()

        await guarded("SCRIPT LOAD", load, self._metrics)

    async def call(self, name: str, keys: Sequence[str], argv: Sequence[Any]) -> Any:
        """One script call, one round trip (two plus a load after NOSCRIPT)."""
        if self._router is not None or (self._wait is not None and not _NO_WAIT.get()):
            (reply,) = await self.call_many(name, [(keys, argv)])
            return reply
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
        reply is raised after the batch, unless it answers a command of ``after``. (One
        server only: on a cluster, commands of the calls' slot follow with :meth:`call_then`.)
        """
        sha = self._shas[name]
        if self._router is not None:
            if before is not None or after is not None:
                raise ValueError("before=/after= are for one server; on a cluster use call_then()")
            return await guarded(
                f"{name} x{len(calls)}", lambda: self._on_cluster(name, calls), self._metrics
            )
        wait = None if _NO_WAIT.get() else self._wait

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
                if wait is not None:
                    pipe.execute_command(*wait)
                replies = await pipe.execute(raise_on_error=False)
                waited = replies.pop() if wait is not None else None
                if attempt == 0 and any(isinstance(r, NoScriptError) for r in replies):
                    await self._client.script_load(self._bodies[name])
                    continue
                for reply in replies[:checked]:
                    if isinstance(reply, Exception):
                        raise reply
                if wait is not None:
                    self._waited(name, waited, len(calls))
                return replies
            raise AssertionError("unreachable: the second attempt returns or raises")

        return await guarded(f"{name} x{len(calls)}", run, self._metrics)

    async def call_then(
        self, name: str, call: Call, then: Sequence[tuple[Any, ...]]
    ) -> tuple[Any, list[Any]]:
        """One script call followed, in the same round trip, by commands ``then`` of its slot
        (e.g. reading back the record it wrote): the call's reply, and theirs (errors in place)."""
        if self._router is None:
            replies = await self.call_many(
                name, [call], after=lambda pipe: [pipe.execute_command(*c) for c in then]
            )
            return replies[0], list(replies[1:])
        keys = call[0]
        slot = key_slot(str(keys[0]).encode())
        replies = await guarded(name, lambda: self._slot_batch(name, slot, [call], then), self._metrics)
        return replies[0], list(replies[1:])

    # ---------------------------------------------------------------- cluster
    async def _on_cluster(self, name: str, calls: Sequence[Call]) -> list[Any]:
        """Calls split by slot, one pipeline per slot at once; replies in the calls' order."""
        by_slot: dict[int, list[int]] = {}
        for i, (keys, _argv) in enumerate(calls):
            by_slot.setdefault(key_slot(str(keys[0]).encode()), []).append(i)
        if len(by_slot) == 1:
            ((slot, _),) = by_slot.items()
            return await self._slot_batch(name, slot, calls)
        replies: list[Any] = [None] * len(calls)
        done = await asyncio.gather(
            *(self._slot_batch(name, slot, [calls[i] for i in idx]) for slot, idx in by_slot.items())
        )
        for idx, got in zip(by_slot.values(), done, strict=True):
            for i, reply in zip(idx, got, strict=True):
                replies[i] = reply
        return replies

    async def _slot_batch(
        self, name: str, slot: int, calls: Sequence[Call], then: Sequence[tuple[Any, ...]] = ()
    ) -> list[Any]:
        """The calls (and ``then``, whose error replies are returned, not raised) on the slot's owner."""
        assert self._router is not None
        sha = self._shas[name]
        commands = [*(("EVALSHA", sha, len(keys), *keys, *argv) for keys, argv in calls), *then]
        wait = None if _NO_WAIT.get() else self._wait
        for attempt in (0, 1):
            replies = await self._router.execute(slot, commands, raise_on_error=False, trailer=wait)
            waited = replies.pop() if wait is not None else None
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in replies):
                # The slot's owner forgot (or never had) the script: give it, on that node.
                await self._router.execute(slot, [("SCRIPT", "LOAD", self._bodies[name])])
                continue
            for reply in replies[: len(calls)]:
                if isinstance(reply, Exception):
                    raise reply
            if wait is not None:
                self._waited(name, waited, len(calls))
            return replies
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _waited(self, name: str, reply: Any, writes: int) -> None:
        """Raise WriteNotReplicated if the WAIT saw fewer replicas than asked (counting the writes)."""
        assert self._wait is not None
        _, wanted, timeout_ms = self._wait
        seen = reply if isinstance(reply, int) else 0
        if seen < wanted:
            self._metrics.inc("writes_unreplicated", writes)
            raise WriteNotReplicated(f"{name} x{writes}", seen, wanted, timeout_ms)


async def _pipeline_of(client: aioredis.Redis, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return await pipe.execute()
