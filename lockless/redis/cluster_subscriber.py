"""The event subscription on a Redis Cluster: a link per shard, each with its own PING deadline.

Same duties as the one-server :class:`~lockless.redis.subscriber.Subscriber` (messages in,
link health out, nothing decided about caching), on a cluster (DESIGN.md section 8a):

* **Sharded pub/sub** (Valkey, Redis >= 7: the scripts SPUBLISH, ``scripts.sharded``). A
  pool's channel carries its hash tag, so it lives on the shard owning the pool's slot;
  the instance keeps one link (one connection, bare RESP as on one server) per primary
  it needs, and SSUBSCRIBEs each pool's channel on the link of its slot's owner, one
  command per channel (SSUBSCRIBE refuses channels of several slots: CROSSSLOT).
* **Plain pub/sub** (Redis 6.2: no SPUBLISH). A cluster broadcasts PUBLISH to every node,
  so one link to any node carries every pool; when it fails the next one is tried.

Each link PINGs on its own and is declared dead when a PONG is late, as on one server
(a frozen primary would otherwise look like a quiet shard). A link's failure is a lost
stream for the pools it carried only: ``on_stream_lost(reason, pools)``; each pool that
is subscribed again is ``on_subscribed(reconnect=True, pools)``, a possible gap the sink
repairs (catch-up from the pool log, or a relist), exactly as on one server.

Following the cluster. Where a pool's channel goes is read from the router's slot map;
when the map changes (a MOVED seen by any command, a refresh) the links are re-planned
and a pool whose owner changed is moved to the link of its new owner. A failover shows
as the old primary's link dying (killed: connection reset; frozen: no PONG): its pools
are lost, the map is refreshed until a replica owns the slots, and they are subscribed
there. A resharded slot shows as an unasked ``sunsubscribe`` (the server drops the
shard channel's subscribers when the slot leaves it): that pool alone is lost and
subscribed again, which the old owner answers with ``MOVED`` naming the new one. While
any pool is unsubscribed, the map is refreshed every ``min(ping_interval_s, 0.25)`` s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import hiredis
from redis.crc import key_slot

from lockless.aio import cancel_and_wait
from lockless.config import SubscriberConfig
from lockless.redis.cluster import Address
from lockless.redis.subscriber import LinkDead, _pack

if TYPE_CHECKING:
    from lockless.redis.store import RedisStore
    from lockless.redis.subscriber import SubscriberSink

log = logging.getLogger(__name__)

_PING = _pack(b"PING")
#: The map is refreshed this often (at most) while a pool is unsubscribed.
_REPAIR_POLL_S = 0.25


class ClusterSubscriber:
    """Event subscriptions of one instance on a cluster; see the module docstring."""

    def __init__(
        self,
        store: RedisStore,
        config: SubscriberConfig,
        channels: Mapping[str, str],
        sink: SubscriberSink,
        *,
        rng: random.Random | None = None,
    ) -> None:
        """``channels``: pool -> its events channel."""
        assert store.cluster is not None
        self.router = store.cluster
        self.connections = store.connections
        self.config = config
        self.sink = sink
        self._channels = dict(channels)
        self._pool_of = {c: p for p, c in channels.items()}
        self._slots = {p: key_slot(c.encode()) for p, c in channels.items()}
        self._rng = rng or random.Random()
        self._links: dict[Address, _Link] = {}
        self._placed: dict[str, Address] = {}
        #: Pools whose channel is confirmed on a live link; pools confirmed at least once.
        self._up: set[str] = set()
        self._ever: set[str] = set()
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None
        self._broadcast_index = 0
        self.connected = asyncio.Event()
        self.sharded = False

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the links (the router has read the map and the servers' pub/sub kind)."""
        if self._watch is not None:
            return
        self.sharded = self.router.sharded_pubsub
        if self.sharded:
            self.router.on_change(self._replan)
            self._replan()
        else:
            link = _Link(self, self._next_broadcast_node, sharded=False)
            self._links[("*", 0)] = link
            for channel in self._channels.values():
                link.add(channel)
            link.start()
        self._watch = asyncio.create_task(self._repair_map(), name="lockless-cluster-subscriber")

    async def stop(self) -> None:
        self._stopping = True
        tasks = [t for t in (self._watch, *(link.task for link in self._links.values())) if t is not None]
        await cancel_and_wait(tasks)
        for link in self._links.values():
            link.close()
        self._links.clear()
        self._watch = None

    def is_up(self, pool: str) -> bool:
        """Whether ``pool``'s channel is subscribed on a live link now."""
        return pool in self._up

    def links(self) -> dict[Address, frozenset[str]]:
        """Pools subscribed (confirmed) per link address: for tests and operators."""
        return {a: frozenset(self._pool_of[c] for c in link.confirmed) for a, link in self._links.items()}

    # ------------------------------------------------------------- planning
    def _replan(self) -> None:
        """Put every pool's channel on the link of its slot's owner (sharded pub/sub)."""
        if self._stopping or not self.sharded:
            return
        for pool, channel in sorted(self._channels.items()):
            owner = self.router.owner(self._slots[pool])
            current = self._placed.get(pool)
            if owner == current:
                continue
            if current is not None:
                self._links[current].remove(channel, f"slot of pool {pool} moved to {owner}")
                del self._placed[pool]
            if owner is None:
                continue  # no owner known: the repair loop refreshes the map
            link = self._links.get(owner)
            if link is None:
                link = self._links[owner] = _Link(self, lambda a=owner: a, sharded=True)
                link.start()
            link.add(channel)
            self._placed[pool] = owner
        for address, link in list(self._links.items()):
            if not link.channels:
                link.retire()
                del self._links[address]

    def _next_broadcast_node(self) -> Address:
        # Plain pub/sub reaches every node: any will do; after a failure, try the next.
        candidates = list(dict.fromkeys([*self.router.primaries(), *self.router.seeds]))
        address = candidates[self._broadcast_index % len(candidates)]
        return address

    def _broadcast_failed(self) -> None:
        self._broadcast_index += 1

    async def _repair_map(self) -> None:
        """While a pool is unsubscribed, refresh the slot map so that moves and failovers are found."""
        interval = min(self.config.ping_interval_s, _REPAIR_POLL_S)
        while not self._stopping:
            await asyncio.sleep(interval)
            if len(self._up) < len(self._channels):
                self.router.refresh_soon()

    # ---------------------------------------------------------- link events
    def _confirmed(self, channel: str) -> None:
        pool = self._pool_of[channel]
        reconnect = pool in self._ever
        self._ever.add(pool)
        self._up.add(pool)
        if len(self._up) == len(self._channels):
            self.connected.set()
        self.sink.on_subscribed(reconnect=reconnect, pools=frozenset({pool}))

    def _lost(self, channels: set[str], reason: str) -> None:
        pools = frozenset(self._pool_of[c] for c in channels) & self._up
        if not pools:
            return
        self._up -= pools
        self.connected.clear()
        log.warning("event subscription of %s lost (%s)", ", ".join(sorted(pools)), reason)
        self.sink.on_stream_lost(reason, pools)

    def _pong(self, channels: set[str], rtt_s: float) -> None:
        pools = frozenset(self._pool_of[c] for c in channels)
        if pools:
            self.sink.on_pong(rtt_s, pools)


