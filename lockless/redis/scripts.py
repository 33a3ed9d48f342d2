"""Every Lua script of the write path, one per mutation, and the code that fills their arguments.

Each script runs atomically in one round trip (DESIGN.md section 3). A mutation that
changes what placement reads bumps the pool ``seq``, stamps it on the node as
``version``, applies the change, refreshes TTLs, appends the event to the pool log under
the explicit id ``<seq>-0`` and PUBLISHes the same document. Timestamps come from Redis
``TIME``: client clocks disagree.

Every script is safe to repeat. redis-py may resend a command after a connection error,
and the LOCAL_ONLY journal replays writes after an outage, so a script that ran twice
must change nothing the second time: jobs are keyed by job id, heartbeats are
absolute, removal of a missing node is a no-op.

Shared contract of the single-node scripts (the KEYS order :meth:`KeySpace.script_keys`
builds, the ARGV order :meth:`ScriptArgs.base` builds)::

    KEYS[1] node hash          KEYS[2] node job set       KEYS[3] pool alive zset
    KEYS[4] pool seq           KEYS[5] pool epoch         KEYS[6] pool log stream
    ARGV[1] events channel     ARGV[2] pool name          ARGV[3] node id
    ARGV[4] epoch token (set only if the pool has none)   ARGV[5] log max length
    ARGV[6] node TTL (ms)      ARGV[7..] per script, listed in its header

Every script starts by naming its pool's keys in a table ``P`` (seq, epoch, log,
channel, pool, token, log_max), which the shared pool functions (``next_seq``, ``emit``)
use: ``REAP``, whose KEYS differ, shares them instead of restating them.
:class:`ScriptArgs` (pure, below the scripts) builds each call's KEYS and ARGV, so the
numbers in a header and the code that fills them sit together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lockless.core.commands import Heartbeat
from lockless.core.snapshot import NodeSpec
from lockless.redis.keys import KeySpace

#: The pool context of a single-node script (see the module docstring).
_NODE_POOL = r"""
local P = {seq = KEYS[4], epoch = KEYS[5], log = KEYS[6],
           channel = ARGV[1], pool = ARGV[2], token = ARGV[4], log_max = ARGV[5]}
"""

#: Functions every script shares; they read the pool context ``P``.
_POOL_FUNCTIONS = r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The epoch token marks one life of the pool's data: a Redis that lost its data comes
-- back without it, the next mutation sets a new one, and readers see the change.
-- The token is the writer's random id plus the server time, so that the same writer
-- re-creating a pool after data loss still makes a new epoch.
local function next_seq()
  if redis.call('EXISTS', P.epoch) == 0 then
    local t = redis.call('TIME')
    redis.call('SET', P.epoch, P.token .. '-' .. t[1] .. '.' .. t[2])
  end
  return redis.call('INCR', P.seq)
end
-- ts_us: server time in microseconds as the event leaves, a string (cjson keeps only 14
-- significant digits of a number): where propagation delay starts, without ms rounding.
local function emit(seq, op, node, version, ts, rec)
  local t = redis.call('TIME')
  local doc = cjson.encode({seq = seq, op = op, pool = P.pool, node = node, version = version,
                            ts = ts, ts_us = t[1] .. string.format('%06d', tonumber(t[2])),
                            epoch = redis.call('GET', P.epoch), rec = rec})
  redis.call('XADD', P.log, 'MAXLEN', '~', P.log_max, seq .. '-0', 'e', doc)
  redis.call('PUBLISH', P.channel, doc)
end
"""

#: Functions of the single-node scripts: the node record, its TTLs, its liveness.
_NODE_FUNCTIONS = r"""
local function record()
  local flat = redis.call('HGETALL', KEYS[1])
  local rec = {}
  for i = 1, #flat, 2 do rec[flat[i]] = flat[i + 1] end
  return rec
end
local function touch()
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[6]) end
end
local function write_record(seq, ts, status, max_jobs, load, resources, labels)
  redis.call('HSET', KEYS[1], 'version', seq, 'status', status, 'max_jobs', max_jobs,
             'current_jobs', redis.call('SCARD', KEYS[2]), 'load', load,
             'resources', resources, 'labels', labels, 'heartbeat_ms', ts)
  redis.call('ZADD', KEYS[3], ts, ARGV[3])
  touch()
end
"""

