"""C command packing (lockless/redis/packing.py): same bytes as redis-py, same behaviour."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from lockless.config import RedisConfig
from lockless.redis.packing import with_c_packing
from lockless.redis.store import RedisStore

CASES = [
    ("EVALSHA", "a" * 40, 2, "x:{p}:node:n1", "x:{p}:alive", "0.5", "", "1"),
    ("SET", "k", 1.5),
    ("SET", "k", 10**20),
    ("SET", b"k", b"\x00\xff\r\n"),
    ("SET", "k", "\u00e9\u4e2d"),
    ("SCRIPT LOAD", "return 1"),  # redis-py sends some subcommands inside the name
    ("CLIENT KILL", "TYPE", "pubsub"),
    ("SET", "k", "\udcff"),  # a lone surrogate: hiredis refuses, redis-py's packer takes it
]


@pytest.mark.parametrize("args", CASES, ids=lambda a: str(a[0]))
def test_packed_bytes_are_redis_pys(args: tuple) -> None:
    plain = Connection(encoding_errors="surrogateescape")
    fast = with_c_packing(Connection)(encoding_errors="surrogateescape")
    assert b"".join(fast.pack_command(*args)) == b"".join(plain.pack_command(*args))


def test_a_value_redis_py_refuses_is_refused_the_same_way() -> None:
    with pytest.raises(DataError):
        with_c_packing(Connection)().pack_command("SET", "k", None)


def test_the_store_client_packs_in_c_and_talks_to_redis(redis_url: str, ns: str) -> None:
    store = RedisStore(RedisConfig(url=redis_url, namespace=ns))
    pool = store.client.connection_pool
    assert pool.connection_class.__name__.startswith("CPacking")
    assert issubclass(pool.connection_class, Connection)


async def test_commands_round_trip_through_c_packing(redis_url: str, ns: str) -> None:
    store = RedisStore(RedisConfig(url=redis_url, namespace=ns))
    try:
        await store.client.set(f"{ns}:k", "\u00e9 x\r\n")
        assert await store.client.get(f"{ns}:k") == "\u00e9 x\r\n"
        sha = await store.client.script_load("return ARGV[1]")
        assert await store.client.evalsha(sha, 0, "v") == "v"
    finally:
        await store.close()


def test_the_scheme_keeps_its_connection_class() -> None:
    pool = RedisStore.make_client(RedisConfig(url="unix:///tmp/none.sock")).connection_pool
    assert issubclass(pool.connection_class, aioredis.UnixDomainSocketConnection)
