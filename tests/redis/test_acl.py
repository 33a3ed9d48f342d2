"""A shared Redis with ACL users (DESIGN.md section 9): URL credentials reach every connection.

The library opens two kinds of connection: redis-py's pool (commands, scripts) and its own
bare RESP subscriber, which must send ``AUTH user password`` itself. An ACL user limited to
the namespace's keys and channels must be enough for everything a registry does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis

from lockless import LocklessRegistry, NodeSpec, RedisUnavailable
from tests.support import eventually, fast_config


@contextlib.asynccontextmanager
async def acl_user(url: str, ns: str, password: str) -> AsyncIterator[str]:
    """A user that may touch only ``ns``'s keys and channels; yields its URL."""
    user = f"sched-{uuid.uuid4().hex[:8]}"
    admin = aioredis.Redis.from_url(url)
    rules = ["reset", "on", f">{password}", f"~{ns}:*", "resetchannels", f"&{ns}:*"]
    await admin.execute_command("ACL", "SETUSER", user, *rules, "+@all", "-@dangerous")
    parts = urlsplit(url)
    try:
        yield urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))
    finally:
        await admin.execute_command("ACL", "DELUSER", user)
        await admin.aclose()


async def test_an_acl_user_limited_to_its_namespace_runs_two_instances(redis_url: str, ns: str) -> None:
    if "@" in redis_url:
        pytest.skip("REDIS_URL already carries credentials; this test creates its own user")
    async with acl_user(redis_url, ns, "s3cret pw") as url:
        config = fast_config(url, ns)
        async with LocklessRegistry(config, instance="a") as a, LocklessRegistry(config, instance="b") as b:
            await a.register_node(NodeSpec(node_id="n1", pool="p", max_jobs=2))
            assert (await b.job_start("p", "n1", "j1")).admitted
            # The event reached a's subscriber, which authenticated on its own connection.
            await eventually(
                lambda: (n := a.cached("p", "n1")) is not None and n.current_jobs == 1, 3.0, "event in a"
            )


async def test_a_wrong_password_is_a_clear_error_at_start(redis_url: str, ns: str) -> None:
    if "@" in redis_url:
        pytest.skip("REDIS_URL already carries credentials; this test creates its own user")
    async with acl_user(redis_url, ns, "right") as url:
        config = fast_config(url.replace(":right@", ":wrong@"), ns)
        config = dataclasses.replace(config, redis=dataclasses.replace(config.redis, retries=0))
        registry = LocklessRegistry(config, instance="a")
        with pytest.raises(RedisUnavailable, match=r"(?i)auth|password|WRONGPASS"):
            await registry.start(timeout=2.0)
        await registry.close()