_PRELUDE = _NODE_POOL + _POOL_FUNCTIONS + _NODE_FUNCTIONS

# ARGV[7] status  ARGV[8] max_jobs  ARGV[9] load  ARGV[10] resources JSON  ARGV[11] labels JSON
# A re-registering node keeps the job ids admitted on it (current_jobs = their count): a node
# agent restart must not let the node be over-committed. Heartbeats with running jobs repair leaks.
# returns: the new version
REGISTER = (
    _PRELUDE
    + r"""
local ts = now_ms()
local seq = next_seq()
write_record(seq, ts, ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11])
emit(seq, 'register', ARGV[3], seq, ts, record())
return seq
"""
)

# ARGV[7] load  ARGV[8] load tolerance  ARGV[9] '1' = every heartbeat publishes (seed behaviour)
# ARGV[10] '1' = ARGV[16..] replace the job set   ARGV[11] '1' = re-create if unknown, with
# ARGV[12] status  ARGV[13] max_jobs  ARGV[14] resources JSON  ARGV[15] labels JSON  ARGV[16..] job ids
# A quiet heartbeat (load within tolerance, job set unchanged) refreshes liveness only:
# no version, no event, so heartbeats do not invalidate every cache.
# returns: {version (0 = unknown node, not re-created), changed 0|1, recreated 0|1}
HEARTBEAT = (
    _PRELUDE
    + r"""
local ts = now_ms()
if redis.call('EXISTS', KEYS[1]) == 0 then
  if ARGV[11] ~= '1' then return {0, 0, 0} end
  local seq = next_seq()
  if ARGV[10] == '1' then
    redis.call('DEL', KEYS[2])
    for i = 16, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
  end
  write_record(seq, ts, ARGV[12], ARGV[13], ARGV[7], ARGV[14], ARGV[15])
  emit(seq, 'register', ARGV[3], seq, ts, record())
  return {seq, 1, 1}
end
redis.call('ZADD', KEYS[3], ts, ARGV[3])
redis.call('HSET', KEYS[1], 'heartbeat_ms', ts)
local changed = ARGV[9] == '1'
local old_load = tonumber(redis.call('HGET', KEYS[1], 'load')) or 0
local new_load = tonumber(ARGV[7])
if math.abs(old_load - new_load) > tonumber(ARGV[8]) then
  redis.call('HSET', KEYS[1], 'load', ARGV[7])
  changed = true
end
if ARGV[10] == '1' then
  local reported = {}
  for i = 16, #ARGV do reported[ARGV[i]] = true end
  local same = (#ARGV - 15) == redis.call('SCARD', KEYS[2])
  if same then
    for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
      if not reported[id] then same = false break end
    end
  end
  if not same then
    redis.call('DEL', KEYS[2])
    for i = 16, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
    redis.call('HSET', KEYS[1], 'current_jobs', redis.call('SCARD', KEYS[2]))
    changed = true
  end
end
touch()
if not changed then
  return {tonumber(redis.call('HGET', KEYS[1], 'version')), 0, 0}
end
local seq = next_seq()
redis.call('HSET', KEYS[1], 'version', seq)
emit(seq, 'heartbeat', ARGV[3], seq, ts, record())
return {seq, 1, 0}
"""
)

# No extra ARGV.
# returns: the removal's seq (the node's last version), or 0 if the node did not exist
REMOVE = (
    _PRELUDE
    + r"""
local existed = redis.call('DEL', KEYS[1]) + redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('DEL', KEYS[2])
if existed == 0 then return 0 end
local seq = next_seq()
emit(seq, 'remove', ARGV[3], seq, now_ms(), nil)
return seq
"""
)

