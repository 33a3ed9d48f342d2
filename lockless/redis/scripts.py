"""Every Lua script of the write path, one per mutation (DESIGN.md section 3).

Each script runs atomically in one round trip. A mutation that changes what placement
reads bumps the pool ``seq``, stamps it on the node as ``version``, applies the change,
refreshes TTLs, appends the event to the pool log under the explicit id ``<seq>-0`` and
PUBLISHes the same document. Timestamps come from Redis ``TIME``: client clocks disagree.

Every script is safe to repeat. redis-py may resend a command after a connection error,
and the LOCAL_ONLY journal replays writes after an outage, so a script that ran twice
must change nothing the second time: jobs are keyed by job id, heartbeats are
absolute, removal of a missing node is a no-op.

Shared contract (the order :meth:`KeySpace.script_keys` builds):

    KEYS[1] node hash          KEYS[2] node job set       KEYS[3] pool alive zset
    KEYS[4] pool seq           KEYS[5] pool epoch         KEYS[6] pool log stream
    ARGV[1] events channel     ARGV[2] pool name          ARGV[3] node id
    ARGV[4] epoch token (set only if the pool has none)   ARGV[5] log max length
    ARGV[6] node TTL (ms)      ARGV[7..] per script, listed in its header
"""

from __future__ import annotations

_PRELUDE = r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The epoch token marks one life of the pool's data: a Redis that lost its data comes
-- back without it, the next mutation sets a new one, and readers see the change.
-- The token is the writer's random id plus the server time, so that the same writer
-- re-creating a pool after data loss still makes a new epoch.
local function ensure_epoch(key, token)
  if redis.call('EXISTS', key) == 0 then
    local t = redis.call('TIME')
    redis.call('SET', key, token .. '-' .. t[1] .. '.' .. t[2])
  end
end
local function next_seq()
  ensure_epoch(KEYS[5], ARGV[4])
  return redis.call('INCR', KEYS[4])
end
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
-- ts_us: server time in microseconds as the event leaves, a string (cjson keeps only 14
-- significant digits of a number): where propagation delay starts, without ms rounding.
local function emit(seq, op, version, ts, rec)
  local t = redis.call('TIME')
  local doc = cjson.encode({seq = seq, op = op, pool = ARGV[2], node = ARGV[3], version = version,
                            ts = ts, ts_us = t[1] .. string.format('%06d', tonumber(t[2])),
                            epoch = redis.call('GET', KEYS[5]), rec = rec})
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[5], seq .. '-0', 'e', doc)
  redis.call('PUBLISH', ARGV[1], doc)
end
local function write_record(seq, ts, status, max_jobs, load, resources, labels)
  redis.call('HSET', KEYS[1], 'version', seq, 'status', status, 'max_jobs', max_jobs,
             'current_jobs', redis.call('SCARD', KEYS[2]), 'load', load,
             'resources', resources, 'labels', labels, 'heartbeat_ms', ts)
  redis.call('ZADD', KEYS[3], ts, ARGV[3])
  touch()
end
"""

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
emit(seq, 'register', seq, ts, record())
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
  emit(seq, 'register', seq, ts, record())
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
emit(seq, 'heartbeat', seq, ts, record())
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
emit(seq, 'remove', seq, now_ms(), nil)
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
emit(seq, 'job_start', seq, ts, record())
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
emit(seq, 'job_finish', seq, now_ms(), record())
return {1, seq, cur}
"""
)

# Different KEYS: KEYS[1] alive zset  KEYS[2] seq  KEYS[3] epoch  KEYS[4] log
# ARGV[1] channel  ARGV[2] pool  ARGV[3] epoch token  ARGV[4] log max  ARGV[5] dead_after (ms)
# ARGV[6] node hash prefix  ARGV[7] job set prefix  ARGV[8] at most this many per call
# Node keys are built from prefixes that carry the pool's hash tag, so they share the slot.
# Concurrent reapers are safe: a node is removed (and announced) by exactly one of them.
# returns: the reaped node ids
REAP = r"""
local function ensure_epoch(key, token)
  if redis.call('EXISTS', key) == 0 then
    local t = redis.call('TIME')
    redis.call('SET', key, token .. '-' .. t[1] .. '.' .. t[2])
  end
end
local t = redis.call('TIME')
local ts = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (ts - tonumber(ARGV[5])),
                        'LIMIT', 0, tonumber(ARGV[8]))
for _, id in ipairs(dead) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('DEL', ARGV[6] .. id, ARGV[7] .. id)
  ensure_epoch(KEYS[3], ARGV[3])
  local seq = redis.call('INCR', KEYS[2])
  local doc = cjson.encode({seq = seq, op = 'reap', pool = ARGV[2], node = id,
                            version = seq, ts = ts, epoch = redis.call('GET', KEYS[3])})
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], seq .. '-0', 'e', doc)
  redis.call('PUBLISH', ARGV[1], doc)
end
return dead
"""

#: Name -> body, loaded together by the store.
ALL: dict[str, str] = {
    "register": REGISTER,
    "heartbeat": HEARTBEAT,
    "remove": REMOVE,
    "job_start": JOB_START,
    "job_finish": JOB_FINISH,
    "reap": REAP,
}
