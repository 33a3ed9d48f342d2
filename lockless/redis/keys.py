"""Every Redis key and channel name the library uses, built in one place.

All keys of one pool share the hash tag ``{pool}``, so each Lua script touches a
single cluster slot and the same code runs on one Redis and on Redis Cluster
(DESIGN.md section 2). Nothing outside this module spells a key.
"""

from __future__ import annotations

from dataclasses import dataclass

from lockless.errors import ConfigError


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Key builder for one namespace ``ns`` (so tests and experiments never collide)."""

    ns: str

    def __post_init__(self) -> None:
        if not self.ns or any(c in self.ns for c in "{} \t\r\n"):
            raise ConfigError("redis.namespace", self.ns, "a non-empty string without braces or whitespace")

    def _pool(self, pool: str) -> str:
        return f"{self.ns}:{{{pool}}}"

    def node_prefix(self, pool: str) -> str:
        """Prefix of node hashes; scripts append the node id."""
        return f"{self._pool(pool)}:node:"

    def node(self, pool: str, node_id: str) -> str:
        return f"{self.node_prefix(pool)}{node_id}"

    def jobs_prefix(self, pool: str) -> str:
        return f"{self._pool(pool)}:jobs:"

    def jobs(self, pool: str, node_id: str) -> str:
        return f"{self.jobs_prefix(pool)}{node_id}"

    def alive(self, pool: str) -> str:
        return f"{self._pool(pool)}:alive"

    def seq(self, pool: str) -> str:
        return f"{self._pool(pool)}:seq"

    def epoch(self, pool: str) -> str:
        return f"{self._pool(pool)}:epoch"

    def log(self, pool: str) -> str:
        return f"{self._pool(pool)}:log"

    def events(self, pool: str) -> str:
        """Pub/sub channel of the pool's change events."""
        return f"{self._pool(pool)}:events"

    def pools(self) -> str:
        return f"{self.ns}:pools"

    def script_keys(self, pool: str, node_id: str) -> list[str]:
        """KEYS of every single-node mutation script, in the order ``scripts.py`` documents."""
        return [
            self.node(pool, node_id),
            self.jobs(pool, node_id),
            self.alive(pool),
            self.seq(pool),
            self.epoch(pool),
            self.log(pool),
        ]

    def reap_keys(self, pool: str) -> list[str]:
        """KEYS of the scripts that act on many nodes of one pool: reap, and heartbeat batches."""
        return [self.alive(pool), self.seq(pool), self.epoch(pool), self.log(pool)]

    def pool_of_channel(self, channel: str) -> str | None:
        """Inverse of :meth:`events`: the pool a channel name belongs to, or None if it is not ours."""
        prefix, suffix = f"{self.ns}:{{", "}:events"
        if channel.startswith(prefix) and channel.endswith(suffix):
            return channel[len(prefix) : -len(suffix)]
        return None