# ARGV[7] job id  ARGV[8] dead_after (ms)
# Admission control: admits only an alive, 'up' node below max_jobs. Keyed by job id, so a
# retried call reports 'already_admitted' and changes nothing. Two instances racing on
# stale caches cannot over-commit: the check and the increment are one atomic script.
# returns: {admitted 0|1, reason, version, current_jobs, max_jobs}
JOB_START = (
    _PRELUDE
    + r"""
local h = redis.call('HMGET', KEYS[1], 'version', 'status', 'max_jobs', 'current_jobs')
if not h[1] then return {0, 'not_alive', 0, 0, 0} end
local version, cur, max = tonumber(h[1]), tonumber(h[4]), tonumber(h[3])
if redis.call('SISMEMBER', KEYS[2], ARGV[7]) == 1 then
  return {1, 'already_admitted', version, cur, max}
end
if h[2] ~= 'up' then return {0, 'draining', version, cur, max} end
local ts = now_ms()
local beat = tonumber(redis.call('ZSCORE', KEYS[3], ARGV[3]))
if (not beat) or ts - beat > tonumber(ARGV[8]) then return {0, 'not_alive', version, cur, max} end
if cur >= max then return {0, 'full', version, cur, max} end
redis.call('SADD', KEYS[2], ARGV[7])
cur = redis.call('HINCRBY', KEYS[1], 'current_jobs', 1)
local seq = next_seq()
redis.call('HSET', KEYS[1], 'version', seq)
touch()
emit(seq, 'job_start', ARGV[3], seq, ts, record())
return {1, 'admitted', seq, cur, max}
"""
)

# ARGV[7] job id
# Releases the slot only if this job id was admitted here, and never below zero:
# a duplicated or retried finish changes nothing.
# returns: {released 0|1, version (0 = unknown node), current_jobs}
JOB_FINISH = (
    _PRELUDE
    + r"""
local h = redis.call('HMGET', KEYS[1], 'version', 'current_jobs')
if not h[1] then
  redis.call('SREM', KEYS[2], ARGV[7])
  return {0, 0, 0}
end
if redis.call('SREM', KEYS[2], ARGV[7]) == 0 then return {0, tonumber(h[1]), tonumber(h[2])} end
local cur = redis.call('HINCRBY', KEYS[1], 'current_jobs', -1)
if cur < 0 then
  cur = 0
  redis.call('HSET', KEYS[1], 'current_jobs', 0)
end
local seq = next_seq()
redis.call('HSET', KEYS[1], 'version', seq)
touch()
emit(seq, 'job_finish', ARGV[3], seq, now_ms(), record())
return {1, seq, cur}
"""
)

# Different KEYS: KEYS[1] alive zset  KEYS[2] seq  KEYS[3] epoch  KEYS[4] log
# ARGV[1] channel  ARGV[2] pool  ARGV[3] epoch token  ARGV[4] log max  ARGV[5] dead_after (ms)
# ARGV[6] node hash prefix  ARGV[7] job set prefix  ARGV[8] at most this many per call
# Node keys are built from prefixes that carry the pool's hash tag, so they share the slot.
# Concurrent reapers are safe: a node is removed (and announced) by exactly one of them.
# returns: the reaped node ids
REAP = (
    r"""
local P = {seq = KEYS[2], epoch = KEYS[3], log = KEYS[4],
           channel = ARGV[1], pool = ARGV[2], token = ARGV[3], log_max = ARGV[4]}
"""
    + _POOL_FUNCTIONS
    + r"""
local ts = now_ms()
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (ts - tonumber(ARGV[5])),
                        'LIMIT', 0, tonumber(ARGV[8]))
for _, id in ipairs(dead) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('DEL', ARGV[6] .. id, ARGV[7] .. id)
  local seq = next_seq()
  emit(seq, 'reap', id, seq, ts, nil)
end
return dead
"""
)

#: Name -> body, loaded together by the store.
ALL: dict[str, str] = {
    "register": REGISTER,
    "heartbeat": HEARTBEAT,
    "remove": REMOVE,
    "job_start": JOB_START,
    "job_finish": JOB_FINISH,
    "reap": REAP,
}

#: The one line (in ``emit``) by which every script publishes its event.
PUBLISH_LINE = "redis.call('PUBLISH', P.channel, doc)"


