"""Command packing in C for redis-py's asyncio connections.

redis-py's asyncio ``Connection.pack_command`` is pure Python: about 27 us for a
heartbeat's EVALSHA (6 keys, 15 arguments) on the reference machine, against about 5 us
for ``hiredis.pack_command``, which is already installed for the reply parser. Every
write the library makes is one script call, so this is a large share of a write's
client-side cost, and of how many heartbeats one process can send.

The packed bytes are identical (checked by ``tests/redis/test_packing.py``). Anything
hiredis refuses (a type redis-py rejects with its own error, text holding lone
surrogates) is packed by redis-py's code, so behaviour and errors stay redis-py's.
"""

from __future__ import annotations

import functools
from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection


@functools.cache
def with_c_packing(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """A subclass of the connection class ``cls`` whose ``pack_command`` runs in hiredis."""

    def pack_command(self: AbstractConnection, *args: Any) -> list[bytes]:
        first = args[0]
        # redis-py sends some commands with their subcommand in the name ("SCRIPT LOAD").
        if isinstance(first, str | bytes) and (b" " if isinstance(first, bytes) else " ") in first:
            args = (*first.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except (TypeError, UnicodeEncodeError):
            return cls.pack_command(self, *args)

    return type(f"CPacking{cls.__name__}", (cls,), {"pack_command": pack_command})
