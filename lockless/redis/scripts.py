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

Every script starts by naming its pool's keys in a table ``P`` (seq, epoch, log, alive,
channel, pool, token, log_max, ttl), which the shared functions (``next_seq``, ``emit``,
``write_record``, ...) use: ``HEARTBEAT`` and ``REAP``, whose KEYS differ (they act on
many nodes of one pool), share them instead of restating them. The node functions take
the node's keys and id as arguments for the same reason. :class:`ScriptArgs` (pure, below
the scripts) builds each call's KEYS and ARGV, so the numbers in a header and the code
that fills them sit together.

Heartbeats come in batches. One ``HEARTBEAT`` call carries up to
:data:`HEARTBEATS_PER_CALL` beats of one pool: one ``TIME`` for all of them, one ``HMGET``
per beat, and one ``ZADD`` of every quiet beat's liveness at the end, so the fixed cost
of a script call (argument tables, the Lua call, the reply) is paid once per batch instead
of once per beat. Every beat's outcome is its own, exactly as if each had been a call of
its own in a pipeline, and a single heartbeat is a batch of one.

Where liveness lives. A node's last heartbeat (server ms) is its score in the pool's
``alive`` zset, and only there: admission (``JOB_START``) and the reaper read it, and a
quiet heartbeat writes nothing else that readers see. The node hash holds what placement
reads plus two fields of the scripts' own bookkeeping, named with a leading ``_``, which
events leave out and the codec ignores:

* ``_ttl_at`` - server ms at which a heartbeat or registration last armed the node's TTL.
  The TTL is the backstop for a deployment with no reaper; re-arming it is most of what a
  quiet heartbeat used to cost, so a quiet heartbeat re-arms it only when ``_ttl_at`` is
  older than ``ttl - dead_after``. The key then always outlives the node's liveness (a
  node alive at ``t`` beat at ``b >= t - dead_after``, and its key lives until at least
  ``b - (ttl - dead_after) + ttl``), and a silent node's key is gone between
  ``dead_after`` and ``ttl`` after its last beat. Every other mutation re-arms as well.
* ``_jobs`` - ``<version>:<digest>``: the digest (:func:`jobs_digest`) of the job set that
  a heartbeat's job report last matched, stamped with the version it was true at. Every
  other change to the job set (admission, release, registration) makes a new version, so
  a stamp at the current version is still true, and a beat reporting the same digest is
  quiet without reading the set. A stale stamp just costs one real comparison.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lockless.core.commands import Heartbeat
from lockless.core.snapshot import NodeSpec
from lockless.redis.keys import KeySpace

#: The pool context of a single-node script (see the module docstring).
_NODE_POOL = r"""
local P = {seq = KEYS[4], epoch = KEYS[5], log = KEYS[6], alive = KEYS[3],
           channel = ARGV[1], pool = ARGV[2], token = ARGV[4], log_max = ARGV[5], ttl = ARGV[6]}
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

#: Functions on one node, given its hash key ``nk``, job set key ``jk`` and id.
_NODE_FUNCTIONS = r"""
-- The record as readers see it: fields starting with '_' (byte 95) are bookkeeping.
local function record(nk)
  local flat = redis.call('HGETALL', nk)
  local rec = {}
  for i = 1, #flat, 2 do
    if string.byte(flat[i], 1) ~= 95 then rec[flat[i]] = flat[i + 1] end
  end
  return rec
end
-- PEXPIRE of a missing key is a no-op: the job set needs no EXISTS first.
local function touch(nk, jk)
  redis.call('PEXPIRE', nk, P.ttl)
  redis.call('PEXPIRE', jk, P.ttl)
end
local function write_record(nk, jk, id, seq, ts, status, max_jobs, load, resources, labels)
  redis.call('HSET', nk, 'version', seq, 'status', status, 'max_jobs', max_jobs,
             'current_jobs', redis.call('SCARD', jk), 'load', load,
             'resources', resources, 'labels', labels, '_ttl_at', ts)
  redis.call('ZADD', P.alive, ts, id)
  touch(nk, jk)
end
"""

_PRELUDE = _NODE_POOL + _POOL_FUNCTIONS + _NODE_FUNCTIONS

#: Beats in one HEARTBEAT call at most (more are split into several calls of one pipeline):
#: enough to make the call's fixed cost small per beat, few enough that one call holds the
#: server for well under a millisecond.
HEARTBEATS_PER_CALL = 100

# ARGV[7] status  ARGV[8] max_jobs  ARGV[9] load  ARGV[10] resources JSON  ARGV[11] labels JSON
# A re-registering node keeps the job ids admitted on it (current_jobs = their count): a node
# agent restart must not let the node be over-committed. Heartbeats with running jobs repair leaks.
# returns: the new version
REGISTER = (
    _PRELUDE
    + r"""