def sharded(bodies: dict[str, str]) -> dict[str, str]:
    """The same scripts publishing with ``SPUBLISH``: on a cluster with sharded pub/sub.

    A plain PUBLISH on a cluster is broadcast to every node over the cluster bus; SPUBLISH
    reaches the subscribers of the pool channel's shard only, where the instances
    SSUBSCRIBE (``cluster_subscriber.py``). The channel carries the pool's hash tag, so it
    is in the slot of the script's keys. Only that line differs (and so the SHA); one server
    and a cluster without sharded pub/sub (Redis 6.2) run the bodies above unchanged.
    """
    out = {}
    for name, body in bodies.items():
        if body.count(PUBLISH_LINE) != 1:
            raise ValueError(f"script {name} must publish exactly once, by {PUBLISH_LINE!r}")
        out[name] = body.replace(PUBLISH_LINE, "redis.call('SPUBLISH', P.channel, doc)")
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ScriptArgs:
    """KEYS and ARGV of every script call, built from the store's settings. Pure.

    Each method returns ``(keys, argv)`` in the order its script's header documents.
    """

    keys: KeySpace
    #: This writer's random id: used only if its write is the one that creates the pool's epoch.
    epoch_token: str
    #: ``XADD MAXLEN ~`` of the pool logs.
    log_max_len: int
    #: TTL refreshed on every write of a node key (ms).
    ttl_ms: int
    #: A node whose last heartbeat is older than this is dead (ms).
    dead_ms: int
    #: A heartbeat whose load moved less than this is quiet.
    load_tolerance: float
    #: The seed's behaviour: every heartbeat makes a version and an event.
    publish_every_heartbeat: bool = False

    def base(self, pool: str, node_id: str) -> list[str]:
        """ARGV[1..6] of the single-node scripts."""
        return [
            self.keys.events(pool),
            pool,
            node_id,
            self.epoch_token,
            str(self.log_max_len),
            str(self.ttl_ms),
        ]

    def register(self, spec: NodeSpec) -> tuple[list[str], list[Any]]:
        f = spec.to_hash_fields()
        argv = [*self.base(spec.pool, spec.node_id), f["status"], f["max_jobs"], f["load"]]
        argv += [f["resources"], f["labels"]]
        return self.keys.script_keys(spec.pool, spec.node_id), argv

    def heartbeat(self, beat: Heartbeat) -> tuple[list[str], list[Any]]:
        argv: list[Any] = self.base(beat.pool, beat.node_id)
        argv += [repr(float(beat.load)), repr(self.load_tolerance)]
        argv.append("1" if self.publish_every_heartbeat else "0")
        argv.append("0" if beat.running_jobs is None else "1")
        if beat.spec is not None:
            f = beat.spec.to_hash_fields()
            argv += ["1", f["status"], f["max_jobs"], f["resources"], f["labels"]]
        else:
            argv += ["0", "", "", "", ""]
        if beat.running_jobs is not None:
            # A set: duplicates would make the script's size comparison see a change every time.
            argv += sorted(set(beat.running_jobs))
        return self.keys.script_keys(beat.pool, beat.node_id), argv

    def remove(self, pool: str, node_id: str) -> tuple[list[str], list[Any]]:
        return self.keys.script_keys(pool, node_id), self.base(pool, node_id)

    def job_start(self, pool: str, node_id: str, job_id: str) -> tuple[list[str], list[Any]]:
        return self.keys.script_keys(pool, node_id), [*self.base(pool, node_id), job_id, str(self.dead_ms)]

    def job_finish(self, pool: str, node_id: str, job_id: str) -> tuple[list[str], list[Any]]:
        return self.keys.script_keys(pool, node_id), [*self.base(pool, node_id), job_id]

    def reap(self, pool: str, limit: int) -> tuple[list[str], list[Any]]:
        argv = [
            self.keys.events(pool),
            pool,
            self.epoch_token,
            str(self.log_max_len),
            str(self.dead_ms),
            self.keys.node_prefix(pool),
            self.keys.jobs_prefix(pool),
            str(limit),
        ]
        return self.keys.reap_keys(pool), argv