class _Link:
    """One connection to one node carrying some pools' channels; reconnects until retired."""

    def __init__(self, owner: ClusterSubscriber, address_of: Callable[[], Address], *, sharded: bool) -> None:
        self._owner = owner
        self._address_of = address_of
        self._sharded = sharded
        self._subscribe = b"SSUBSCRIBE" if sharded else b"SUBSCRIBE"
        self._unsubscribe = b"SUNSUBSCRIBE" if sharded else b"UNSUBSCRIBE"
        self._message = b"smessage" if sharded else b"message"
        self._confirm = b"ssubscribe" if sharded else b"subscribe"
        self._unconfirm = b"sunsubscribe" if sharded else b"unsubscribe"
        #: Channels wanted on this link; confirmed in the current session.
        self.channels: set[str] = set()
        self.confirmed: set[str] = set()
        # Replies expected, in order: ("sub", channel), ("unsub", channel), ("ping", "").
        self._pending: deque[tuple[str, str]] = deque()
        self._deadlines: dict[str, float] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._retired = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="lockless-cluster-link")

    def add(self, channel: str) -> None:
        self.channels.add(channel)
        if self._writer is not None:
            self._request([channel])

    def remove(self, channel: str, reason: str) -> None:
        self.channels.discard(channel)
        if channel in self.confirmed:
            self.confirmed.discard(channel)
            self._owner._lost({channel}, reason)
            if self._writer is not None:
                self._writer.write(_pack(self._unsubscribe, channel.encode()))
                self._pending.append(("unsub", channel))
        self._deadlines.pop(channel, None)

    def retire(self) -> None:
        """No channels left here: end the link."""
        self._retired = True
        if self.task is not None:
            self.task.cancel()
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ------------------------------------------------------------ sessions
    async def _run(self) -> None:
        failures = 0
        config = self._owner.config
        while not self._retired and not self._owner._stopping:
            try:
                await self._session()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure ends the session; the next one starts clean
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                self._owner._lost(set(self.confirmed) | set(self.channels), reason)
                self._owner.router.refresh_soon()
                if not self._sharded:
                    self._owner._broadcast_failed()
                failures += 1
            finally:
                self.confirmed.clear()
                self._pending.clear()
                self._deadlines.clear()
                writer, self._writer = self._writer, None
                if writer is not None:
                    writer.close()
                    # Best effort: a frozen peer must not hang the reconnect loop.
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(writer.wait_closed(), 0.5)
            cap = min(config.reconnect_max_s, config.reconnect_base_s * 2 ** min(failures, 16))
            await asyncio.sleep(self._owner._rng.uniform(0, cap) if failures else config.reconnect_base_s)

    def _request(self, channels: list[str]) -> None:
        assert self._writer is not None
        loop = asyncio.get_running_loop()
        owner = self._owner
        deadline = loop.time() + owner.config.pong_timeout_s + owner.connections.config.socket_timeout_s
        wanted = [c for c in channels if c not in self.confirmed]
        if not wanted:
            return
        if self._sharded:  # one command per channel: SSUBSCRIBE takes channels of one slot only
            self._writer.write(b"".join(_pack(self._subscribe, c.encode()) for c in wanted))
        else:
            self._writer.write(_pack(self._subscribe, *(c.encode() for c in wanted)))
        for channel in wanted:
            self._pending.append(("sub", channel))
            self._deadlines[channel] = deadline

    async def _session(self) -> None:
        owner = self._owner
        config = owner.config
        loop = asyncio.get_running_loop()
        address = self._address_of()
        reader, writer = await owner.connections.open_stream(owner.router.endpoint(address))
        self._writer = writer
        parser = hiredis.Reader()
        self._request(sorted(self.channels))
        ping_sent: float | None = None
        next_ping = loop.time() + config.ping_interval_s
        while not self._retired and not owner._stopping:
            now = loop.time()
            late = [c for c, at in self._deadlines.items() if now > at]
            if late:
                raise LinkDead(f"subscribe of {late[0]} on {address} not confirmed in time")
            if ping_sent is not None and now - ping_sent > config.pong_timeout_s:
                raise LinkDead(f"no PONG from {address} within {config.pong_timeout_s:.3f} s")
            if ping_sent is None and now >= next_ping:
                writer.write(_PING)
                self._pending.append(("ping", ""))
                ping_sent = now
            wake = (ping_sent + config.pong_timeout_s) if ping_sent is not None else next_ping
            if self._deadlines:
                wake = min(wake, min(self._deadlines.values()))
            try:
                async with asyncio.timeout(max(0.001, wake - loop.time())):
                    chunk = await reader.read(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                raise ConnectionError(f"connection to {address} closed by the server")
            parser.feed(chunk)
            while (reply := parser.gets()) is not False:
                if isinstance(reply, Exception):
                    self._refused(reply, address)
                    continue
                if not isinstance(reply, list) or not reply:
                    raise LinkDead(f"unexpected reply on the subscription to {address}: {reply!r}")
                kind = reply[0]
                if kind == self._message:
                    owner.sink.on_message(reply[1].decode(), reply[2])
                elif kind == b"pong":
                    self._expect("ping", "")
                    rtt = loop.time() - ping_sent if ping_sent is not None else 0.0
                    ping_sent = None
                    next_ping = loop.time() + config.ping_interval_s
                    owner._pong(self.confirmed, rtt)
                elif kind == self._confirm:
                    self._on_confirm(reply[1].decode())
                elif kind == self._unconfirm:
                    self._on_unsubscribed(reply[1].decode())

    def _expect(self, what: str, channel: str) -> bool:
        """Take the expected reply ``(what, channel)`` off the queue; False if it was not expected."""
        try:
            self._pending.remove((what, channel))
        except ValueError:
            return False
        return True

    def _on_confirm(self, channel: str) -> None:
        self._expect("sub", channel)
        if channel in self.confirmed:
            raise LinkDead(f"channel {channel} re-subscribed: events may have been missed")
        self._deadlines.pop(channel, None)
        if channel not in self.channels:
            # Moved away while the subscribe was in flight: take it back.
            if self._writer is not None:
                self._writer.write(_pack(self._unsubscribe, channel.encode()))
                self._pending.append(("unsub", channel))
            return
        self.confirmed.add(channel)
        self._owner._confirmed(channel)

    def _on_unsubscribed(self, channel: str) -> None:
        if self._expect("unsub", channel):
            return  # we asked
        # Unasked: the server dropped the channel (its slot left this node). That pool alone
        # is lost; asking again is answered by MOVED naming the new owner (or a confirmation,
        # if the map here is what is stale).
        self.confirmed.discard(channel)
        self._owner._lost({channel}, f"{channel} unsubscribed by the server (slot moved)")
        self._owner.router.refresh_soon()
        if channel in self.channels:
            self._request([channel])

    def _refused(self, error: Exception, address: Address) -> None:
        """An error reply: to a subscribe (MOVED: the slot is elsewhere), else the link is unusable."""
        head = self._pending.popleft() if self._pending else ("?", "")
        text = str(error)
        if head[0] == "sub" and text.startswith("MOVED "):
            channel = head[1]
            self._deadlines.pop(channel, None)
            _, slot, where = text.split(" ", 2)
            host, _, port = where.rpartition(":")
            # The map changes, the owner re-plans: the channel moves to the new owner's link.
            self._owner.router.moved(int(slot), (host, int(port)))
            return
        raise LinkDead(f"{address} refused {head[0]} {head[1]}: {text}")