local ts = now_ms()
local seq = next_seq()
write_record(KEYS[1], KEYS[2], ARGV[3], seq, ts, ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11])
emit(seq, 'register', ARGV[3], seq, ts, record(KEYS[1]))
return seq
"""
)

# A batch of heartbeats of one pool. Different KEYS (like REAP's):
# KEYS[1] pool alive zset  KEYS[2] pool seq  KEYS[3] pool epoch  KEYS[4] pool log
# ARGV[1] channel  ARGV[2] pool  ARGV[3] epoch token  ARGV[4] log max  ARGV[5] node TTL (ms)
# ARGV[6] re-arm a quiet beat's TTL when armed longer ago than this (ms)  ARGV[7] load tolerance
# ARGV[8] '1' = every heartbeat publishes (seed behaviour)
# ARGV[9] node hash prefix  ARGV[10] job set prefix (both carry the pool's hash tag)
# ARGV[11..] the beats, one after another, each: node id, load, x, then x more arguments:
#   none (x = 0: no job report, no spec: the common beat, three arguments), or
#   digest of the reported job set ('' = no job report: the set is left alone),
#   '1' + status, max_jobs, resources JSON, labels JSON (re-create if unknown) | '0',
#   then the reported job ids, which replace the node's job set
# A quiet beat (known node, load within tolerance, the job set its digest stamp vouches
# for) refreshes liveness only: its HMGET, its share of the batch's one TIME and one ZADD,
# and the TTL when due (module docstring). Any other beat takes the full path, alone.
# returns: two integers per beat, in order: version (0 = unknown node, not re-created)
#          and 0 (quiet) | 1 (changed: new version, event) | 2 (re-created)
HEARTBEAT = (
    r"""
local P = {seq = KEYS[2], epoch = KEYS[3], log = KEYS[4], alive = KEYS[1],
           channel = ARGV[1], pool = ARGV[2], token = ARGV[3], log_max = ARGV[4], ttl = ARGV[5]}
"""
    + _POOL_FUNCTIONS
    + _NODE_FUNCTIONS
    + r"""
local ts = now_ms()
local rearm, tolerance, every = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8] == '1'
local node_prefix, jobs_prefix = ARGV[9], ARGV[10]

local function replace_jobs(jk, first, last)
  redis.call('DEL', jk)
  for i = first, last do redis.call('SADD', jk, ARGV[i]) end
end
-- Everything but a quiet beat: unknown node, load moved, job set to check, or every-beat mode.
local function full(id, nk, h, load, digest, spec, first, last)
  local jk = jobs_prefix .. id
  if not h[1] then
    if not spec then return 0, 0 end
    local seq = next_seq()
    if digest ~= '' then replace_jobs(jk, first, last) end
    write_record(nk, jk, id, seq, ts, ARGV[spec], ARGV[spec + 1], load, ARGV[spec + 2], ARGV[spec + 3])
    if digest ~= '' then redis.call('HSET', nk, '_jobs', seq .. ':' .. digest) end
    emit(seq, 'register', id, seq, ts, record(nk))
    return seq, 2
  end
  redis.call('ZADD', P.alive, ts, id)
  local changed = every
  if math.abs((tonumber(h[2]) or 0) - tonumber(load)) > tolerance then
    redis.call('HSET', nk, 'load', load)
    changed = true
  end
  if digest ~= '' and h[4] ~= h[1] .. ':' .. digest then
    -- The stamp is stale (another write made a version since) or the set differs: compare.
    local reported = {}
    for i = first, last do reported[ARGV[i]] = true end
    local same = (last - first + 1) == redis.call('SCARD', jk)
    if same then
      for _, job in ipairs(redis.call('SMEMBERS', jk)) do
        if not reported[job] then same = false break end
      end
    end
    if not same then
      replace_jobs(jk, first, last)
      redis.call('HSET', nk, 'current_jobs', redis.call('SCARD', jk))
      changed = true
    end
  end
  touch(nk, jk)
  if not changed then
    -- Only a stale stamp brings a beat here unchanged: stamp the set it was found to be.
    redis.call('HSET', nk, '_ttl_at', ts, '_jobs', h[1] .. ':' .. digest)
    return tonumber(h[1]), 0
  end
  local seq = next_seq()
  redis.call('HSET', nk, 'version', seq, '_ttl_at', ts)
  if digest ~= '' then redis.call('HSET', nk, '_jobs', seq .. ':' .. digest) end
  emit(seq, 'heartbeat', id, seq, ts, record(nk))
  return seq, 1
end

local out, live, n_out, n_live = {}, {}, 0, 0
local i = 11
while i <= #ARGV do
  local id, load, x = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local digest, spec, first, last = '', nil, 0, -1
  if x > 0 then
    digest, first, last = ARGV[i + 3], i + 5, i + 2 + x
    if ARGV[i + 4] == '1' then spec, first = i + 5, i + 9 end
  end
  local nk = node_prefix .. id
  local h = redis.call('HMGET', nk, 'version', 'load', '_ttl_at', '_jobs')
  -- (The same load text needs no arithmetic: the common case.)
  if h[1] and not every and (h[2] == load or math.abs((tonumber(h[2]) or 0) - tonumber(load)) <= tolerance)
     and (digest == '' or h[4] == h[1] .. ':' .. digest) then
    live[n_live + 1], live[n_live + 2], n_live = ts, id, n_live + 2
    local armed = tonumber(h[3]) or 0
    if ts - armed > rearm or ts < armed then
      touch(nk, jobs_prefix .. id)
      redis.call('HSET', nk, '_ttl_at', ts)
    end
    out[n_out + 1], out[n_out + 2] = tonumber(h[1]), 0
  else
    out[n_out + 1], out[n_out + 2] = full(id, nk, h, load, digest, spec, first, last)
  end
  n_out = n_out + 2
  i = i + 3 + x
end
if n_live > 0 then redis.call('ZADD', P.alive, unpack(live)) end
return out
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
touch(KEYS[1], KEYS[2])
emit(seq, 'job_start', ARGV[3], seq, ts, record(KEYS[1]))
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
touch(KEYS[1], KEYS[2])
emit(seq, 'job_finish', ARGV[3], seq, now_ms(), record(KEYS[1]))
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
local P = {seq = KEYS[2], epoch = KEYS[3], log = KEYS[4], alive = KEYS[1],
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


def jobs_digest(job_ids: Iterable[str]) -> str:
    """The digest a heartbeat reports its job set by (``_jobs`` in the module docstring).

    A set, so order and duplicates do not matter; each id is length-prefixed, so no two
    different sets encode alike whatever their ids contain.
    """
    ids = sorted(set(job_ids))
    return hashlib.sha1("".join(f"{len(i)}:{i}" for i in ids).encode()).hexdigest()


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
    #: TTL of node keys (ms), armed by every mutation; a backstop if no reaper runs.
    ttl_ms: int
    #: A node whose last heartbeat is older than this is dead (ms).
    dead_ms: int
    #: A heartbeat whose load moved less than this is quiet.
    load_tolerance: float
    #: The seed's behaviour: every heartbeat makes a version and an event.
    publish_every_heartbeat: bool = False
    # The heartbeat batch's settings, as strings once (heartbeats are the hot path).
    _beat_settings: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        settings = (
            self.epoch_token,
            str(self.log_max_len),
            str(self.ttl_ms),
            str(self.ttl_rearm_ms),
            repr(float(self.load_tolerance)),
            "1" if self.publish_every_heartbeat else "0",
        )
        object.__setattr__(self, "_beat_settings", settings)

    @property
    def ttl_rearm_ms(self) -> int:
        """A quiet heartbeat re-arms a TTL armed longer ago than this (``ttl - dead_after``)."""
        return self.ttl_ms - self.dead_ms

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

    def heartbeats(self, pool: str, beats: Sequence[Heartbeat]) -> tuple[list[str], list[Any]]:
        """One HEARTBEAT call for ``beats``, all of ``pool`` (at most :data:`HEARTBEATS_PER_CALL`)."""
        argv: list[Any] = [self.keys.events(pool), pool, *self._beat_settings]
        argv += [self.keys.node_prefix(pool), self.keys.jobs_prefix(pool)]
        add = argv.extend
        for beat in beats:
            jobs = beat.running_jobs
            if jobs is None and beat.spec is None:  # the common beat: three arguments
                add((beat.node_id, repr(float(beat.load)), "0"))
                continue
            extra = ["" if jobs is None else jobs_digest(jobs)]
            if beat.spec is None:
                extra.append("0")
            else:
                f = beat.spec.to_hash_fields()
                extra += ["1", f["status"], f["max_jobs"], f["resources"], f["labels"]]
            if jobs:
                # A set: duplicates would make the script's size comparison see a change every time.
                extra += sorted(set(jobs))
            add((beat.node_id, repr(float(beat.load)), str(len(extra)), *extra))
        return self.keys.reap_keys(pool), argv

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
